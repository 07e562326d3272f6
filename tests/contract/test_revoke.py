"""revoke and ping over the pidbox, on every broker, from taskq and from a Celery 5.7 client."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from taskq import Celery, group, states
from taskq.backend.memory import MemoryBackend
from taskq.worker.worker import Worker

BROKERS = ["memory", "sqlite", "redis", "amqp"]


@pytest.fixture(params=BROKERS)
def app(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Celery]:
    kind = request.param
    if kind == "memory":
        MemoryBackend.clear()
        broker = backend = "memory://"
    elif kind == "sqlite":
        broker = backend = f"sqlite:///{tmp_path}/broker.sqlite3"
    else:
        backend = request.getfixturevalue("redis_url")
        broker = backend if kind == "redis" else request.getfixturevalue("amqp_url")
    app = Celery("revoking", broker=broker, backend=backend, set_as_current=False)
    app.conf.task_default_queue = f"revoke-{uuid.uuid4().hex[:8]}"
    app.runs = []  # type: ignore[attr-defined]

    @app.task(name="revoking.record")
    def record(value: int) -> int:
        app.runs.append(value)  # type: ignore[attr-defined]
        return value

    yield app
    app.close()


@pytest.fixture
def worker(app: Celery) -> Iterator[Worker]:
    node = Worker(app, pool="threads", concurrency=2, hostname=f"revoker-{uuid.uuid4().hex[:6]}@%h")
    node.consumer.idle_wait = 0.05
    thread = threading.Thread(target=node.start, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not app.control.ping(destination=[node.hostname], timeout=0.5) and time.monotonic() < deadline:
        pass  # the worker answers once its pidbox queue is bound
    yield node
    node.stop()
    thread.join(15)
    assert not thread.is_alive()


def test_ping_names_the_worker(app: Celery, worker: Worker) -> None:
    replies = app.control.ping(timeout=1)
    assert {"ok": "pong"} in [reply.get(worker.hostname) for reply in replies]


def test_revoked_eta_task_never_runs(app: Celery, worker: Worker) -> None:
    result = app.tasks["revoking.record"].apply_async((1,), countdown=1.5)
    deadline = time.monotonic() + 5
    while not worker.consumer.eta_heap and time.monotonic() < deadline:
        time.sleep(0.02)  # wait until the worker holds it
    result.revoke()
    assert result.get(timeout=5, propagate=False) is not None
    assert result.state == states.REVOKED
    time.sleep(2)
    assert app.runs == []  # type: ignore[attr-defined]
    assert app.tasks["revoking.record"].delay(2).get(timeout=10) == 2  # the worker goes on


def test_revoke_before_the_message_arrives(app: Celery, worker: Worker) -> None:
    task_id = str(uuid.uuid4())
    app.control.revoke(task_id, reply=True, timeout=1)
    assert app.AsyncResult(task_id).state == states.REVOKED
    app.tasks["revoking.record"].apply_async((3,), task_id=task_id)
    assert app.tasks["revoking.record"].delay(4).get(timeout=10) == 4
    time.sleep(0.3)
    assert 3 not in app.runs  # type: ignore[attr-defined]


def test_group_revoke(app: Celery, worker: Worker) -> None:
    record = app.tasks["revoking.record"]
    results = group(record.s(i) for i in range(3)).apply_async(countdown=1.5)
    deadline = time.monotonic() + 5
    while len(worker.consumer.eta_heap) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    results.revoke()
    deadline = time.monotonic() + 5
    while not all(r.state == states.REVOKED for r in results) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r.state for r in results] == [states.REVOKED] * 3
    time.sleep(2)
    assert app.runs == []  # type: ignore[attr-defined]


def test_celery_client_revokes_on_a_taskq_worker(redis_url: str) -> None:
    import celery

    app = Celery("revoking", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.task_default_queue = f"revoke-{uuid.uuid4().hex[:8]}"
    node = Worker(app, pool="threads", concurrency=1, hostname=f"revoker-{uuid.uuid4().hex[:6]}@%h")
    node.consumer.idle_wait = 0.05
    thread = threading.Thread(target=node.start, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    client = celery.Celery("revoking", broker=redis_url, backend=redis_url)
    try:
        deadline = time.monotonic() + 10
        pong: list[Any] = []
        while not pong and time.monotonic() < deadline:
            pong = client.control.ping(destination=[node.hostname], timeout=0.5)
        assert pong == [{node.hostname: {"ok": "pong"}}]
        task_id = str(uuid.uuid4())
        client.control.revoke(task_id)
        deadline = time.monotonic() + 5
        while task_id not in node.consumer.revoked and time.monotonic() < deadline:
            time.sleep(0.02)
        assert task_id in node.consumer.revoked
        while client.AsyncResult(task_id).state != "REVOKED" and time.monotonic() < deadline:
            time.sleep(0.02)  # the id is remembered first, then REVOKED is stored
        assert client.AsyncResult(task_id).state == "REVOKED"
    finally:
        client.close()
        node.stop()
        thread.join(15)
        app.close()


def test_terminate_on_the_threads_pool_stores_revoked(app: Celery, worker: Worker) -> None:
    """Terminated raised in the task's thread ends it as REVOKED (terminated), not as a failure."""
    started = threading.Event()

    # STARTED is stored, so the revoke itself cannot mark it REVOKED: only the terminate can.
    @app.task(name="revoking.busy", track_started=True)
    def busy() -> str:
        started.set()
        for _ in range(200):  # a Python-level loop: the raised exception lands between sleeps
            time.sleep(0.05)
        return "ran to the end"

    result = busy.delay()
    assert started.wait(10), "the task did not start"
    deadline = time.monotonic() + 5
    while result.state != states.STARTED and time.monotonic() < deadline:
        time.sleep(0.02)
    app.control.revoke(result.id, terminate=True)
    deadline = time.monotonic() + 5
    while result.state != states.REVOKED and time.monotonic() < deadline:
        time.sleep(0.05)
    assert result.state == states.REVOKED
    time.sleep(0.5)
    assert result.state == states.REVOKED  # not overwritten by a FAILURE or a late SUCCESS
