"""``-P prefork`` end to end: the real ``taskq worker`` subprocess with its billiard children.

Lost children (kill -9, ``os._exit``), hard and soft time limits (per task, per call, worker-wide,
and on ``-P threads``), revoke with terminate, child recycling by task count and memory,
autoscaling, which process each worker signal fires in, coroutine tasks, warm shutdown, bad
input, and short tasks passing a long one. On Redis, and on RabbitMQ where the broker's part
matters (requeue, redelivery, remote control, rejects, prefetch); results always in Redis.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import time
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from taskq import Celery, states

from .helpers import clean_env, running_worker, start_worker, wait_for, write_module

pytestmark = pytest.mark.e2e

APP = """
import asyncio
import os
import resource
import time

from taskq import Celery, Task, signals
from taskq.exceptions import SoftTimeLimitExceeded

app = Celery("pf", broker=BROKER, backend=BACKEND, task_default_queue=QUEUE)
app.conf.worker_lost_wait = float(os.environ.get("LOST_WAIT", 1))  # 1 s to report a lost child, not 10
if os.environ.get("WARM_TIMEOUT"):
    app.conf.worker_warm_shutdown_timeout = float(os.environ["WARM_TIMEOUT"])

SIGNAL_LOG = os.environ.get("SIGNAL_LOG")
_HOG = []


def _noter(name):
    def receiver(*args, **kwargs):
        with open(SIGNAL_LOG, "a") as fh:
            fh.write(f"{name} {os.getpid()}\\n")

    return receiver


if SIGNAL_LOG:
    for _name in (
        "worker_init", "worker_ready", "worker_process_init", "worker_process_shutdown",
        "task_prerun", "task_postrun", "worker_shutdown",
    ):
        getattr(signals, _name).connect(_noter(_name), weak=False)


def _mark(path):
    with open(path, "w") as fh:
        fh.write(f"{os.getpid()} {time.time()}\\n")


def _steps(seconds):
    for _ in range(int(seconds * 10)):
        time.sleep(0.1)


def _runs(directory, seconds):
    runs = len(os.listdir(directory))
    _mark(os.path.join(directory, f"run-{runs}"))
    if runs == 0:
        time.sleep(seconds)  # only the first run is long (and gets killed or stopped)
    return {"run": runs, "pid": os.getpid()}


class Noted(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo):
        with open(os.path.join(args[0], f"on_failure-{task_id}"), "w") as fh:
            fh.write(type(exc).__name__)


@app.task
def pid_of():
    return os.getpid()


@app.task
def nap(marker, seconds):
    _mark(marker)
    time.sleep(seconds)
    return os.getpid()


def _window(seconds):
    start = time.time()
    time.sleep(seconds)
    return [os.getpid(), start, time.time()]


window = app.task(name="pf.window")(_window)
window_late = app.task(acks_late=True, name="pf.window_late")(_window)


once = app.task(acks_late=True, reject_on_worker_lost=True, name="pf.once")(_runs)
late = app.task(acks_late=True, name="pf.late")(_runs)


@app.task
def exits(code):
    os._exit(code)


@app.task
def note_failure(request, exc, traceback, directory):  # Celery's errback: runs where the failure is seen
    with open(os.path.join(directory, f"errback-{request.id}"), "w") as fh:
        fh.write(f"{type(exc).__name__} {os.getpid()}")


@app.task(base=Noted, time_limit=1)
def hard_limited(directory):
    _mark(os.path.join(directory, "hard-started"))
    time.sleep(10)
    return "not killed"


@app.task(soft_time_limit=1)
def soft_catches():
    try:
        _steps(10)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "not interrupted"


@app.task(soft_time_limit=1)
def soft_uncaught():
    _steps(10)
    return "not interrupted"


@app.task
def plain(seconds):
    _steps(seconds)
    return "done"


@app.task
def ignores_soft(seconds):
    try:
        _steps(seconds)
    except SoftTimeLimitExceeded:
        _steps(seconds)
    return "survived"


@app.task(time_limit=5, soft_time_limit=4)
def own_limits(seconds):
    _steps(seconds)
    return "own limits"


@app.task(time_limit=1)
def hard_on_threads(seconds):
    _steps(seconds)
    return "ran on"


@app.task
def maxrss():
    return [os.getpid(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]


@app.task
def hog(mb):
    _HOG.append(b"\\x01" * (mb << 20))  # written, so resident; kept for the child's lifetime
    return [os.getpid(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]


@app.task
async def coro(x):
    await asyncio.sleep(0.05)
    return {"value": x * 2, "pid": os.getpid()}


@app.task
def strict(a, b):
    return a + b
"""


@dataclass
class Env:
    path: Path
    client: Celery
    queue: str
    broker: str

    def send(self, name: str, *args: Any, **options: Any) -> Any:
        return self.client.send_task(f"pf.{name}", args, **options)

    def worker_args(self, *extra: str) -> tuple[str, ...]:
        return ("-A", "pf", "worker", "-l", "INFO", *extra)


def make_env(tmp_path: Path, broker: str, backend: str) -> Iterator[Env]:
    queue = f"e2e-prefork-{uuid.uuid4().hex[:10]}"
    head = f"BROKER = {broker!r}\nBACKEND = {backend!r}\nQUEUE = {queue!r}\n"
    write_module(tmp_path, "pf", head + APP)
    client = Celery("client", broker=broker, backend=backend, task_default_queue=queue, set_as_current=False)
    try:
        yield Env(tmp_path, client, queue, broker)
    finally:
        client.close()


@pytest.fixture
def redis_env(tmp_path: Path, redis_url: str) -> Iterator[Env]:
    yield from make_env(tmp_path, redis_url, redis_url)


@pytest.fixture(params=["redis", "amqp"])
def env(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str) -> Iterator[Env]:
    """Redis, then RabbitMQ as the broker; the results in Redis either way."""
    broker = redis_url if request.param == "redis" else request.getfixturevalue("amqp_url")
    yield from make_env(tmp_path, broker, redis_url)


# -- helpers ------------------------------------------------------------------------------------
def children(pid: int) -> set[int]:
    """Live (not zombie) child processes of ``pid``, from /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # after "(comm)": state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def marker_pid(marker: Path) -> int:
    wait_for(
        lambda: marker.exists() and marker.read_text().endswith("\n"), 20, f"{marker.name} to be written"
    )
    return int(marker.read_text().split()[0])


def marker_time(marker: Path) -> float:
    return float(marker.read_text().split()[1])


def wait_state(result: Any, state: str, timeout: float = 15) -> float:
    """Wait for ``state``; the wall-clock time it was first seen."""
    wait_for(lambda: result.state == state, timeout, f"{result.id} to be {state} (is {result.state})")
    return time.time()


def error_name(result: Any) -> str:
    return type(result.result).__name__


def full_pool(worker: Any, size: int, without: Collection[int] = ()) -> set[int]:
    """Wait until the worker has ``size`` children, none of them in ``without``; their pids."""

    def check() -> set[int] | None:
        pids = children(worker.pid)
        return pids if len(pids) == size and not pids.intersection(without) else None

    return set(wait_for(check, 15, f"{size} pool children other than {sorted(without)}"))


# -- 1. lost children ---------------------------------------------------------------------------
def test_kill_9_of_a_child_fails_its_task_and_the_child_is_replaced(env: Env) -> None:
    marker, other = env.path / "victim", env.path / "bystander"
    with running_worker(env.path, *env.worker_args("-P", "prefork", "-c", "2")) as worker:
        pool = full_pool(worker, 2)
        victim = env.send("nap", str(marker), 30)
        bystander = env.send("nap", str(other), 2)
        pid = marker_pid(marker)
        assert pid in pool and pid != worker.pid
        marker_pid(other)
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        failed_at = wait_state(victim, states.FAILURE)
        print(f"\nprefork: kill -9 of a child -> FAILURE WorkerLostError after {failed_at - killed_at:.2f} s")
        assert error_name(victim) == "WorkerLostError", worker.output
        assert failed_at - killed_at < 5
        assert bystander.get(timeout=10) != pid  # the other child's task was not disturbed
        fresh = full_pool(worker, 2, without={pid})
        after = [env.send("pid_of") for _ in range(6)]
        pids = {r.get(timeout=10) for r in after}
        assert pids <= fresh and pid not in pids
        assert worker.alive()


def test_idle_children_killed_9_are_replaced_and_the_pool_runs_on(env: Env) -> None:
    """billiard's idle children wait for a job inside the job pipe's lock, one of them holding
    it at any time: killing that one with -9 left the lock held and the new children waiting
    on it forever (taskq's children hold it only to read a job)."""
    with running_worker(env.path, *env.worker_args("-P", "prefork", "-c", "2")) as worker:
        first = full_pool(worker, 2)
        assert env.send("pid_of").get(timeout=10) in first
        time.sleep(0.5)  # both children idle, waiting for the next job
        for pid in first:
            os.kill(pid, signal.SIGKILL)
        fresh = full_pool(worker, 2, without=first)
        pids = {env.send("pid_of").get(timeout=10) for _ in range(4)}
        assert pids <= fresh, worker.output
        assert worker.alive()


def test_exit_inside_a_task_is_a_lost_worker(redis_env: Env) -> None:
    env = redis_env
    with running_worker(env.path, *env.worker_args("-P", "prefork", "-c", "2")) as worker:
        full_pool(worker, 2)
        result = env.send("exits", 3)
        wait_state(result, states.FAILURE)
        assert error_name(result) == "WorkerLostError"
        assert "exitcode 3" in str(result.result), result.result
        assert env.send("pid_of").get(timeout=10) in full_pool(worker, 2)
        assert worker.alive()


def test_reject_on_worker_lost_requeues_instead_of_failing(env: Env) -> None:
    runs = env.path / "runs"
    runs.mkdir()
    with running_worker(env.path, *env.worker_args("-P", "prefork", "-c", "2")) as worker:
        full_pool(worker, 2)
        result = env.send("once", str(runs), 30)
        pid = marker_pid(runs / "run-0")
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        seen = set()

        def finished() -> bool:
            seen.add(result.state)
            return result.state in states.READY_STATES

        wait_for(finished, 20, "the requeued run to finish")
        print(
            f"\nprefork: kill -9 with reject_on_worker_lost -> run again, done after {time.time() - killed_at:.2f} s"
        )
        assert states.FAILURE not in seen, worker.output
        outcome = result.get(timeout=1)
        assert outcome["run"] == 1 and outcome["pid"] != pid
        assert sorted(p.name for p in runs.iterdir()) == ["run-0", "run-1"]
        assert "its message is returned to the queue" in worker.output
        assert f"Task pf.once[{result.id}] raised" not in worker.output


# -- 2./3. time limits --------------------------------------------------------------------------
def test_task_and_per_call_time_limits_on_prefork(redis_env: Env) -> None:
    """A hard limit kills the child (replaced; on_failure and link_error run); a soft one raises in it."""
    env, directory = redis_env, redis_env.path
    with running_worker(env.path, *env.worker_args("-P", "prefork", "-c", "4")) as worker:
        full_pool(worker, 4)
        errback = env.client.signature("pf.note_failure", args=(str(directory),))
        hard = env.send("hard_limited", str(directory), link_error=errback)
        per_call = env.send("plain", 10, time_limit=1)  # no limit of its own: the header's
        caught = env.send("soft_catches")
        uncaught = env.send("soft_uncaught")

        pid = marker_pid(directory / "hard-started")
        failed_at = wait_state(hard, states.FAILURE)
        delay = failed_at - marker_time(directory / "hard-started")
        print(f"\nprefork: time_limit=1 -> FAILURE TimeLimitExceeded {delay:.2f} s after the task started")
        assert error_name(hard) == "TimeLimitExceeded", worker.output
        assert 1.0 <= delay < 4.0
        assert re.search(
            rf"Hard time limit \(1(\.0)?s\) exceeded for pf\.hard_limited\[{hard.id}\]", worker.output
        )
        wait_for(lambda: (directory / f"on_failure-{hard.id}").exists(), 10, "on_failure to run")
        assert (directory / f"on_failure-{hard.id}").read_text() == "TimeLimitExceeded"
        errback_file = directory / f"errback-{hard.id}"
        wait_for(lambda: errback_file.exists() and errback_file.read_text(), 10, "the link_error errback")
        assert errback_file.read_text() == f"TimeLimitExceeded {worker.pid}"  # the child is dead

        wait_state(per_call, states.FAILURE)
        assert error_name(per_call) == "TimeLimitExceeded"
        assert caught.get(timeout=10) == "cleaned up"
        assert caught.state == states.SUCCESS
        wait_state(uncaught, states.FAILURE)
        assert error_name(uncaught) == "SoftTimeLimitExceeded"
        assert re.search(
            rf"Soft time limit \(1(\.0)?s\) exceeded for pf\.soft_uncaught\[{uncaught.id}\]", worker.output
        )

        wait_for(functools.partial(gone, pid), 10, "the hard limit to kill the child")
        assert pid not in full_pool(worker, 4, without={pid})
        assert env.send("pid_of").get(timeout=10) != pid


def test_worker_wide_time_limits_yield_to_the_tasks_own(redis_env: Env) -> None:
    env = redis_env
    argv = env.worker_args("-P", "prefork", "-c", "4", "--time-limit", "2", "--soft-time-limit", "1")
    with running_worker(env.path, *argv) as worker:
        full_pool(worker, 4)
        soft = env.send("plain", 10)  # the worker's soft limit, 1 s
        hard = env.send("ignores_soft", 10)  # survives the soft limit; the worker's hard one, 2 s
        own = env.send("own_limits", 3)  # its own limits (5 s, 4 s) beat the worker's
        per_call = env.send("plain", 3, time_limit=5, soft_time_limit=4)  # so do the call's
        started = time.time()
        wait_state(soft, states.FAILURE)
        assert error_name(soft) == "SoftTimeLimitExceeded"
        hard_at = wait_state(hard, states.FAILURE)
        print(f"\nprefork: --time-limit 2 -> TimeLimitExceeded {hard_at - started:.2f} s after sending")
        assert error_name(hard) == "TimeLimitExceeded", worker.output
        assert own.get(timeout=10) == "own limits"
        assert per_call.get(timeout=10) == "done"


def test_soft_limit_on_threads_and_an_unenforceable_hard_limit(redis_env: Env) -> None:
    env = redis_env
    with running_worker(env.path, *env.worker_args("-P", "threads", "-c", "3")) as worker:
        caught = env.send("soft_catches")
        uncaught = env.send("soft_uncaught")
        hard = env.send("hard_on_threads", 2)
        assert caught.get(timeout=10) == "cleaned up"
        wait_state(uncaught, states.FAILURE)
        assert error_name(uncaught) == "SoftTimeLimitExceeded"
        assert hard.get(timeout=10) == "ran on"  # a thread cannot be killed: it runs to the end
        assert re.search(
            rf"Hard time limit \(1(\.0)?s\) exceeded for pf\.hard_on_threads\[{hard.id}\]: "
            r"a thread cannot be killed",
            worker.output,
        ), worker.output


# -- 4. revoke with terminate -------------------------------------------------------------------
def test_revoke_terminate_kills_the_running_child(env: Env) -> None:
    with running_worker(env.path, *env.worker_args("-P", "prefork", "-c", "2")) as worker:
        full_pool(worker, 2)
        for n, how in enumerate(("SIGTERM", "SIGKILL")):
            marker = env.path / f"running-{n}"
            result = env.send("nap", str(marker), 30)
            pid = marker_pid(marker)
            sent = time.time()
            env.client.control.revoke(result.id, terminate=True, signal=how)
            line = f"Discarding terminated task pf.nap[{result.id}]"
            worker.wait_for_log(re.escape(line), timeout=10)
            wait_for(functools.partial(gone, pid), 10, f"child {pid} to die of {how}")
            print(
                f"\nprefork: revoke(terminate=True, signal={how}) -> child gone after {time.time() - sent:.2f} s"
            )
            assert result.state == states.REVOKED
            assert f"Terminating <Request pf.nap[{result.id}]> ({how})" in worker.output
            fresh = full_pool(worker, 2, without={pid})
            assert env.send("pid_of").get(timeout=10) in fresh
        assert worker.alive()
        assert "succeeded" not in "".join(
            line for line in worker.output.splitlines() if "pf.nap[" in line
        )  # neither run finished


# -- 5. recycling children ----------------------------------------------------------------------
def test_max_tasks_per_child_recycles_every_two_tasks(redis_env: Env) -> None:
    env = redis_env
    argv = env.worker_args("-P", "prefork", "-c", "1", "--max-tasks-per-child", "2")
    with running_worker(env.path, *argv):
        pids, started = [], time.monotonic()
        for _ in range(6):
            pids.append(env.send("pid_of").get(timeout=10))
        print(
            f"\nprefork --max-tasks-per-child 2: 6 tasks one after another in {time.monotonic() - started:.2f} s"
        )
    first, second, third = pids[0], pids[2], pids[4]
    assert pids == [first, first, second, second, third, third], pids
    assert len({first, second, third}) == 3, pids


def test_max_memory_per_child_recycles_after_the_task_that_grew(redis_env: Env) -> None:
    env = redis_env
    limit_kib = 75_000  # a fresh child is about 37 MB here (its ru_maxrss includes what fork shared)
    argv = env.worker_args("-P", "prefork", "-c", "1", "--max-memory-per-child", str(limit_kib))
    with running_worker(env.path, *argv):
        pid, baseline = env.send("maxrss").get(timeout=10)
        assert baseline < limit_kib, f"a fresh child already uses {baseline} KiB: raise the test's limit"
        assert env.send("pid_of").get(timeout=10) == pid  # below the limit: kept
        hog_pid, grown = env.send("hog", 80).get(timeout=10)
        print(
            f"\nprefork --max-memory-per-child {limit_kib}: child maxrss {baseline} KiB, {grown} KiB after the hog"
        )
        assert hog_pid == pid and grown > limit_kib  # the task that grew it completes in it
        after = env.send("pid_of").get(timeout=10)
        assert after != pid  # then the child is replaced
        assert env.send("pid_of").get(timeout=10) == after


# -- 6. autoscale -------------------------------------------------------------------------------
def test_autoscale_grows_under_load_and_shrinks_when_idle(env: Env) -> None:
    """acks_late tasks: they stay unacked while they run, so a prefetch window sized for the
    minimum pool (not the maximum, as Celery sizes it) would never let demand show."""
    argv = env.worker_args("-P", "prefork", "--autoscale", "3,1")
    with running_worker(env.path, *argv, env=clean_env(AUTOSCALE_KEEPALIVE="1")) as worker:
        assert "concurrency: {min=1, max=3} (prefork)" in worker.output
        full_pool(worker, 1)
        results = [env.send("window_late", 2) for _ in range(6)]
        windows = [r.get(timeout=30) for r in results]
        worker.wait_for_log(r"Autoscaler: grew the pool from 1 to [23]", timeout=1)
        overlapping = {
            (a[0], b[0])
            for a in windows
            for b in windows
            if a[0] != b[0] and a[1] < b[2] and b[1] < a[2]  # two pids, time windows overlap
        }
        pids = {w[0] for w in windows}
        span = max(w[2] for w in windows) - min(w[1] for w in windows)
        print(f"\nprefork --autoscale 3,1: 6 x 2 s acks_late tasks on {len(pids)} children in {span:.2f} s")
        assert overlapping, windows
        assert len(pids) >= 2 and worker.pid not in pids
        worker.wait_for_log(r"Autoscaler: shrank the pool from [23] to 1", timeout=10)
        full_pool(worker, 1)
        assert env.send("pid_of").get(timeout=10) in children(worker.pid)


# -- 7. signals ---------------------------------------------------------------------------------
def test_worker_signals_fire_in_the_right_process(redis_env: Env) -> None:
    env, log = redis_env, redis_env.path / "signals.log"
    worker = start_worker(
        env.path, *env.worker_args("-P", "prefork", "-c", "2"), env=clean_env(SIGNAL_LOG=str(log))
    )
    try:
        worker.wait_ready()
        pool = full_pool(worker, 2)
        task_pids = {env.send("pid_of").get(timeout=10) for _ in range(6)}
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0, worker.output
    finally:
        worker.stop()
    fired: dict[str, list[int]] = {}
    for line in log.read_text().splitlines():
        name, pid = line.split()
        fired.setdefault(name, []).append(int(pid))
    main = worker.pid
    assert fired["worker_init"] == [main], fired
    assert fired["worker_ready"] == [main], fired
    assert fired["worker_shutdown"] == [main], fired
    assert sorted(fired["worker_process_init"]) == sorted(pool), fired
    assert task_pids <= pool
    assert set(fired["task_prerun"]) == set(fired["task_postrun"]) == task_pids, fired
    assert len(fired["task_prerun"]) == len(fired["task_postrun"]) == 6, fired
    assert sorted(fired["worker_process_shutdown"]) == sorted(pool), fired


# -- 8./10. coroutine tasks and bad input -------------------------------------------------------
def test_coroutine_task_and_bad_input_on_prefork(env: Env) -> None:
    with running_worker(env.path, *env.worker_args("-P", "prefork", "-c", "2")) as worker:
        pool = full_pool(worker, 2)
        unknown = env.send("no_such_task", 1)
        mismatch = env.send("strict", 1)  # one argument short
        coro = env.send("coro", 21)
        good = env.send("strict", 1, 2)
        outcome = coro.get(timeout=10)
        assert outcome["value"] == 42 and outcome["pid"] in pool  # asyncio.run in the child
        assert good.get(timeout=10) == 3
        wait_state(mismatch, states.FAILURE)
        assert error_name(mismatch) == "TypeError"
        wait_state(unknown, states.FAILURE)
        assert error_name(unknown) == "NotRegistered"
        assert "Received unregistered task of type 'pf.no_such_task'" in worker.output
        assert worker.alive()
        assert full_pool(worker, 2) == pool  # nobody died
        assert env.send("strict", 2, 3).get(timeout=10) == 5


# -- fairness -----------------------------------------------------------------------------------
def test_short_tasks_pass_a_long_one(env: Env) -> None:
    marker = env.path / "long"
    with running_worker(env.path, *env.worker_args("-P", "prefork", "-c", "2")) as worker:
        full_pool(worker, 2)
        long = env.send("nap", str(marker), 4)
        long_pid = marker_pid(marker)
        started = time.monotonic()
        short = [env.send("pid_of") for _ in range(10)]
        pids = {r.get(timeout=10) for r in short}
        elapsed = time.monotonic() - started
        print(f"\nprefork -c 2: 10 short tasks done in {elapsed:.2f} s beside a 4 s one")
        assert long.state == states.PENDING, worker.output  # still running
        assert long_pid not in pids and len(pids) == 1
        assert elapsed < 2.5
        assert long.get(timeout=10) == long_pid


# -- 9. warm shutdown ---------------------------------------------------------------------------
def test_warm_shutdown_on_prefork(env: Env) -> None:
    marker, runs = env.path / "long", env.path / "runs"
    runs.mkdir()
    # Multiplier 3: two messages reserved beyond the busy slot, so there is something to give back.
    argv = env.worker_args("-P", "prefork", "-c", "1", "--prefetch-multiplier", "3")
    first = start_worker(env.path, *argv)
    try:
        first.wait_ready()
        long = env.send("nap", str(marker), 3)
        quick = [env.send("strict", i, i) for i in range(4)]
        marker_pid(marker)
        first.wait_for_log(r"(Task pf\.strict\[[^\]]+\] received[\s\S]*){2}", timeout=5)
        first.send_signal(signal.SIGTERM)
        assert first.wait(15) == 0, first.output
    finally:
        first.stop()
    assert long.get(timeout=1) == int(marker.read_text().split()[0])  # finished, never failed
    assert [r.state for r in quick] == [states.PENDING] * 4, first.output
    assert re.search(r"Returned [23] unstarted task\(s\) to the queue", first.output), first.output

    # A second worker runs what the first gave back; it stops 1 s into a long acks_late task. With
    # the default worker_lost_wait (10 s): billiard alone would wait that long for the stopped job.
    second = start_worker(env.path, *argv, env=clean_env(WARM_TIMEOUT="1", LOST_WAIT="10"))
    try:
        second.wait_ready()
        assert [r.get(timeout=15) for r in quick] == [0, 2, 4, 6]
        late = env.send("late", str(runs), 10)
        marker_pid(runs / "run-0")
        stopping = time.monotonic()
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0, second.output
        took = time.monotonic() - stopping
    finally:
        second.stop()
    print(f"\nprefork: worker_warm_shutdown_timeout=1 with a 10 s task running: stopped in {took:.2f} s")
    assert took < 4.5, second.output  # 1 s, then the pool stops at once (it used to wait ~7 s more)
    assert "Warm shutdown timeout (1.0s) passed" in second.output
    assert late.state == states.PENDING, second.output  # not FAILURE: the shutdown stopped it

    with running_worker(env.path, *argv):
        assert late.get(timeout=20) == {"run": 1, "pid": late.get(timeout=20)["pid"]}
    assert sorted(p.name for p in runs.iterdir()) == ["run-0", "run-1"]


def test_cold_stop_on_prefork_is_prompt_and_records_nothing(redis_env: Env) -> None:
    env, marker = redis_env, redis_env.path / "long"
    argv = env.worker_args("-P", "prefork", "-c", "2")
    worker = start_worker(env.path, *argv, env=clean_env(LOST_WAIT="10"))  # the default wait
    try:
        worker.wait_ready()
        result = env.send("nap", str(marker), 30)
        pid = marker_pid(marker)
        stopping = time.monotonic()
        worker.send_signal(signal.SIGQUIT)
        assert worker.wait(15) == 0, worker.output
        took = time.monotonic() - stopping
    finally:
        worker.stop()
    print(f"\nprefork: SIGQUIT with a 30 s task running: stopped in {took:.2f} s")
    assert took < 3, worker.output
    assert gone(pid)
    assert result.state == states.PENDING, worker.output  # abandoned, not failed
    assert "cold shutdown" in worker.output
