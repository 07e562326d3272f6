"""Stopping a worker on Redis loses nothing: warm shutdown, and a killed worker's late-acked task."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from taskq import Celery, states

from .helpers import running_worker, start_worker, wait_for, write_module

pytestmark = pytest.mark.e2e

APP = """
import os
import time

from taskq import Celery

app = Celery(
    "proj",
    broker={url!r},
    backend={url!r},
    task_default_queue={queue!r},
    # A SIGKILLed worker's unacked messages come back once its lease lapses (lease_timeout,
    # 30 s by default: 2 here, so the test does not wait for it). kombu's own visibility sweep
    # stays short too, in case a test runs with leases off.
    broker_transport_options={{
        "lease_timeout": 2, "visibility_timeout": 2, "unacked_restore_throttle": 1, "unacked_mutex_expire": 2,
    }},
)


@app.task
def long(marker):
    open(marker, "w").close()
    time.sleep(3)
    return "long done"


@app.task
def quick(i):
    return i


@app.task(acks_late=True, bind=True)
def fragile(self, directory):
    runs = len(os.listdir(directory))
    open(os.path.join(directory, f"run-{{runs}}-{{os.getpid()}}"), "w").close()
    if runs == 0:
        time.sleep(60)  # killed here
    return {{"run": runs, "redelivered": bool(self.request.delivery_info.get("redelivered"))}}
"""


def setup_app(tmp_path: Path, redis_url: str) -> tuple[str, Celery]:
    queue = f"e2e-stop-{uuid.uuid4().hex[:10]}"
    write_module(tmp_path, "proj", APP.format(url=redis_url, queue=queue))
    client = Celery(
        "client", broker=redis_url, backend=redis_url, task_default_queue=queue, set_as_current=False
    )
    return queue, client


def test_sigterm_finishes_running_task_and_returns_prefetched(
    tmp_path: Path, redis_url: str, redis_client: Any
) -> None:
    queue, client = setup_app(tmp_path, redis_url)
    marker = tmp_path / "long-started"
    try:
        long_result = client.send_task("proj.long", (str(marker),))
        quick = [client.send_task("proj.quick", (i,)) for i in range(5)]
        assert redis_client.llen(queue) == 6
        argv = (
            "-A",
            "proj",
            "worker",
            "-l",
            "info",
            "-P",
            "threads",
            "-c",
            "1",
            "--prefetch-multiplier",
            "4",
        )
        worker = start_worker(tmp_path, *argv)
        try:
            worker.wait_ready()
            wait_for(marker.exists, 20, "the long task to start")
            worker.wait_for_log(r"Task proj\.quick\[[^\]]+\] received")  # some are prefetched
            assert redis_client.llen(queue) < 5
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(20)
        finally:
            worker.stop()
        log = worker.output
        assert code == 0, log
        assert "warm shutdown" in log
        assert "Task proj.long[" in log and "succeeded" in log
        assert long_result.get(timeout=5) == "long done"
        assert long_result.state == states.SUCCESS
        assert [r.state for r in quick] == [states.PENDING] * 5, log
        assert redis_client.llen(queue) == 5, log  # every unstarted one is back on the list

        with running_worker(tmp_path, *argv):
            assert [r.get(timeout=20) for r in quick] == list(range(5))
        assert redis_client.llen(queue) == 0
    finally:
        client.close()


def test_late_ack_task_of_a_killed_worker_runs_again(
    tmp_path: Path, redis_url: str, redis_client: Any
) -> None:
    queue, client = setup_app(tmp_path, redis_url)
    runs = tmp_path / "runs"
    runs.mkdir()
    try:
        result = client.send_task("proj.fragile", (str(runs),))
        first = start_worker(tmp_path, "-A", "proj", "worker", "-l", "info", "-c", "1")
        try:
            first.wait_ready()
            wait_for(lambda: any(runs.iterdir()), 20, "the first run to start")
            first.send_signal(signal.SIGKILL)
            assert first.wait(10) == -signal.SIGKILL
        finally:
            first.stop()
        assert result.state == states.PENDING
        assert redis_client.llen(queue) == 0  # not in the list: held unacked by the dead worker

        with running_worker(tmp_path, "-A", "proj", "worker", "-l", "info", "-c", "1"):
            outcome = result.get(timeout=30)
        assert outcome == {"run": 1, "redelivered": True}
        assert len(list(runs.iterdir())) == 2
    finally:
        client.close()
