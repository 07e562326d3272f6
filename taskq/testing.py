"""pytest plugin: a fresh taskq app per test, and a real worker in a thread that tests can drain.

Loaded automatically when taskq is installed (entry point ``pytest11``: ``taskq``); turn it off
with ``-p no:taskq``. The fixtures mirror Celery's ``celery.contrib.pytest`` (``taskq_app`` for
``celery_app``, ``taskq_worker`` for ``celery_worker``, ...), and ``taskq_worker.drain()`` waits
until every sent task has run, then re-raises a task's error in the test. See docs/testing.md.
"""

from __future__ import annotations

import builtins
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

import pytest

from taskq import _state, signals
from taskq.app import App
from taskq.backend.memory import MemoryBackend
from taskq.exceptions import NotRegistered, TaskPredicate
from taskq.exceptions import TimeoutError as TaskqTimeoutError

if TYPE_CHECKING:
    from kombu import Connection

    from taskq.worker.worker import Worker

__all__ = ["DrainTimeout", "RunningWorker", "eager"]

DEFAULT_CONFIG: dict[str, Any] = {"broker_url": "memory://", "result_backend": "memory://"}
POLL = 0.01  # seconds between two looks at the worker while draining
IDLE_TURN = 0.05  # longest the test worker blocks on the broker before it looks at stop()


class DrainTimeout(TaskqTimeoutError, builtins.TimeoutError):
    """``drain()`` ran out of time; catch it as ``TimeoutError`` or ``taskq.exceptions.TimeoutError``."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "taskq(**settings): settings for this test's taskq_app, over the taskq_config fixture"
    )


def _marker_settings(node: pytest.Item | pytest.Collector) -> dict[str, Any]:
    """Settings of every ``@pytest.mark.taskq`` on the test, the closest one winning."""
    settings: dict[str, Any] = {}
    for mark in reversed(list(node.iter_markers("taskq"))):
        if mark.args:
            raise TypeError(f"@pytest.mark.taskq takes settings as keywords, not {mark.args!r}")
        settings.update(mark.kwargs)
    return settings


def _copy(items: Iterable[Any]) -> list[Any]:
    """A list of a container another thread is changing (retry when it changed mid-copy)."""
    for _ in range(100):
        try:
            return list(items)
        except RuntimeError:  # "changed size during iteration"
            continue
    return []


@contextmanager
def eager(app: App, *, propagate: bool = True) -> Iterator[App]:
    """Run ``app``'s tasks in the calling thread (``task_always_eager``) inside the block.

    With ``propagate`` (``task_eager_propagates``) ``delay()`` raises the task's exception
    directly. The previous settings are restored on exit.
    """
    keys = ("task_always_eager", "task_eager_propagates")
    before = app.conf.changes()
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = propagate
    try:
        yield app
    finally:
        for key in keys:
            if key in before:
                app.conf[key] = before[key]
            else:
                del app.conf[key]


class RunningWorker:
    """A taskq ``Worker`` consuming in a background thread, with ``drain()`` for tests."""

    __test__ = False  # not a test class, even when imported into a test module

    def __init__(self, app: App, *, shutdown_timeout: float = 10.0, **options: Any) -> None:
        from taskq.worker.worker import Worker

        options.setdefault("hostname", f"taskq-test-{uuid.uuid4().hex[:8]}@%h")
        # In-process by default: children of a prefork pool could not see an in-memory broker.
        options.setdefault("pool", "threads")
        self.app = app
        self.worker: Worker = Worker(app, **options)
        self.hostname = self.worker.hostname
        # Worker.stop() is seen at the consumer's next turn; short idle turns keep teardown short.
        self.worker.consumer.idle_wait = IDLE_TURN
        self.shutdown_timeout = shutdown_timeout
        self.thread = threading.Thread(target=self._run, name=f"taskq-worker {self.hostname}", daemon=True)
        self._errors: list[tuple[str, BaseException]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._crash: BaseException | None = None
        self._received = 0
        self._connection: Connection | None = None
        self._uid = f"taskq.testing:{id(self)}"
        self._receivers = [
            (signals.worker_ready, self._on_ready),
            (signals.task_received, self._on_received),
            (signals.task_failure, self._on_failure),
            (signals.task_unknown, self._on_unknown),
        ]

    def __repr__(self) -> str:
        return f"<RunningWorker {self.hostname} of {self.app!r}>"

    # -- signal receivers (called in the worker's threads) ----------------------------------
    def _on_ready(self, sender: Any = None, **_: Any) -> None:
        if sender is self.worker:
            self._ready.set()

    def _on_received(self, sender: Any = None, **_: Any) -> None:
        if sender is self.worker.consumer:
            self._received += 1

    def _on_failure(
        self, sender: Any = None, task_id: str | None = None, exception: Any = None, **_: Any
    ) -> None:
        # Only real failures of this worker's runs count: not Retry/Ignore/Reject, not eager runs,
        # nor another worker's, nor another app's.
        if isinstance(exception, TaskPredicate) or getattr(sender, "app", None) is not self.app:
            return
        if sender.request.hostname == self.hostname:
            with self._lock:
                self._errors.append((f"raised by task {sender.name}[{task_id}]", exception))

    def _on_unknown(self, sender: Any = None, name: str = "", id: str = "", **_: Any) -> None:  # noqa: A002
        if sender is self.worker.consumer:
            with self._lock:
                self._errors.append((f"message {id} dropped: no task {name!r} here", NotRegistered(name)))

    # -- running ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.worker.start(install_signals=False)
        except BaseException as exc:
            self._crash = exc

    def _check_alive(self) -> None:
        if self._crash is not None:
            raise RuntimeError(f"taskq test worker {self.hostname} crashed: {self._crash!r}") from self._crash
        if not self.thread.is_alive():
            raise RuntimeError(f"taskq test worker {self.hostname} is not running (stopped?)")

    def start(self, timeout: float = 10.0) -> None:
        """Start the worker thread and wait until it consumes (its queues are declared)."""
        for signal, receiver in self._receivers:
            signal.connect(receiver, weak=False, dispatch_uid=self._uid)
        self.thread.start()
        deadline = time.monotonic() + timeout
        try:
            while not self._ready.wait(POLL):
                self._check_alive()
                if time.monotonic() > deadline:
                    raise DrainTimeout(f"the taskq test worker {self.hostname} not ready after {timeout} s")
        except BaseException:
            with suppress(RuntimeError):  # the crash is already being raised
                self.stop()
            raise

    def stop(self, timeout: float | None = None) -> None:
        """Stop warmly (running tasks finish; unstarted ones go back to the queue) and wait.

        Raises ``RuntimeError`` when the thread is still alive after ``timeout`` (default: the
        ``shutdown_timeout`` given at creation, 10 s) or when the worker crashed.
        """
        timeout = self.shutdown_timeout if timeout is None else timeout
        self.worker.stop()
        if self.thread.is_alive():
            self.thread.join(timeout)
        for signal, receiver in self._receivers:
            signal.disconnect(receiver, dispatch_uid=self._uid)
        if self._connection is not None:
            self._connection.release()
            self._connection = None
        if self.thread.is_alive():
            running = ", ".join(repr(r) for r in _copy(self.worker.consumer.active))
            raise RuntimeError(
                f"the taskq test worker {self.hostname} did not stop within {timeout} s "
                f"(running: {running or 'nothing'}); raise shutdown_timeout in taskq_worker_parameters "
                "if your tasks take longer"
            )
        if self._crash is not None:
            self._check_alive()

    # -- draining ---------------------------------------------------------------------------
    def _queue_sizes(self) -> dict[str, int]:
        if self._connection is None:
            self._connection = self.app.broker.new_connection()
        channel = self._connection.default_channel
        return {
            queue.name: int(queue(channel).queue_declare(passive=True).message_count or 0)
            for queue in self.worker.consumer.queues
        }

    def pending(self) -> list[str]:
        """What the worker still has to do, one description per kind; empty when idle."""
        consumer = self.worker.consumer
        out = [f"{n} waiting in queue {name!r}" for name, n in self._queue_sizes().items() if n]
        reserved = _copy(consumer.ready)
        if reserved:
            out.append(f"{len(reserved)} received, not started: {', '.join(map(repr, reserved[:5]))}")
        now = time.time()
        scheduled = sorted(_copy(consumer.eta_heap), key=lambda item: item[0])
        if scheduled:
            items = ", ".join(f"{r!r} in {max(t - now, 0):.1f} s" for t, _, r in scheduled[:5])
            out.append(f"{len(scheduled)} waiting for their ETA: {items}")
        running = _copy(consumer.active)
        if running:
            out.append(f"{len(running)} running: {', '.join(map(repr, running[:5]))}")
        return out

    def drain(self, timeout: float = 10.0, *, raise_errors: bool = True) -> list[BaseException]:
        """Wait until every task sent to the worker's queues has run, then report task errors.

        Done means: no message waits in the consumed queues, none is held by the worker (received,
        or waiting for its ETA/countdown) and none is running, twice in a row with nothing
        received in between. A task whose ETA falls after the deadline can never run in time, so
        it fails the drain at once instead of waiting out the timeout.

        Then, with ``raise_errors``, the first exception a task raised since the last drain is
        re-raised here (retries, ``Ignore`` and ``Reject`` are not errors; a message for an
        unregistered task is a ``NotRegistered``). Without it, those exceptions are returned.
        Either way they are forgotten, so the next drain reports only newer ones.

        Raises ``DrainTimeout`` (a ``TimeoutError``) naming what is still pending after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        previous: tuple[int, int] | None = None
        while True:
            self._check_alive()
            mark = (self._received, self.worker.consumer.processed)
            pending = self.pending()
            if not pending and mark == previous:
                break
            previous = None if pending else mark
            now, left = time.time(), deadline - time.monotonic()  # ETAs are wall-clock times
            late = [(t, r) for t, _, r in _copy(self.worker.consumer.eta_heap) if t > now + left]
            if late or left < 0:
                why = f"drain() timed out after {timeout} s"
                if late:
                    t, r = min(late, key=lambda item: item[0])
                    why = f"drain(timeout={timeout}) cannot finish: {r!r} is due in {t - now:.1f} s"
                self._timeout(why, pending)
            time.sleep(POLL)
        with self._lock:
            errors, self._errors = self._errors, []
        if raise_errors and errors:
            where, exc = errors[0]
            note = f"{where} (taskq test worker {self.hostname})"
            if len(errors) > 1:
                note += f"; {len(errors) - 1} more failed since the last drain(): " + ", ".join(
                    f"{type(e).__name__} {w}" for w, e in errors[1:]
                )
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(note)
            raise exc
        return [exc for _, exc in errors]

    def _timeout(self, why: str, pending: list[str]) -> None:
        message = f"{why}; still pending: {'; '.join(pending) or 'nothing (settling)'}"
        with self._lock:
            if self._errors:
                message += f" ({len(self._errors)} task(s) failed meanwhile; the next drain() reports them)"
        raise DrainTimeout(message)


def _delete_memory_queues(app: App) -> None:
    """Empty and delete the app's in-process queues: they are global to the process."""
    broker = app._broker
    if broker is None or not broker.url.startswith("memory:"):
        return
    with broker.new_connection() as connection:
        channel = connection.default_channel
        for queue in broker.queues.select():
            queue(channel).purge()
            queue(channel).delete()


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture
def taskq_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings of the test app: in-process broker and results, plus ``@pytest.mark.taskq(...)``.

    Override it in a conftest to change the settings of every test (``taskq_app`` applies the
    marker's settings on top of yours too).
    """
    return {**DEFAULT_CONFIG, **_marker_settings(request.node)}


@pytest.fixture
def taskq_parameters() -> dict[str, Any]:
    """Extra keyword arguments of ``App(...)`` for the test app (``main``, ``task_cls``, ...).

    Constructor arguments win over ``taskq_config``, as in Celery (``broker=`` beats ``broker_url``).
    """
    return {}


@pytest.fixture
def taskq_includes() -> list[str]:
    """Modules the test app imports when created (tasks modules, signal handlers)."""
    return []


@pytest.fixture
def taskq_app(
    request: pytest.FixtureRequest,
    taskq_config: dict[str, Any],
    taskq_parameters: dict[str, Any],
    taskq_includes: list[str],
) -> Iterator[App]:
    """A fresh ``App`` for one test, current while the test runs, closed after it.

    Its default queue has a unique name (``taskq-test-<hex>``) unless the settings name one, its
    in-process queues are deleted after the test, and ``memory://`` results are cleared before.
    """
    previous = (_state._current_app.get(), list(_state._default_app))
    app = App(**{"main": "taskq.testing", "set_as_current": True, **taskq_parameters})
    app.add_defaults({**taskq_config, **_marker_settings(request.node)})
    if not app.conf.is_set("task_default_queue"):
        app.conf.task_default_queue = f"taskq-test-{uuid.uuid4().hex[:12]}"
    if str(app.result_backend_url or "").startswith("memory:"):
        MemoryBackend.clear()
    try:
        app.conf.include = (*app.conf.include, *taskq_includes)
        app.import_modules()
        yield app
    finally:
        try:
            _delete_memory_queues(app)
        finally:
            app.close()
            _state._current_app.set(previous[0])
            _state._default_app[:] = previous[1]


@pytest.fixture
def taskq_worker_pool() -> str:
    """Pool of the test worker: ``"threads"`` (or ``"solo"``: tasks run in the consumer's thread)."""
    return "threads"


@pytest.fixture
def taskq_worker_parameters() -> dict[str, Any]:
    """Keyword arguments of ``Worker(...)`` (``concurrency``, ``queues``, ``hostname``, ...).

    Default ``{"concurrency": 1}``; ``shutdown_timeout`` (seconds, default 10) bounds the stop.
    """
    return {"concurrency": 1}


@pytest.fixture
def taskq_worker(
    taskq_app: App, taskq_worker_pool: str, taskq_worker_parameters: dict[str, Any]
) -> Iterator[RunningWorker]:
    """A real worker on ``taskq_app`` in a background thread, consuming before the test starts.

    ``drain()`` waits until the sent tasks have run and re-raises a task's error; ``app``,
    ``worker`` (the ``Worker``) and ``hostname`` describe it. It is stopped warmly after the
    test, and the test errors if it does not stop in time.
    """
    running = RunningWorker(
        taskq_app, **{"pool": taskq_worker_pool, "concurrency": 1, **taskq_worker_parameters}
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def taskq_eager(taskq_app: App) -> Iterator[App]:
    """``taskq_app`` with ``task_always_eager`` and ``task_eager_propagates`` on: ``delay()`` runs
    the task in the test's thread and raises its exception."""
    with eager(taskq_app):
        yield taskq_app
