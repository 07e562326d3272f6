"""Monitoring events, Celery's wire: what Flower, ``celery events`` and ``events.State`` read.

Events are best-effort, as in Celery: a broker problem drops them and is logged, never raised
into a worker or a client. Publishing happens on a sender thread of the dispatcher's own, so a
slow or vanished broker never stalls the consume loop: the caller only appends to a bounded
outbox. Task events that wait there together go out as one ``task.multi`` list, Celery's
batch; an event sent alone goes alone, with its own routing key.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import math
import os
import platform
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from kombu import Connection, Exchange, Producer
from kombu.clocks import LamportClock

from taskq import __version__, signals

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.events_receiver import EventReceiver
    from taskq.events_state import State

__all__ = ["EventDispatcher", "EventReceiver", "Events", "State", "event_exchange", "utcoffset"]

logger = logging.getLogger("taskq.events")

HEARTBEAT_FREQ = 2.0  # Celery's worker heartbeat interval, sent as ``freq``
OUTBOX_MAX = 10_000  # events waiting for the sender thread; past it new ones are dropped
BATCH_MAX = 100  # task events in one task.multi message
LINGER = 0.02  # seconds an event waits for others to share its publish
RECONNECT_DELAY = 5.0  # after a failed publish, events are dropped this long before a new try
FANOUT_TRANSPORTS = frozenset({"redis", "gcpubsub"})  # where Celery makes the exchange fanout
SOFTWARE_INFO = {"sw_ident": "py-celery", "sw_ver": __version__, "sw_sys": platform.system()}
_STOP = object()


def utcoffset() -> float:
    """Hours west of UTC, a float (Celery 5.7; up to 5.6 it was floor-divided to an int)."""
    if time.localtime().tm_isdst:
        return time.altzone / 3600
    return time.timezone / 3600


def adjust_timestamp(timestamp: float, offset: float) -> float:
    """A sender's ``timestamp`` in this host's time (Celery adjusts by the zone difference)."""
    return timestamp - (offset - utcoffset()) * 3600


def load_average() -> list[float]:
    """The 1/5/15-minute load, rounded up to 2 decimals as Celery does (zeros where unknown)."""
    try:
        return [math.ceil(v * 100) / 100 for v in os.getloadavg()]
    except (AttributeError, OSError):
        return [0.0, 0.0, 0.0]


def anon_nodename() -> str:
    """``gen<pid>@<host>``: the node name Celery gives a client that is not a worker."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


def event_exchange(connection: Connection, name: str = "celeryev") -> Exchange:
    """Celery's event exchange: topic, but fanout on Redis (kombu's Redis topic is too slow)."""
    kind = "fanout" if connection.transport.driver_type in FANOUT_TRANSPORTS else "topic"
    return Exchange(name, type=kind)


class EventDispatcher:
    """Sends events as ``hostname``; ``task_events`` gates the ``task-*`` ones (``-E``).

    Thread-safe and non-blocking: ``send`` stamps the event (Lamport clock, time) in the
    caller's thread, so their order is the callers', and queues it for the sender thread.
    """

    def __init__(
        self,
        app: App,
        hostname: str | None = None,
        *,
        enabled: bool = True,
        task_events: bool = False,
        connection: Connection | None = None,
        worker_fields: Callable[[], Mapping[str, Any]] | None = None,
        groups: set[str] | None = None,
        serializer: str | None = None,
        delivery_mode: int = 1,
        freq: float = HEARTBEAT_FREQ,
    ) -> None:
        self.app = app
        self.hostname = hostname or anon_nodename()
        self._anonymous = hostname is None  # a forked child renames itself: the name has the pid
        self.enabled = enabled
        #: send ``task-*`` events (``-E``; remote control's enable_events/disable_events flip it)
        self.task_events = task_events
        self.worker_fields = worker_fields or dict
        self.groups = set(groups or ())
        self.serializer = serializer or app.conf.event_serializer
        self.delivery_mode = delivery_mode
        self.freq = freq
        self.clock: LamportClock = events_of(app).clock
        self.dropped = 0  # events lost to a full outbox or a broker problem
        self._base = connection
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._exchange: Exchange | None = None
        self._retry_at = 0.0
        self._failing = False
        self._cond = threading.Condition()
        self._outbox: deque[Any] = deque()
        self._busy = False
        self._closed = False
        self._sender: threading.Thread | None = None
        self._pid = os.getpid()
        _dispatchers.add(self)

    # -- sending ----------------------------------------------------------------------------
    def send(self, type: str, **fields: Any) -> None:  # noqa: A002 - Celery's keyword
        """Send an event of ``type`` (``group-subject``) with Celery's common fields added."""
        if not self.enabled or self._closed:
            return
        if self.groups and type.partition("-")[0] not in self.groups:
            return
        with self._cond:  # stamped under the lock: clocks go out in order, whatever the thread
            event = {"hostname": self.hostname, "utcoffset": utcoffset(), "pid": self._pid,
                     "clock": self.clock.forward(), **fields, "timestamp": time.time(), "type": type}  # fmt: skip
            if len(self._outbox) >= OUTBOX_MAX:
                self.dropped += 1
                return
            self._outbox.append(event)
            if len(self._outbox) in (1, BATCH_MAX):  # wake the sender only when it has work to start
                self._cond.notify()
            if self._sender is None:
                self._sender = threading.Thread(target=self._run, name="taskq-events", daemon=True)
                self._sender.start()

    def task(self, type: str, **fields: Any) -> None:  # noqa: A002
        """A ``task-*`` event, sent only while task events are on."""
        if self.task_events:
            self.send(type, **fields)

    def worker_info(self) -> dict[str, Any]:
        """The fields of ``worker-online/heartbeat/offline``, in Celery's order."""
        extra = dict(self.worker_fields())
        return {
            "freq": self.freq, "active": extra.get("active", 0), "processed": extra.get("processed", 0),
            "loadavg": extra.get("loadavg") or load_average(), **SOFTWARE_INFO,
        }  # fmt: skip

    def heartbeat(self, type: str = "worker-heartbeat") -> None:  # noqa: A002
        """Tell monitors this worker lives (also the answer to the ``heartbeat`` command)."""
        signals.heartbeat_sent.send(sender=self)
        self.send(type, **self.worker_info())

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued event was published or dropped; False if time ran out."""
        with self._cond:
            if self._sender is None:
                return True
            return self._cond.wait_for(lambda: not self._outbox and not self._busy, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Publish what is queued (at most ``timeout`` seconds), then release the connection."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            sender, self._sender = self._sender, None
            if sender is not None:
                self._outbox.append(_STOP)
                self._cond.notify()
        if sender is not None and sender is not threading.current_thread():
            sender.join(timeout)
        if sender is None or not sender.is_alive():
            self._disconnect()

    def __enter__(self) -> EventDispatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the sender thread ------------------------------------------------------------------
    def _after_fork(self) -> None:
        """In a forked child: the sender thread stayed behind, and a lock may be held forever."""
        self._cond = threading.Condition()
        self.clock.mutex = threading.Lock()
        self._pid, self._sender, self._outbox = os.getpid(), None, deque()
        self.hostname = anon_nodename() if self._anonymous else self.hostname
        self._connection = self._producer = None  # the parent's sockets: never touch them
        self._busy = False

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait_for(lambda: bool(self._outbox))
                # A moment for more events to join this one's message: a publish costs far
                # more than an event, and the consumer thread needs the CPU meanwhile.
                self._cond.wait_for(
                    lambda: len(self._outbox) >= BATCH_MAX or self._outbox[-1] is _STOP, LINGER
                )
                batch = list(self._outbox)
                self._outbox.clear()
                self._busy = True
            stop = batch[-1] is _STOP
            for message in _messages(batch[:-1] if stop else batch):
                self._publish(message)
            if stop:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
                return

    def _publish(self, body: dict[str, Any] | list[dict[str, Any]]) -> None:
        count = len(body) if isinstance(body, list) else 1
        if self._producer is None:
            if time.monotonic() < self._retry_at:
                self.dropped += count
                return
            try:
                self._connect()
            except Exception as exc:
                self._failed(exc, count)
                return
        assert self._producer is not None and self._exchange is not None
        routing_key = "task.multi" if isinstance(body, list) else body["type"].replace("-", ".")
        try:
            self._producer.publish(
                body, exchange=self._exchange, routing_key=routing_key,
                declare=[self._exchange], serializer=self.serializer, retry=False,
                headers={"hostname": self.hostname}, delivery_mode=self.delivery_mode,
            )  # fmt: skip
        except Exception as exc:
            self._failed(exc, count)
            return
        if self._failing:
            self._failing = False
            logger.info("Events: sending again")

    def _connect(self) -> None:
        base = self._base or self.app.broker.new_connection()
        # No AMQP heartbeats: nothing reads this connection, so the broker's beats would pile up.
        self._connection = base.clone(heartbeat=0)
        self._exchange = event_exchange(self._connection, self.app.conf.event_exchange)
        self._producer = Producer(self._connection.default_channel, serializer=self.serializer)

    def _failed(self, exc: BaseException, count: int) -> None:
        self.dropped += count
        if not self._failing:
            self._failing = True
            logger.warning("Events: cannot publish (%r); dropping events for now", exc)
        self._retry_at = time.monotonic() + RECONNECT_DELAY
        self._disconnect()

    def _disconnect(self) -> None:
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            try:
                connection.collect()  # no close handshake: the peer may be gone
            except Exception as exc:
                logger.debug("events: discarding the connection: %r", exc)


def _messages(events: list[dict[str, Any]]) -> Iterator[dict[str, Any] | list[dict[str, Any]]]:
    """The messages for events that waited together: task events that came in a row go as one
    ``task.multi`` list (Celery's batch, at most ``BATCH_MAX``), everything else one by one.

    A publish costs far more than an event's share of a list (kombu's Redis transport makes a
    client per publish), so under load this keeps the sender ahead; an idle worker's events,
    which never wait together, still go out singly at once.
    """
    run: list[dict[str, Any]] = []
    for event in events:
        if event["type"].startswith("task-") and len(run) < BATCH_MAX:
            run.append(event)
            continue
        if run:
            yield run if len(run) > 1 else run[0]
        run = [event] if event["type"].startswith("task-") else []
        if not run:
            yield event
    if run:
        yield run if len(run) > 1 else run[0]


class Events:
    """``app.events``: Celery's factories, taking Celery's arguments (connection first)."""

    def __init__(self, app: App) -> None:
        self.app = app
        #: the app's Lamport clock, shared by its dispatchers and receivers
        self.clock = LamportClock()
        self._client: EventDispatcher | None = None

    def Dispatcher(  # noqa: N802 - Celery's name
        self,
        connection: Connection | None = None,
        hostname: str | None = None,
        enabled: bool = True,
        channel: Any = None,
        *args: Any,
        groups: Any = None,
        serializer: str | None = None,
        delivery_mode: int = 1,
        **ignored: Any,
    ) -> EventDispatcher:
        if connection is None and channel is not None:
            connection = channel.connection.client
        return EventDispatcher(
            self.app, hostname, enabled=enabled, task_events=not groups or "task" in groups,
            connection=connection, groups=set(groups or ()), serializer=serializer,
            delivery_mode=delivery_mode,
        )  # fmt: skip

    def Receiver(  # noqa: N802
        self,
        channel: Any = None,
        handlers: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None,
        routing_key: str = "#",
        node_id: str | None = None,
        app: Any = None,
        queue_prefix: str | None = None,
        **options: Any,
    ) -> EventReceiver:
        from taskq.events_receiver import EventReceiver

        return EventReceiver(
            self.app, handlers, connection=channel, node_id=node_id, queue_prefix=queue_prefix,
            routing_key=routing_key, **options,
        )  # fmt: skip

    def State(self, *args: Any, **kwargs: Any) -> State:  # noqa: N802
        from taskq.events_state import State

        return State(*args, **kwargs)

    def task_sent(
        self, headers: Mapping[str, Any], queue: str | None, exchange: str, routing_key: str
    ) -> None:
        """``task-sent`` for a published task message (``task_send_sent_event``)."""
        with _events_lock:
            if self._client is None:
                self._client = EventDispatcher(self.app)
                atexit.register(self._client.flush, 2.0)  # a script's last task-sent still goes out
        self._client.send(
            "task-sent", uuid=headers["id"], root_id=headers.get("root_id"),
            parent_id=headers.get("parent_id"), name=headers["task"], args=headers.get("argsrepr"),
            kwargs=headers.get("kwargsrepr"), retries=headers.get("retries") or 0,
            eta=headers.get("eta"), expires=headers.get("expires"), queue=queue,
            exchange=exchange, routing_key=routing_key,
        )  # fmt: skip


_events_lock = threading.Lock()
_dispatchers: weakref.WeakSet[EventDispatcher] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _events_lock
    _events_lock = threading.Lock()
    for dispatcher in list(_dispatchers):
        dispatcher._after_fork()


if hasattr(os, "register_at_fork"):  # prefork children, and any task that forks
    os.register_at_fork(after_in_child=_after_fork_in_child)


def events_of(app: App) -> Events:
    """The app's ``Events`` (one per app, made on first use)."""
    found: Events | None = app.__dict__.get("_taskq_events")
    if found is None:
        with _events_lock:
            found = app.__dict__.setdefault("_taskq_events", Events(app))
    return found


def __getattr__(name: str) -> Any:
    """``EventReceiver`` and ``State`` live in modules of their own, imported on first use."""
    modules = {"EventReceiver": "taskq.events_receiver", "State": "taskq.events_state"}
    if name in modules:
        return getattr(importlib.import_module(modules[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
