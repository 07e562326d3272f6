"""A chord's body runs exactly once, when every header task finished, whatever happens meanwhile.

- two workers count the same chords (Redis: Celery's Lua scripts; SQLite: the generic protocol);
- a header task that retries is counted once, when it finally succeeds;
- a worker killed (SIGKILL) while it runs a late-acked header task: the message comes back
  after the visibility timeout, the other worker runs it, the body still runs once (counted
  with a Redis INCR inside the body task, across processes);
- chord counters and saved group metas expire with ``result_expires``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.helpers import WorkerProcess, start_worker, wait_for, write_module

from taskq import Celery, GroupResult, chord, signature

from .support import Running, make_app

T = 30
BODY_RUNS: list[Any] = []
RELEASE = threading.Event()


def add_reliability_tasks(app: Celery) -> None:
    @app.task(name="rel.body")
    def body(values: list[int]) -> int:
        BODY_RUNS.append(values)
        return sum(values)

    @app.task(name="rel.held")
    def held(x: int) -> int:
        RELEASE.wait(T)
        return x


@pytest.fixture(params=["redis", "sqlite"])
def app(request: pytest.FixtureRequest) -> Iterator[Celery]:
    if request.param == "redis":
        request.getfixturevalue("redis_client")  # a flushed DB
        url = request.getfixturevalue("redis_url")
        app = make_app(url, url)
    else:
        url = request.getfixturevalue("sqlite_url")
        app = make_app(url, url, broker_transport_options={"polling_interval": 0.01})
    add_reliability_tasks(app)
    BODY_RUNS.clear()
    yield app
    app.close()


def test_two_workers_run_each_body_once(app: Celery) -> None:
    add, body = app.tasks["cv.add"], app.tasks["rel.body"]
    with Running(app), Running(app):
        results = [chord([add.s(i, n) for i in range(12)], body.s()).apply_async() for n in range(6)]
        assert [r.get(timeout=T) for r in results] == [66 + 12 * n for n in range(6)]
        time.sleep(0.3)  # a second body would have been sent by now
    assert len(BODY_RUNS) == 6
    assert sorted(BODY_RUNS) == sorted([[i + n for i in range(12)] for n in range(6)])


def test_retried_header_task_counts_once(app: Celery) -> None:
    flaky, add, body = app.tasks["cv.flaky"], app.tasks["cv.add"], app.tasks["rel.body"]
    with Running(app), Running(app):
        result = chord([flaky.s(1), add.s(1, 1), flaky.s(2)], body.s()).apply_async()
        assert result.get(timeout=T) == 32
        time.sleep(0.3)
    assert BODY_RUNS == [[10, 2, 20]]


@pytest.mark.redis
def test_chord_keys_and_group_meta_expire_with_result_expires(redis_url: str, redis_client: Any) -> None:
    app = make_app(redis_url, redis_url, result_expires=60)
    add_reliability_tasks(app)
    RELEASE.clear()
    try:
        with Running(app):
            result = chord(
                [app.tasks["cv.add"].s(1, 1), app.tasks["rel.held"].s(5)], app.tasks["rel.body"].s()
            ).apply_async()
            gid = result.parent.id
            key = f"celery-taskset-meta-{gid}"
            wait_for(lambda: redis_client.exists(key + ".j"), T, "the first part to be counted")
            for suffix in (".s", ".j", ".d"):
                assert 0 < redis_client.ttl(key + suffix) <= 60, suffix
            RELEASE.set()
            assert result.get(timeout=T) == 7
        group_result = result.parent
        group_result.save()
        assert 0 < redis_client.ttl(key) <= 60
        assert GroupResult.restore(gid, app=app) == group_result
    finally:
        RELEASE.set()
        app.close()


# -- a worker killed mid-header (two ``taskq worker`` subprocesses) ---------------------------

APP = """
import os
import time

import redis

from taskq import Celery

app = Celery(
    "relapp",
    broker={url!r},
    backend={url!r},
    task_default_queue={queue!r},
    broker_transport_options={{"lease_timeout": 2, "unacked_restore_throttle": 1}},
)
counters = redis.Redis.from_url({url!r})


@app.task(name="relapp.header", acks_late=True)
def header(i, slow):
    if slow and counters.incr({prefix!r} + ":slow-runs") == 1:
        counters.set({prefix!r} + ":slow-pid", os.getpid())
        time.sleep(60)  # killed here
    return i


@app.task(name="relapp.body", acks_late=True)
def body(values):
    counters.incr({prefix!r} + ":body-runs")
    return sum(values)
"""


@pytest.mark.redis
@pytest.mark.e2e
def test_worker_killed_mid_header_body_runs_once(tmp_path: Path, redis_url: str, redis_client: Any) -> None:
    queue, prefix = f"rel-{uuid.uuid4().hex[:8]}", f"rel-{uuid.uuid4().hex[:8]}"
    write_module(tmp_path, "relapp", APP.format(url=redis_url, queue=queue, prefix=prefix))
    client = Celery(
        "client", broker=redis_url, backend=redis_url, task_default_queue=queue, set_as_current=False
    )
    header = signature("relapp.header", app=client)
    workers: list[WorkerProcess] = []
    try:
        for n in range(2):
            workers.append(start_worker(tmp_path, "-A", "relapp", "worker", "-P", "solo", "-l", "info",
                                        "-n", f"rel{n}-{prefix}@%h"))  # fmt: skip
        for worker in workers:
            worker.wait_ready()
        result = chord(
            [header.clone((i, i == 2)) for i in range(6)], signature("relapp.body", app=client)
        ).apply_async()
        pid = int(
            wait_for(lambda: redis_client.get(f"{prefix}:slow-pid"), T, "the slow header task to start")
        )
        (victim,) = [w for w in workers if w.pid == pid]
        victim.kill()  # SIGKILL, its message unacked
        assert not victim.alive()
        assert result.get(timeout=T) == 15
        time.sleep(2.5)  # past another visibility timeout: a second body would have run by now
        assert int(redis_client.get(f"{prefix}:body-runs")) == 1
        assert int(redis_client.get(f"{prefix}:slow-runs")) == 2, "the killed task ran again elsewhere"
    except BaseException:
        for worker in workers:
            print(f"--- {worker.log_path} ---\n{worker.output}")
        raise
    finally:
        for worker in workers:
            worker.stop()
        client.close()
