"""Workflows across Celery 5.7 and taskq processes: one side sends, the other's worker runs.

- A Celery client sends chain, group, chord, chain-with-group, link and link_error to a
  ``taskq worker`` subprocess; the Celery client reads every result (and a chord's failure).
- A taskq client sends the same to a ``celery worker`` subprocess (solo pool, no mingle,
  gossip or heartbeat) and reads the results.
- Chords on RabbitMQ with the Redis result backend (rpc:// cannot do chords), both ways.
- A group saved by one side is restored by the other.

The worker module is the same text for both sides, only the ``Celery`` import differs; new-style
errbacks run inside the worker and record their arguments in a Redis list.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from interop.test_celery_vectors_redis import (
    Worker,
    celery_worker,
    poll,
    result_of,
    taskq_worker,
    worker_process,
)

pytestmark = pytest.mark.e2e

WAIT = 30.0

APP_MODULE = """\
import json

import redis

from {package} import Celery

app = Celery("canvasapp", broker={broker!r}, backend={backend!r})
app.conf.broker_connection_retry_on_startup = True
app.conf.task_default_queue = {queue!r}
records = redis.Redis.from_url({records!r})


@app.task(name="canvasapp.add")
def add(x, y):
    return x + y


@app.task(name="canvasapp.mul")
def mul(x, y):
    return x * y


@app.task(name="canvasapp.xsum")
def xsum(numbers):
    return sum(numbers)


@app.task(name="canvasapp.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="canvasapp.on_error")
def on_error(request, exc, traceback):
    records.rpush({errbacks!r}, json.dumps([request.id, type(exc).__name__, str(exc), isinstance(traceback, str)]))
"""


class Side:
    """One side's client: its library, app and task declarations (bodies never run here)."""

    def __init__(self, lib: Any, broker: str, backend: str, queue: str) -> None:
        self.lib = lib
        self.app = lib.Celery("canvasapp", broker=broker, backend=backend)
        self.app.conf.task_default_queue = queue
        self.tasks: dict[str, Any] = {}
        for name in ("add", "mul", "xsum", "fail", "on_error"):
            self.tasks[name] = self.app.task(name=f"canvasapp.{name}")(_never)

    def close(self) -> None:
        self.app.close()


def _never(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("runs in the worker")


@contextmanager
def setup(
    tmp_path: Path, client_lib: str, broker: str, backend: str, records: str
) -> Iterator[tuple[Side, Worker, str]]:
    """Write the worker module, start the other side's worker, give (client, worker, errback key)."""
    import celery

    import taskq

    queue, errbacks = f"canvas-{uuid.uuid4().hex[:8]}", f"canvas-errbacks-{uuid.uuid4().hex[:8]}"
    worker_lib = "taskq" if client_lib == "celery" else "celery"
    module = f"canvasapp_{worker_lib}"
    source = APP_MODULE.format(package=worker_lib, broker=broker, backend=backend, queue=queue,
                               records=records, errbacks=errbacks)  # fmt: skip
    (tmp_path / f"{module}.py").write_text(source)
    side = Side(celery if client_lib == "celery" else taskq, broker, backend, queue)
    argv = taskq_worker(module) if worker_lib == "taskq" else celery_worker(module)
    try:
        with worker_process(argv, tmp_path, f"{worker_lib}-worker") as worker:
            yield side, worker, errbacks
            if worker_lib == "celery" and broker.startswith("amqp"):
                # Every result is in; Celery 5.7's worker takes ~10 s to shut down on RabbitMQ
                # (warm or cold), so it is killed here. On failure it gets SIGTERM as usual.
                worker.proc.kill()
                worker.proc.wait(10)
    finally:
        side.close()


def check_workflows(side: Side, worker: Worker, redis_client: Any, errbacks: str) -> None:
    lib, t = side.lib, side.tasks
    add, mul, xsum, fail, on_error = t["add"], t["mul"], t["xsum"], t["fail"], t["on_error"]

    result = (add.s(2, 2) | mul.s(8) | add.s(1)).apply_async()
    assert result_of(result, worker) == 33
    assert result_of(result.parent, worker) == 32

    grouped = lib.group(add.s(i, i) for i in range(5))()
    assert result_of(grouped, worker) == [0, 2, 4, 6, 8]
    assert grouped.completed_count() == 5 and grouped.successful()

    assert result_of(lib.chord(add.s(i, i) for i in range(5))(xsum.s()), worker) == 20
    assert result_of((add.s(1, 1) | lib.group(add.s(10), add.s(20)) | xsum.s()).apply_async(), worker) == 34
    assert result_of(lib.chord([add.s(1, 1), add.s(2, 2)], xsum.s() | mul.s(10)).apply_async(), worker) == 60

    callback_id = str(uuid.uuid4())
    linked = add.apply_async((2, 2), link=mul.s(10).set(task_id=callback_id))
    assert result_of(linked, worker) == 4
    assert result_of(side.app.AsyncResult(callback_id), worker) == 40

    failed = fail.apply_async(("boom",), link_error=on_error.s())
    with pytest.raises(ValueError, match="boom"):
        result_of(failed, worker)
    recorded = redis_client.blpop(errbacks, timeout=WAIT)
    assert recorded is not None, f"no errback call recorded; worker log:\n{worker.log()}"
    assert json.loads(recorded[1]) == [failed.id, "ValueError", "boom", True]

    broken = lib.chord([add.s(1, 1), fail.s("boom")], xsum.s()).apply_async()
    with pytest.raises(Exception) as info:  # which one depends on the client, below
        result_of(broken, worker)
    # Celery's get() may raise the failed header task's error first (it follows the parents
    # while waiting); what the body stored is a ChordError either way.
    assert type(info.value).__name__ in ("ChordError", "ValueError")
    poll("the chord body's FAILURE", lambda: broken.state == "FAILURE" or None, worker, WAIT)
    assert type(broken.result).__name__ == "ChordError"
    assert "boom" in str(broken.result)


@pytest.mark.redis
@pytest.mark.parametrize(
    "client_lib", ["celery", "taskq"], ids=["celery-client-taskq-worker", "taskq-client-celery-worker"]
)
def test_workflows_across_sides_redis(
    client_lib: str, tmp_path: Path, redis_url: str, redis_client: Any
) -> None:
    with setup(tmp_path, client_lib, redis_url, redis_url, redis_url) as (side, worker, errbacks):
        check_workflows(side, worker, redis_client, errbacks)


@pytest.mark.redis
@pytest.mark.amqp
@pytest.mark.parametrize(
    "client_lib", ["celery", "taskq"], ids=["celery-client-taskq-worker", "taskq-client-celery-worker"]
)
def test_chords_on_rabbitmq_with_redis_results(
    client_lib: str, tmp_path: Path, amqp_url: str, redis_url: str, redis_client: Any
) -> None:
    with setup(tmp_path, client_lib, amqp_url, redis_url, redis_url) as (side, worker, _):
        lib, t = side.lib, side.tasks
        add, xsum, mul = t["add"], t["xsum"], t["mul"]
        assert result_of(lib.chord(add.s(i, i) for i in range(5))(xsum.s()), worker) == 20
        assert (
            result_of((add.s(1, 1) | lib.group(add.s(10), add.s(20)) | xsum.s()).apply_async(), worker) == 34
        )
        assert (
            result_of((lib.group(add.s(1, 1), add.s(2, 2)) | xsum.s() | mul.s(3)).apply_async(), worker) == 18
        )


@pytest.mark.redis
def test_group_saved_by_one_side_restored_by_the_other(redis_url: str, redis_client: Any) -> None:
    import celery

    import taskq

    ours = taskq.Celery("canvasapp", broker=redis_url, backend=redis_url, set_as_current=False)
    theirs = celery.Celery("canvasapp", broker=redis_url, backend=redis_url, set_as_current=False)
    try:
        saved = taskq.GroupResult(
            str(uuid.uuid4()), [ours.AsyncResult(str(uuid.uuid4())) for _ in range(3)], app=ours
        )
        saved.save()
        restored = theirs.GroupResult.restore(saved.id)
        assert [r.id for r in restored.results] == [r.id for r in saved.results]

        celery_saved = theirs.GroupResult(
            str(uuid.uuid4()), [theirs.AsyncResult(str(uuid.uuid4())) for _ in range(2)]
        )
        celery_saved.save()
        back = taskq.GroupResult.restore(celery_saved.id, app=ours)
        assert back is not None and [r.id for r in back.results] == [r.id for r in celery_saved.results]
    finally:
        ours.close()
        theirs.close()
