"""Redis without visibility-timeout duplicates, and ETA tasks that wait on the broker.

Real ``taskq worker`` processes on the local Redis; every run of a task appends a line to a file,
so "ran exactly once" is read off what the tasks did, not off what the worker says.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from taskq import Celery

from .helpers import complete_lines, running_worker, start_worker, wait_for, write_module

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

APP = """
import json
import os
import time

from taskq import Celery

app = Celery("leases", broker={url!r}, backend={url!r}, task_default_queue={queue!r})
app.conf.broker_transport_options = {options!r}
app.conf.worker_eta_broker_threshold = {threshold!r}
LOG = {log!r}


@app.task(bind=True, acks_late=True)
def slow(self, i, seconds):
    with open(LOG, "a") as fh:
        fh.write(json.dumps({{"i": i, "start": time.time(), "pid": os.getpid(),
                              "redelivered": bool(self.request.delivery_info.get("redelivered"))}}) + "\\n")
    time.sleep(seconds)
"""


def _setup(
    tmp_path: Path, redis_url: str, threshold: float = 60.0, broker: str | None = None, **options: Any
) -> tuple[Celery, Path]:
    queue = f"leases-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "runs.jsonl"
    source = APP.format(url=redis_url, queue=queue, options=options, threshold=threshold, log=str(log))
    if broker is not None:
        source = source.replace(f"broker={redis_url!r}", f"broker={broker!r}")
    write_module(tmp_path, "leases_app", source)
    app = Celery("leases", broker=broker or redis_url, backend=redis_url, task_default_queue=queue)
    return app, log


def _parked(app: Celery, redis_client: Any) -> int:
    """Messages waiting on the broker: Redis' delayed set, or RabbitMQ's delay queues."""
    if app.conf.broker_url.startswith("redis"):
        return int(redis_client.zcard("taskq.delayed"))
    from kombu.transport import native_delayed_delivery as ndd

    total = 0
    with app.broker.new_connection() as conn:
        for level in range(ndd.MAX_LEVEL + 1):
            channel = conn.channel()
            try:
                total += channel.queue_declare(ndd.level_name(level), passive=True).message_count
            except conn.channel_errors:
                pass  # not declared yet
            finally:
                channel.close()
    return total


def _runs(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in complete_lines(log)]


def _worker_args(*extra: str) -> tuple[str, ...]:
    return ("-A", "leases_app", "worker", "-P", "threads", "-c", "1", "-l", "info", *extra)


def test_a_task_longer_than_the_visibility_timeout_runs_once(tmp_path: Path, redis_url: str) -> None:
    """kombu would hand the message to the idle worker after ``visibility_timeout`` (2 s here):
    the lease keeps it with the worker that runs it for as long as that worker lives."""
    app, log = _setup(tmp_path, redis_url, visibility_timeout=2, lease_timeout=3)
    with (
        running_worker(tmp_path, *_worker_args("-n", "a@%h")),
        running_worker(tmp_path, *_worker_args("-n", "b@%h")),
    ):
        app.send_task("leases_app.slow", args=(1, 7))
        wait_for(lambda: _runs(log), 10, "the first run")
        time.sleep(8)  # past the first run, and far past the visibility timeout
        runs = _runs(log)
    assert len(runs) == 1, runs


def test_a_dead_workers_message_comes_back_after_its_lease(tmp_path: Path, redis_url: str) -> None:
    """kill -9 the worker running an acks_late task: the other worker runs it again once the
    dead one's lease (3 s) lapses, not after the visibility timeout (an hour here)."""
    app, log = _setup(tmp_path, redis_url, visibility_timeout=3600, lease_timeout=3)
    victim = start_worker(tmp_path, *_worker_args("-n", "victim@%h"))
    try:
        victim.wait_ready()
        app.send_task("leases_app.slow", args=(1, 60))
        first = wait_for(lambda: _runs(log), 10, "the first run")[0]
        assert first["pid"] == victim.pid
        victim.kill()
        killed_at = time.time()
        with running_worker(tmp_path, *_worker_args("-n", "survivor@%h")) as survivor:
            second = wait_for(lambda: _runs(log)[1:], 20, "the run after the lease lapsed")[0]
            survivor.send_signal(signal.SIGQUIT)  # cold: its 60 s task may be cut short
    finally:
        victim.kill()
    assert second["redelivered"] is True
    assert second["start"] - killed_at < 3 + 3 + 2, second  # lease, one renew interval, a poll


@pytest.mark.parametrize("broker", ["redis", pytest.param("amqp", marks=pytest.mark.amqp)])
def test_far_eta_tasks_wait_on_the_broker_and_outlive_the_worker(
    tmp_path: Path, redis_url: str, broker: str, request: pytest.FixtureRequest
) -> None:
    """ETAs beyond the threshold leave the worker: it holds none of them, a restart in between
    loses nothing, and each task runs once, not before its ETA."""
    url = str(request.getfixturevalue("amqp_url")) if broker == "amqp" else None
    app, log = _setup(tmp_path, redis_url, threshold=1.0, broker=url)
    client = redis.Redis.from_url(redis_url)
    count = 200
    eta = time.time() + 8
    with running_worker(tmp_path, *_worker_args("-n", "first@%h")):
        for i in range(count):
            app.send_task("leases_app.slow", args=(i, 0), countdown=eta - time.time())
        wait_for(lambda: _parked(app, client) == count, 10, "all ETA tasks waiting on the broker")
        if broker == "redis":
            assert client.hlen("unacked") == 0
            assert client.ttl("taskq.delayed") > 0
    # the first worker is gone before any ETA came due; a new one runs them
    with running_worker(tmp_path, *_worker_args("-n", "second@%h", "-c", "4")):
        wait_for(lambda: len(_runs(log)) >= count, 30, f"{count} ETA runs")
        time.sleep(1)
        runs = _runs(log)
    assert sorted(r["i"] for r in runs) == list(range(count))  # each exactly once
    assert min(r["start"] for r in runs) >= eta - 0.05
    assert _parked(app, client) == 0


def test_leases_and_delayed_set_honour_the_global_keyprefix(tmp_path: Path, redis_url: str) -> None:
    """kombu prefixes some commands itself and not others: every taskq key must carry the prefix."""
    app, log = _setup(tmp_path, redis_url, threshold=1.0, global_keyprefix="pfx:", lease_timeout=3)
    app.conf.broker_transport_options = {"global_keyprefix": "pfx:"}
    client = redis.Redis.from_url(redis_url)
    before = set(client.keys("taskq*"))  # earlier tests' keys, in this run's DB
    with running_worker(tmp_path, *_worker_args("-n", "prefixed@%h")):
        app.send_task("leases_app.slow", args=(1, 0), countdown=4)
        app.send_task("leases_app.slow", args=(2, 2))
        wait_for(lambda: client.zcard("pfx:taskq.delayed") == 1, 10, "the ETA task parked under the prefix")
        wait_for(lambda: client.hlen("pfx:taskq.unacked_owner") == 1, 10, "the running task's owner")
        assert client.keys("pfx:taskq.lease.*")
        wait_for(lambda: len(_runs(log)) == 2, 15, "both tasks")
    unprefixed = [k for k in set(client.keys("taskq*")) - before if not k.startswith(b"taskq-test-run")]
    assert unprefixed == [], unprefixed
