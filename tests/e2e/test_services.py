"""The same round trip through Redis and RabbitMQ, worker and client in separate processes."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from taskq import Celery, states

from .helpers import running_worker, write_module

pytestmark = pytest.mark.e2e

APP = """
from taskq import Celery

app = Celery("proj", broker={broker!r}, backend={backend!r}, task_default_queue={queue!r})


@app.task
def add(x, y):
    return x + y


@app.task
def fail(message):
    raise ValueError(message)
"""


def round_trip(tmp_path: Path, broker: str, backend: str) -> None:
    queue = f"e2e-{uuid.uuid4().hex[:10]}"
    write_module(tmp_path, "proj", APP.format(broker=broker, backend=backend, queue=queue))
    client = Celery("client", broker=broker, backend=backend, task_default_queue=queue, set_as_current=False)
    try:
        with running_worker(tmp_path, "-A", "proj", "worker", "-l", "info", "-c", "2") as worker:
            results = [client.send_task("proj.add", (i, 1)) for i in range(20)]
            assert [r.get(timeout=20) for r in results] == [i + 1 for i in range(20)]
            failed = client.send_task("proj.fail", ("remote failure",))
            with pytest.raises(ValueError, match="remote failure"):
                failed.get(timeout=20)
            assert failed.state == states.FAILURE
            assert "ValueError: remote failure" in (failed.traceback or "")
            assert f".> {queue}" in worker.output
    finally:
        client.close()
    assert worker.proc.returncode == 0, worker.output


def test_redis_round_trip(tmp_path: Path, redis_url: str) -> None:
    round_trip(tmp_path, redis_url, redis_url)


def test_rabbitmq_round_trip(tmp_path: Path, amqp_url: str, redis_url: str) -> None:
    backend = "rpc://" if Path(__file__).parents[2].joinpath("taskq/backend/rpc.py").exists() else redis_url
    round_trip(tmp_path, amqp_url, backend)
