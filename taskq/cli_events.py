"""``taskq events``: watch the cluster's monitoring events.

``--dump`` prints each event as Celery's dumper does (``node [time] type: fields``), for grep and
logs; ``--camera`` hands periodic snapshots of the cluster state to a class of yours; otherwise
a plain-text view of workers and recent tasks is redrawn every ``--frequency`` seconds (Celery
draws it with curses; a redrawn table works in any terminal and in a pipe).

Events are received on a thread of their own and handed over through a queue, so the view is
redrawn on time while no events arrive and every wait here has a bound.
"""

from __future__ import annotations

import logging
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import click

from taskq.cli_common import EX_UNAVAILABLE, CommandError, broker_errors, say
from taskq.config import import_object

if TYPE_CHECKING:
    from kombu import Connection

    from taskq.app import App
    from taskq.cli import Settings
    from taskq.events_receiver import EventReceiver
    from taskq.events_state import State

HUMAN_TYPES = {"worker-offline": "shutdown", "worker-online": "started", "worker-heartbeat": "heartbeat"}
TASK_NAMES_MAX = 4095  # task descriptions remembered by uuid (Celery's LRU size)
TASK_ROWS = 20  # recent tasks shown by the live view
STOP_WAIT = 3.0  # seconds the receiver thread gets to notice it should stop
CLEAR = "\x1b[H\x1b[2J"


class Dumper:
    """Celery's event dump format; remembers each task's name and arguments for later events."""

    def __init__(self) -> None:
        self.task_names: dict[str, str] = {}

    def format(self, event: dict[str, Any]) -> str:
        event = dict(event)
        timestamp = datetime.fromtimestamp(event.pop("timestamp"), timezone.utc)
        kind = str(event.pop("type")).lower()
        hostname = event.pop("hostname", None)
        task = ""
        if kind.startswith("task-"):
            uuid = event.pop("uuid", "")
            if kind in ("task-received", "task-sent"):
                task = (
                    f"{event.pop('name', None)}({uuid}) args={event.pop('args', None)} "
                    f"kwargs={event.pop('kwargs', None)}"
                )
                self.task_names[uuid] = task
                while len(self.task_names) > TASK_NAMES_MAX:
                    del self.task_names[next(iter(self.task_names))]
            else:
                task = self.task_names.get(uuid, "")
        fields = ", ".join(f"{key}={event[key]}" for key in sorted(event))
        sep = ":" if fields else ""
        human = HUMAN_TYPES.get(kind, kind.replace("-", " "))
        if kind.startswith("task-"):
            return f"{hostname} [{timestamp}] {human}{sep} {task} {fields}"
        return f"{hostname} [{timestamp}] {human}{sep} {fields}"


class Feed:
    """An ``EventReceiver`` capturing on its own thread; events (or its failure) come out of ``get``."""

    def __init__(self, app: App, connection: Connection) -> None:
        from taskq.events_receiver import EventReceiver

        self._queue: queue.Queue[dict[str, Any] | BaseException] = queue.Queue()
        self.receiver: EventReceiver = EventReceiver(app, {"*": self._queue.put}, connection=connection)
        self._thread = threading.Thread(target=self._run, name="taskq-events-feed", daemon=True)

    def _run(self) -> None:
        try:
            self.receiver.capture()
        except BaseException as exc:  # handed to the main thread, which reports it
            self._queue.put(exc)

    def start(self) -> None:
        self._thread.start()

    def get(self, timeout: float) -> dict[str, Any] | None:
        """The next event, None if none came within ``timeout``; raises what stopped the receiver."""
        try:
            item = self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        self.receiver.should_stop = True
        self._thread.join(STOP_WAIT)


def parse_rate(rate: str | None) -> float:
    """``--maxrate 10/m`` as the shortest interval between two snapshots (seconds); 0: no limit."""
    if not rate:
        return 0.0
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*", rate)
    if not found or float(found.group(1)) <= 0:
        raise click.BadParameter(f"{rate!r} is not a rate like 10/s, 10/m or 10/h", param_hint="--maxrate")
    period = {"s": 1.0, "m": 60.0, "h": 3600.0}[found.group(2) or "s"]
    return period / float(found.group(1))


def _worker_rows(state: State) -> list[str]:
    rows = [f"  {'WORKER':<36} {'STATUS':<8} {'ACTIVE':>6} {'PROCESSED':>9}  LOADAVG"]
    for hostname, worker in sorted(state.workers.items()):
        load = " ".join(f"{v:.2f}" for v in (worker.loadavg or []))
        active = "-" if worker.active is None else worker.active
        processed = "-" if worker.processed is None else worker.processed
        status = "ONLINE" if worker.alive else "OFFLINE"
        rows.append(f"  {hostname:<36} {status:<8} {active!s:>6} {processed!s:>9}  {load}")
    return rows


def _task_rows(state: State, limit: int) -> list[str]:
    rows = [f"  {'UUID':<36} {'NAME':<28} {'STATE':<9} {'WORKER':<24} DETAIL"]
    for uuid, task in state.tasks_by_time(limit=limit):
        worker = getattr(task.worker, "hostname", None) or ""
        if task.state == "SUCCESS":
            runtime = f" in {task.runtime:.3f}s" if task.runtime is not None else ""
            detail = f"{task.result}{runtime}"
        elif task.exception:
            detail = str(task.exception)
        else:
            detail = f"args={task.args} kwargs={task.kwargs}"
        rows.append(f"  {uuid:<36} {task.name or '?':<28.28} {task.state:<9} {worker:<24} {detail:.60}")
    return rows


def render(state: State, broker: str, event_count: int) -> str:
    """The live view: a header, then the workers, then the most recent tasks."""
    now = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        f"taskq events -> {broker}   {now}   events: {event_count}   (Ctrl-C to quit)",
        "",
        f"Workers ({sum(1 for w in state.workers.values() if w.alive)} online):",
        *_worker_rows(state),
        "",
        f"Tasks (most recent {TASK_ROWS}):",
        *_task_rows(state, TASK_ROWS),
    ]
    return "\n".join(lines)


@click.command()
@click.option("-d", "--dump", is_flag=True, help="Print every event as it arrives.")
@click.option("-c", "--camera", help="Snapshot camera class (module.Class): Class(state, freq=, maxrate=).")
@click.option(
    "-F", "--frequency", "--freq", type=float, default=1.0, show_default=True,
    help="Seconds between redraws (or camera snapshots).",
)  # fmt: skip
@click.option("-r", "--maxrate", help="Camera: at most this many snapshots per s/m/h (e.g. 10/m).")
@click.option(
    "-l", "--loglevel", default="WARNING", show_default=True, help="Logging level.",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL"], case_sensitive=False),
)  # fmt: skip
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Stop after this many seconds.")
@click.pass_obj
def events(
    settings: Settings,
    dump: bool,
    camera: str | None,
    frequency: float,
    maxrate: str | None,
    loglevel: str,
    limit: int | None,
    timeout: float | None,
) -> None:
    """Watch the event stream: a live view of workers and tasks, --dump, or a --camera."""
    logging.basicConfig(level=loglevel.upper().replace("FATAL", "CRITICAL"))
    if frequency <= 0:
        raise click.BadParameter("must be above 0", param_hint="--frequency")
    min_interval = parse_rate(maxrate)
    app = settings.app
    connection = app.broker.new_connection()
    with broker_errors(app):
        connection.ensure_connection(max_retries=1)
    try:
        feed = Feed(app, connection)
        if dump:
            say("-> evdump: starting capture...")
            _run(feed, _dump_handler(), limit, timeout, None, frequency)
        else:
            from taskq.events_state import State

            state = State()
            tick = _camera_tick(camera, state, frequency, maxrate, min_interval) if camera else None
            _run(feed, state.event, limit, timeout, tick or _top_tick(state, app), frequency)
    finally:
        connection.release()


def _dump_handler() -> Callable[[dict[str, Any]], Any]:
    dumper = Dumper()
    return lambda event: say(dumper.format(event))


def _top_tick(state: State, app: App) -> Callable[[int, bool], None]:
    tty = sys.stdout.isatty()

    def draw(count: int, final: bool) -> None:
        frame = render(state, app.broker.masked_url, count)
        say(f"{CLEAR}{frame}" if tty else f"{frame}\n")

    return draw


def _camera_tick(
    path: str, state: State, frequency: float, maxrate: str | None, min_interval: float
) -> Callable[[int, bool], None]:
    """Instantiate the camera and return what takes a snapshot: ``on_shutter(state)``."""
    try:
        cls = import_object(path)
        cam = cls(state, freq=frequency, maxrate=maxrate)
    except Exception as exc:
        raise CommandError(f"cannot load camera {path!r}: {type(exc).__name__}: {exc}") from None
    last = [0.0]

    def shutter(count: int, final: bool) -> None:
        now = time.monotonic()
        if not final and now - last[0] < min_interval:
            return
        last[0] = now
        cam.on_shutter(state)
        if final and hasattr(cam, "cancel"):
            cam.cancel()

    return shutter


def _run(
    feed: Feed,
    handle: Callable[[dict[str, Any]], Any],
    limit: int | None,
    timeout: float | None,
    tick: Callable[[int, bool], None] | None,
    frequency: float,
) -> None:
    """Hand events to ``handle`` and call ``tick`` every ``frequency`` s until a limit or Ctrl-C."""
    deadline = None if timeout is None else time.monotonic() + timeout
    next_tick = time.monotonic() + frequency
    count = 0
    feed.start()
    try:
        while limit is None or count < limit:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if tick is not None and now >= next_tick:
                tick(count, False)
                next_tick = now + frequency
            waits = [
                next_tick - now if tick else frequency,
                deadline - now if deadline is not None else frequency,
            ]
            try:
                event = feed.get(min(waits))
            except Exception as exc:
                raise CommandError(
                    f"event stream lost: {type(exc).__name__}: {exc}", EX_UNAVAILABLE
                ) from None
            if event is not None:
                count += 1
                handle(event)
    except KeyboardInterrupt:
        pass
    finally:
        feed.stop()
    if tick is not None:
        tick(count, True)
