"""-P gevent and -P eventlet: the worker monkey-patches itself and runs I/O-bound tasks side by side."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from taskq import Celery
from taskq._patch import requested_green_pool
from taskq.exceptions import TimeLimitExceeded

from .helpers import running_worker, write_module

pytestmark = pytest.mark.e2e

APP = """
import time

from taskq import Celery
from taskq.exceptions import SoftTimeLimitExceeded

app = Celery("greenapp", broker={url!r}, backend={url!r}, task_default_queue={queue!r})


@app.task
def nap(i):
    time.sleep(0.2)  # patched: yields to the other green threads
    return i


@app.task(soft_time_limit=0.5)
def soft():
    try:
        time.sleep(5)
    except SoftTimeLimitExceeded:
        return "cleaned up"


@app.task(time_limit=0.5)
def hard():
    time.sleep(5)
"""


@pytest.mark.parametrize("argv", [
    ["taskq", "-A", "p", "worker", "-P", "gevent"], ["/x/taskq", "worker", "--pool=eventlet"],
    ["-m", "worker", "-Pgevent"],
])  # fmt: skip
def test_green_pool_found_on_the_command_line(argv: list[str]) -> None:
    assert requested_green_pool(argv) in ("gevent", "eventlet")


def test_no_patch_outside_the_taskq_command() -> None:
    assert requested_green_pool(["python", "-P", "gevent"]) is None
    assert requested_green_pool(["taskq", "worker", "-P", "threads"]) is None


@pytest.mark.parametrize("library", ["gevent", "eventlet"])
def test_green_pool_runs_io_bound_tasks_concurrently_with_limits(
    library: str, tmp_path: Path, redis_url: str
) -> None:
    pytest.importorskip(library, reason=f"{library} is an optional extra: pip install 'taskq[{library}]'")
    queue = f"green-{uuid.uuid4().hex[:8]}"
    write_module(tmp_path, "greenapp", APP.format(url=redis_url, queue=queue))
    client = Celery("c", broker=redis_url, backend=redis_url, task_default_queue=queue)
    import time

    with running_worker(
        tmp_path, "-A", "greenapp", "worker", "-P", library, "-c", "100", "-l", "INFO"
    ) as worker:
        started = time.monotonic()
        results = [client.send_task("greenapp.nap", (i,)) for i in range(100)]
        assert [r.get(timeout=20) for r in results] == list(range(100))
        took = time.monotonic() - started
        assert client.send_task("greenapp.soft").get(timeout=10) == "cleaned up"
        with pytest.raises(TimeLimitExceeded):
            client.send_task("greenapp.hard").get(timeout=10)
        assert f"({library})" in worker.output
    print(f"-P {library} -c 100: 100 tasks sleeping 0.2 s took {took:.2f} s")
    assert took < 5.0, "the tasks ran one after another: the pool did not patch blocking calls"
