"""One behaviour, three ways to run it: eagerly, through a worker on memory://, through Redis.

Every test takes ``env`` (parametrized by ``mode``), defines its tasks on ``env.app``, and runs
them inside ``with env.worker():``. In eager mode the app has ``task_always_eager`` on and the
block starts nothing; in the worker modes a real ``Worker`` consumes in a thread of this process,
so receivers, handlers and lists the tasks append to are shared with the test.

A test that only makes sense for one kind of run says so with
``@pytest.mark.parametrize("mode", WORKER_MODES)`` (a direct parametrization of the fixture).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from taskq import Celery, signals
from taskq.signals import Signal
from taskq.worker.worker import Worker

MODES = ("eager", "memory", "redis")
WORKER_MODES = ("memory", "redis")
STOP_TIMEOUT = 20.0


class Running:
    """A worker in a background thread. ``stop(wait=False)`` asks for a warm stop and returns.

    A worker blocked in Redis's BRPOP notices a stop request only when the 1 s poll ends, so
    tests do not wait for that: the session joins every thread at its end (``_workers``).
    """

    def __init__(self, app: Celery, **options: Any) -> None:
        options.setdefault("pool", "threads")
        options.setdefault("concurrency", 2)
        self.worker = Worker(app, **options)
        self.thread = threading.Thread(
            target=self.worker.start, kwargs={"install_signals": False}, daemon=True, name="semantics-worker"
        )

    def start(self) -> Worker:
        """Start it and wait until it consumes: a test's timeouts are for its tasks, not for a
        worker starting slowly on a loaded machine."""
        ready = threading.Event()

        def on_ready(sender: Any = None, **kwargs: Any) -> None:
            if sender is self.worker:
                ready.set()

        signals.worker_ready.connect(on_ready, weak=False)
        try:
            self.thread.start()
            ready.wait(STOP_TIMEOUT)
        finally:
            signals.worker_ready.disconnect(on_ready)
        return self.worker

    def stop(self, wait: bool = False) -> None:
        self.worker.stop()
        if wait:
            self.thread.join(timeout=STOP_TIMEOUT)
            assert not self.thread.is_alive(), "worker did not stop"


_started: list[tuple[Running, Celery]] = []


@pytest.fixture(scope="session", autouse=True)
def _workers() -> Iterator[None]:
    """At the end of the session every worker must have stopped; then close the apps."""
    yield
    stuck = []
    for running, _ in _started:
        running.stop()
        running.thread.join(timeout=STOP_TIMEOUT)
        if running.thread.is_alive():
            stuck.append(running)
    for _, app in _started:
        app.close()
    assert not stuck, f"{len(stuck)} worker thread(s) did not stop"


class Env:
    """The app under test and how its tasks are run in this mode."""

    def __init__(self, mode: str, app: Celery) -> None:
        self.mode = mode
        self.app = app
        self.running: Running | None = None

    @property
    def eager(self) -> bool:
        return self.mode == "eager"

    @property
    def queue(self) -> str:
        return str(self.app.conf.task_default_queue)

    @contextmanager
    def worker(self, **options: Any) -> Iterator[Worker | None]:
        """Run a worker for the block (nothing in eager mode). Stops without waiting."""
        if self.eager:
            yield None
            return
        running = Running(self.app, **options)
        _started.append((running, self.app))
        self.running = running
        running.start()
        try:
            yield running.worker
        finally:
            running.stop()

    def stop_worker(self) -> None:
        """Stop the worker of the last ``worker()`` block and wait until it has stopped."""
        if self.running is not None:
            self.running.stop(wait=True)

    def queue_size(self, name: str | None = None) -> int:
        """Messages waiting in a queue (unacked ones are not counted)."""
        app = self.app
        with app.broker.new_connection() as conn:
            queue = app.broker.queues[name or self.queue](conn.default_channel)
            try:
                return int(queue.queue_declare(passive=True).message_count)
            except conn.channel_errors:  # Redis: an empty list does not exist
                return 0

    def __repr__(self) -> str:
        return f"<Env {self.mode}>"


def make_app(mode: str, request: pytest.FixtureRequest) -> Celery:
    if mode == "redis":
        url = request.getfixturevalue("redis_url")
        broker, backend = url, url
    else:
        broker, backend = "memory://", "memory://"
    app = Celery("semantics", broker=broker, backend=backend, set_as_current=False)
    # memory:// queues are process-global and the Redis DB is shared by the whole run:
    # a queue of its own per test, so no message of one test ever reaches another.
    app.conf.task_default_queue = f"sem-{uuid.uuid4().hex[:12]}"
    app.conf.task_always_eager = mode == "eager"
    return app


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def env(mode: str, request: pytest.FixtureRequest) -> Iterator[Env]:
    env = Env(mode, make_app(mode, request))
    yield env
    if env.running is None:  # an app that ran a worker is closed once the worker stopped
        env.app.close()


@pytest.fixture
def connect() -> Iterator[Any]:
    """``connect(signal, receiver, **options)``: connected for this test only."""
    made: list[tuple[Signal, Any, dict[str, Any]]] = []

    def _connect(signal: Signal, receiver: Any = None, **options: Any) -> Any:
        options.setdefault("weak", False)
        if receiver is None:

            def decorate(fn: Any) -> Any:
                return _connect(signal, fn, **options)

            return decorate
        signal.connect(receiver, **options)
        made.append((signal, receiver, options))
        return receiver

    yield _connect
    for signal, receiver, options in made:
        signal.disconnect(receiver, sender=options.get("sender"), dispatch_uid=options.get("dispatch_uid"))
