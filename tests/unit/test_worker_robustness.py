"""Malformed headers and internal errors cost one message, never the worker."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection, Producer

from taskq import Celery
from taskq.backend.memory import MemoryBackend
from taskq.worker.worker import Worker


@pytest.fixture
def app() -> Iterator[Celery]:
    MemoryBackend.clear()
    app = Celery("robust", broker="memory://", backend="memory://", set_as_current=False)
    app.conf.task_default_queue = f"robust-{uuid.uuid4().hex[:8]}"

    @app.task(name="robust.add")
    def add(x: int, y: int) -> int:
        return x + y

    yield app
    app.close()


def publish_raw(app: Celery, headers: dict[str, object], body: object) -> None:
    queue = app.broker.queues.default
    with Connection("memory://localhost/") as conn:
        Producer(conn.default_channel).publish(
            body, exchange="", routing_key=queue.name, declare=[queue], serializer="json", headers=headers
        )


@pytest.mark.parametrize(
    "headers",
    [
        {"task": "robust.add", "id": "h1", "retries": "not-a-number"},
        {"task": "robust.add", "id": "h2", "group_index": "x"},
        {"task": "robust.add", "id": "h3", "eta": 12345},
        {"task": "robust.add", "id": "h4", "timelimit": "soon"},
        {"task": ["not", "a", "name"], "id": "h5"},
    ],
)
def test_bad_header_is_dropped_and_worker_goes_on(
    app: Celery, headers: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    publish_raw(app, headers, [[1, 2], {}, {}])
    worker = Worker(app, pool="threads", concurrency=1)
    worker.consumer.idle_wait = 0.05
    thread = threading.Thread(target=worker.start, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        assert app.tasks["robust.add"].delay(20, 22).get(timeout=10) == 42
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert "Invalid task message dropped" in caplog.text
