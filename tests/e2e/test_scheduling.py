"""Scheduling inside a real worker: fair prefetch, the ETA bound, and rate limits.

Each test runs ``taskq worker`` (prefork, the default pool) as a subprocess on Redis and reads
what the tasks recorded (start/end times, pids, hostnames) from files, so nothing here depends on
the worker's own account of what it did.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from taskq import Celery

from .helpers import complete_lines, running_worker, wait_for, write_module

pytestmark = pytest.mark.e2e

APP = """
import json
import os
import time

from taskq import Celery

app = Celery("sched", broker={url!r}, backend={url!r}, task_default_queue={queue!r})
app.conf.worker_eta_task_limit = {eta_limit!r}
LOG = {log!r}


def record(kind, i, started, request):
    with open(LOG, "a") as fh:
        fh.write(json.dumps({{"kind": kind, "i": i, "start": started, "end": time.time(),
                              "pid": os.getpid(), "host": request.hostname}}) + "\\n")


@app.task(bind=True)
def long(self, i, seconds):
    started = time.time()
    time.sleep(seconds)
    record("long", i, started, self.request)


@app.task(bind=True)
def short(self, i):
    record("short", i, time.time(), self.request)


@app.task(bind=True, rate_limit="5/s")
def limited(self, i):
    record("limited", i, time.time(), self.request)
"""


def _setup(tmp_path: Path, redis_url: str, eta_limit: int | None = None) -> tuple[Celery, Path, str]:
    queue = f"sched-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "runs.jsonl"
    write_module(
        tmp_path, "schedapp", APP.format(url=redis_url, queue=queue, log=str(log), eta_limit=eta_limit)
    )
    client = Celery("sched", broker=redis_url, backend=redis_url, task_default_queue=queue)
    return client, log, queue


def _runs(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in complete_lines(log)]


def _count(log: Path, kind: str) -> int:
    return sum(r["kind"] == kind for r in _runs(log))


def test_short_tasks_never_wait_behind_a_long_one_while_a_child_is_idle(
    tmp_path: Path, redis_url: str
) -> None:
    """-c 2: while child A runs a long task, child B takes every short task queued behind it."""
    client, log, _ = _setup(tmp_path, redis_url)
    with running_worker(tmp_path, "-A", "schedapp", "worker", "-c", "2", "-l", "INFO"):
        client.send_task("schedapp.long", (1, 4.0))
        for i in range(100):
            client.send_task("schedapp.short", (i,))
        client.send_task("schedapp.long", (2, 4.0))
        for i in range(100, 200):
            client.send_task("schedapp.short", (i,))
        wait_for(lambda: _count(log, "short") == 200 and _count(log, "long") == 2, 30, "all 202 tasks")
    runs = _runs(log)
    first_long = next(r for r in runs if r["kind"] == "long" and r["i"] == 1)
    early = [r for r in runs if r["kind"] == "short" and r["i"] < 100]
    late_end = max(r["end"] for r in early)
    print(f"100 short tasks behind a 4 s task done {late_end - first_long['start']:.2f} s after it started")
    assert late_end < first_long["end"], "a short task waited for the long one although a child was free"


def test_busy_worker_reserves_nothing_so_an_idle_one_gets_the_work(tmp_path: Path, redis_url: str) -> None:
    """Two workers with one child each: the one running a long task holds no short task hostage."""
    client, log, _ = _setup(tmp_path, redis_url)
    args = ("-A", "schedapp", "worker", "-c", "1", "-l", "INFO")
    with running_worker(tmp_path, *args, "-n", "busy@%h"), running_worker(tmp_path, *args, "-n", "idle@%h"):
        client.send_task("schedapp.long", (1, 5.0))
        time.sleep(1.0)  # the long task has started on one of them
        sent = time.time()
        for i in range(20):
            client.send_task("schedapp.short", (i,))
        wait_for(lambda: _count(log, "short") == 20, 15, "20 short tasks")
    runs = _runs(log)  # the long task's record is written when it ends, before its worker stops
    long_host = next(r["host"] for r in runs if r["kind"] == "long")
    shorts = [r for r in runs if r["kind"] == "short"]
    waited = max(r["start"] for r in shorts) - sent
    print(f"20 short tasks on the idle worker within {waited:.2f} s of being sent")
    assert all(r["host"] != long_host for r in shorts), "the busy worker had reserved short tasks"
    assert waited < 4.0, "short tasks waited for the long task to end"


def _unacked(redis_url: str) -> int:
    import redis

    return int(redis.Redis.from_url(redis_url).hlen("unacked"))


def test_eta_tasks_are_held_up_to_the_bound(tmp_path: Path, redis_url: str) -> None:
    """worker_eta_task_limit=3 on -c 1: at most 1 + 3 messages are taken; the rest wait in Redis."""
    client, log, _ = _setup(tmp_path, redis_url, eta_limit=3)
    with running_worker(tmp_path, "-A", "schedapp", "worker", "-c", "1", "-l", "INFO"):
        for i in range(10):
            client.send_task("schedapp.short", (i,), countdown=3)
        peak = 0
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            peak = max(peak, _unacked(redis_url))
            time.sleep(0.05)
        wait_for(lambda: _count(log, "short") == 10, 30, "10 ETA tasks")
    print(f"peak of reserved ETA messages with worker_eta_task_limit=3, -c 1: {peak}")
    assert 1 <= peak <= 4


def test_eta_tasks_without_bound_are_all_reserved_and_free_the_slot(tmp_path: Path, redis_url: str) -> None:
    """Without a bound, waiting ETA tasks do not hold the pool's slot: a plain task runs at once."""
    client, log, _ = _setup(tmp_path, redis_url)
    with running_worker(tmp_path, "-A", "schedapp", "worker", "-c", "1", "-l", "INFO"):
        for i in range(10):
            client.send_task("schedapp.short", (i,), countdown=4)
        sent = time.time()
        client.send_task("schedapp.long", (0, 0.0))
        wait_for(lambda: _count(log, "long") == 1, 10, "the plain task")
        ran = next(r["start"] for r in _runs(log) if r["kind"] == "long")
        assert ran - sent < 2.5, "a plain task waited behind ETA tasks"
        assert _count(log, "short") == 0, "an ETA task ran early"
        wait_for(lambda: _count(log, "short") == 10, 20, "10 ETA tasks")
    starts = [r["start"] for r in _runs(log) if r["kind"] == "short"]
    assert min(starts) - sent > 3.0


def test_rate_limit_spaces_runs_and_does_not_hold_up_other_tasks(tmp_path: Path, redis_url: str) -> None:
    """rate_limit='5/s' per worker: 10 runs over >= 1.6 s, while plain tasks sent after them run at once."""
    client, log, _ = _setup(tmp_path, redis_url)
    with running_worker(tmp_path, "-A", "schedapp", "worker", "-c", "2", "-l", "INFO"):
        for i in range(10):
            client.send_task("schedapp.limited", (i,))
        sent = time.time()
        for i in range(5):
            client.send_task("schedapp.short", (i,))
        wait_for(lambda: _count(log, "short") == 5, 10, "plain tasks")
        shorts_done = max(r["end"] for r in _runs(log) if r["kind"] == "short")
        wait_for(lambda: _count(log, "limited") == 10, 15, "rate-limited tasks")
    limited = sorted(r["start"] for r in _runs(log) if r["kind"] == "limited")
    span = limited[-1] - limited[0]
    print(
        f"10 runs at 5/s spread over {span:.2f} s; plain tasks done {shorts_done - sent:.2f} s after sending"
    )
    assert span >= 1.6
    assert shorts_done < limited[-1], "plain tasks waited for the rate-limited ones"


def test_rate_limit_changed_at_run_time(tmp_path: Path, redis_url: str) -> None:
    """The rate_limit control command lifts the limit in a running worker."""
    client, log, _ = _setup(tmp_path, redis_url)
    with running_worker(tmp_path, "-A", "schedapp", "worker", "-c", "2", "-l", "INFO"):
        replies = client.control.rate_limit("schedapp.limited", None, reply=True, timeout=3)
        assert replies and all("ok" in next(iter(r.values())) for r in replies), replies
        started = time.time()
        for i in range(20):
            client.send_task("schedapp.limited", (i,))
        wait_for(lambda: _count(log, "limited") == 20, 10, "20 tasks")
    took = max(r["start"] for r in _runs(log)) - started
    print(f"20 runs with the limit lifted took {took:.2f} s (at 5/s it would be 3.8 s)")
    assert took < 2.5
