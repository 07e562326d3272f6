"""``-P asyncio`` on Redis: ``-c 200`` coroutines at once, sync tasks in threads, limits by cancellation."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from taskq import Celery, states

from .helpers import running_worker, start_worker, wait_for, write_module

pytestmark = pytest.mark.e2e

APP = """
import asyncio
import threading
import time

from taskq import Celery

app = Celery("aioproj", broker={url!r}, backend={url!r}, task_default_queue={queue!r})


@app.task
async def nap(i):
    await asyncio.sleep(0.1)
    return i


@app.task
def sync_where(x):
    time.sleep(0.05)
    return [x, threading.current_thread().name]


@app.task(soft_time_limit=0.5)
async def soft_limited():
    await asyncio.sleep(30)
    return "not cancelled"


@app.task(soft_time_limit=0.3)
async def cleans_up():
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        return "cleaned up"


@app.task(time_limit=0.5)
async def hard_limited():
    await asyncio.sleep(30)


@app.task
async def long_nap(marker):
    open(marker, "w").close()
    await asyncio.sleep(30)
    return "woke up"
"""


def setup_app(tmp_path: Path, redis_url: str) -> tuple[str, Celery]:
    queue = f"e2e-aio-{uuid.uuid4().hex[:10]}"
    write_module(tmp_path, "aioproj", APP.format(url=redis_url, queue=queue))
    client = Celery(
        "client", broker=redis_url, backend=redis_url, task_default_queue=queue, set_as_current=False
    )
    return queue, client


def test_200_sleeping_async_tasks_run_concurrently(tmp_path: Path, redis_url: str) -> None:
    _, client = setup_app(tmp_path, redis_url)
    argv = ("-A", "aioproj", "worker", "-P", "asyncio", "-c", "200", "-l", "INFO")
    try:
        with running_worker(tmp_path, *argv) as worker:
            started = time.monotonic()
            results = [client.send_task("aioproj.nap", (i,)) for i in range(200)]
            values = [r.get(timeout=20) for r in results]
            elapsed = time.monotonic() - started
            print(
                f"\n-P asyncio -c 200: 200 x asyncio.sleep(0.1), first publish to last result: {elapsed:.3f} s"
            )
            assert values == list(range(200))
            assert elapsed < 2.0, worker.output[-3000:]
            assert "concurrency: 200 (asyncio)" in worker.output
    finally:
        client.close()


def test_sync_task_and_limits_on_the_asyncio_pool(tmp_path: Path, redis_url: str) -> None:
    _, client = setup_app(tmp_path, redis_url)
    argv = ("-A", "aioproj", "worker", "-P", "asyncio", "-c", "10", "-l", "INFO")
    try:
        with running_worker(tmp_path, *argv) as worker:
            sync = client.send_task("aioproj.sync_where", (7,))
            soft = client.send_task("aioproj.soft_limited")
            cleaned = client.send_task("aioproj.cleans_up")
            hard = client.send_task("aioproj.hard_limited")

            value, thread = sync.get(timeout=10)
            assert value == 7 and thread.startswith("taskq-worker")  # an executor thread, not the loop

            soft.get(timeout=10, propagate=False)
            assert soft.state == states.FAILURE
            assert type(soft.result).__name__ == "SoftTimeLimitExceeded"
            assert f"Soft time limit (0.5s) exceeded for aioproj.soft_limited[{soft.id}]" in worker.output

            assert cleaned.get(timeout=10) == "cleaned up"  # it caught the cancellation: its result stands

            hard.get(timeout=10, propagate=False)
            assert hard.state == states.FAILURE
            assert type(hard.result).__name__ == "TimeLimitExceeded"
            assert f"Hard time limit (0.5s) exceeded for aioproj.hard_limited[{hard.id}]" in worker.output
    finally:
        client.close()


def test_revoke_terminate_cancels_a_running_coroutine(tmp_path: Path, redis_url: str) -> None:
    _, client = setup_app(tmp_path, redis_url)
    marker = tmp_path / "napping"
    argv = ("-A", "aioproj", "worker", "-P", "asyncio", "-c", "10", "-l", "INFO")
    try:
        with running_worker(tmp_path, *argv) as worker:
            result = client.send_task("aioproj.long_nap", (str(marker),))
            wait_for(marker.exists, 10, "the coroutine to start")
            result.revoke(terminate=True)
            # REVOKED is stored when the revoke arrives (the task is still PENDING then): the log
            # line is what says the coroutine itself was cancelled and reported Terminated.
            worker.wait_for_log(rf"Discarding terminated task aioproj\.long_nap\[{result.id}\]", 10)
            assert result.state == states.REVOKED
            assert "woke up" not in worker.output
    finally:
        client.close()


def test_cold_stop_marks_nothing_failed(tmp_path: Path, redis_url: str) -> None:
    _, client = setup_app(tmp_path, redis_url)
    marker = tmp_path / "napping"
    worker = start_worker(tmp_path, "-A", "aioproj", "worker", "-P", "asyncio", "-c", "10", "-l", "INFO")
    try:
        worker.wait_ready()
        result = client.send_task("aioproj.long_nap", (str(marker),))
        wait_for(marker.exists, 10, "the coroutine to start")
        started = time.monotonic()
        worker.send_signal(signal.SIGQUIT)
        assert worker.wait(10) == 0, worker.output
        print(f"\ncold stop with a coroutine running took {time.monotonic() - started:.2f} s")
        assert result.state not in (states.FAILURE, states.SUCCESS), worker.output
    finally:
        worker.stop()
        client.close()
