"""Shared by the canvas tests: one app of small tasks, a worker thread, published-message capture.

Every task records nothing global except ``ERRBACKS`` (new- and old-style errback calls, read
by tests that run the worker in this process) and the Redis keys a test names.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from taskq import Celery, group, signals
from taskq.worker.worker import Worker

ERRBACKS: list[tuple[Any, ...]] = []
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
FIXED = "00000000-0000-4000-8"  # the vectors' fixed ids start so; every other uuid is volatile


def make_app(broker: str = "memory://", backend: str = "memory://", **settings: Any) -> Celery:
    """An app with the canvas tasks, on a queue of its own."""
    app = Celery("cv", broker=broker, backend=backend, set_as_current=False, **settings)
    app.conf.task_default_queue = f"canvas-{uuid.uuid4().hex[:8]}"
    register(app)
    return app


def register(app: Any) -> dict[str, Any]:
    """Register the canvas tasks in ``app``; returns them by short name."""

    @app.task(name="cv.add")
    def add(x: Any, y: Any) -> Any:
        return x + y

    @app.task(name="cv.mul")
    def mul(x: Any, y: Any) -> Any:
        return x * y

    @app.task(name="cv.xsum")
    def xsum(numbers: list[Any]) -> Any:
        return sum(numbers)

    @app.task(name="cv.tsum")
    def tsum(lists: list[Any]) -> Any:
        return sum(sum(x) if isinstance(x, list) else x for x in lists)

    @app.task(name="cv.fail")
    def fail(*args: Any) -> None:
        raise ValueError("boom")

    @app.task(name="cv.on_error")
    def on_error(request: Any, exc: BaseException, traceback: Any) -> None:
        ERRBACKS.append(("new", request.id, exc, traceback))

    @app.task(name="cv.on_error_old")
    def on_error_old(task_id: str) -> str:
        ERRBACKS.append(("old", task_id))
        return task_id

    @app.task(name="cv.A", trail=True)
    def A(how_many: int) -> Any:  # noqa: N802 - the example of Celery's AsyncResult.collect
        return group(B.s(i) for i in range(how_many))()

    @app.task(name="cv.B", trail=True)
    def B(i: int) -> Any:  # noqa: N802
        return app.tasks["cv.pow2"].delay(i)

    @app.task(name="cv.pow2", trail=True)
    def pow2(i: int) -> int:
        return i**2

    @app.task(name="cv.flaky", bind=True, max_retries=3)
    def flaky(self: Any, x: int) -> int:
        if self.request.retries == 0:
            raise self.retry(countdown=0.1)
        return x * 10

    return {
        t.name.split(".")[1]: t
        for t in (add, mul, xsum, tsum, fail, on_error, on_error_old, A, B, pow2, flaky)
    }


class Running:
    """A worker in a thread of this process, stopped (warm) on exit."""

    def __init__(self, app: Celery, concurrency: int = 4) -> None:
        self.worker = Worker(app, pool="threads", concurrency=concurrency)
        self.worker.consumer.idle_wait = 0.05
        self.thread = threading.Thread(
            target=self.worker.start, kwargs={"install_signals": False}, daemon=True
        )

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.worker.stop()
        self.thread.join(20)
        assert not self.thread.is_alive(), "worker thread did not stop"


@contextmanager
def published() -> Iterator[list[dict[str, Any]]]:
    """Every task message published in this process inside the block: task, headers, body."""
    sent: list[dict[str, Any]] = []
    lock = threading.Lock()

    def record(sender: Any = None, body: Any = None, headers: Any = None, **_: Any) -> None:
        with lock:
            sent.append({"task": sender, "headers": dict(headers), "body": json.loads(json.dumps(body))})

    uid = f"canvas-capture-{uuid.uuid4()}"
    signals.after_task_publish.connect(record, weak=False, dispatch_uid=uid)
    try:
        yield sent
    finally:
        signals.after_task_publish.disconnect(record, dispatch_uid=uid)


def normalized(value: Any, names: dict[str, str] | None = None) -> Any:
    """``value`` with volatile values replaced: ``reply_to`` and random uuids (named by first use).

    The fixed ids of the vectors stay; a random uuid becomes ``<uuid-N>`` in order of first
    appearance, so "the chord's task_id is its header's group id" still shows.
    """
    names = {} if names is None else names
    if isinstance(value, dict):
        return {k: "<reply_to>" if k == "reply_to" and v else normalized(v, names) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalized(v, names) for v in value]
    if isinstance(value, str) and UUID.match(value) and not value.startswith(FIXED):
        return names.setdefault(value, f"<uuid-{len(names) + 1}>")
    return value


def same_json(ours: Any, theirs: Any) -> None:
    """Equal with key order: compared as JSON text (and as data, for a readable diff)."""
    assert ours == theirs
    assert json.dumps(ours) == json.dumps(theirs), "same data, different key order"


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
