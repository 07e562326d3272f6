"""Starting and stopping a peer's worker, and waiting for its tasks through the counter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from benchmarks import contract, counter

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Env:
    """What a peer subprocess needs: interpreter, URLs, queue."""

    python: str
    broker_url: str
    results_url: str
    queue: str
    counter_url: str
    variant: str = "default"

    def environ(self, target: int = 0, green: bool = False) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                contract.BROKER: self.broker_url,
                contract.RESULTS: self.results_url,
                contract.QUEUE: self.queue,
                contract.COUNTER: self.counter_url,
                contract.TARGET: str(target),
                contract.VARIANT: self.variant,
                contract.GREEN: "1" if green else "",
                "PYTHONPATH": str(REPO),
            }
        )
        return env


def drive(env: Env, module: str, *args: str, timeout: float = 600) -> dict:
    """Run the driver in the peer's interpreter; its JSON answer, or a clear error."""
    proc = subprocess.run(
        [env.python, "-m", "benchmarks.driver", module, *args],
        env=env.environ(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"driver {module} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def start(argv: list[str], env: Env, target: int = 0, green: bool = False) -> subprocess.Popen:
    """The worker in a session of its own, so stopping it reaches every process it forked."""
    log = open(os.path.join(os.environ.get("BENCH_LOGDIR", "/tmp"), "bench-worker.log"), "ab")  # noqa: SIM115
    return subprocess.Popen(
        argv,
        env=env.environ(target, green),
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen) -> None:
    """SIGKILL to the worker's whole session: its figures are taken by then, and a warm stop
    (3 s for an idle taskq worker, 1 s for Celery) would only lengthen the run, unmeasured."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def wait_first(counter_url: str, proc: subprocess.Popen, timeout: float) -> int:
    """Block until the worker ran its first task (start-up is over); how many have run by then."""
    client = redis.Redis.from_url(counter_url)
    deadline = time.monotonic() + timeout
    try:
        while client.get(counter.FIRST) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                return 0  # wait_count says what went wrong
            time.sleep(0.005)
        return int(client.get(counter.COUNT) or 0)
    finally:
        client.close()


def wait_count(counter_url: str, target: int, proc: subprocess.Popen, timeout: float) -> tuple[float, float]:
    """Block until ``target`` executions are counted; (first, last) wall-clock stamps."""
    client = redis.Redis.from_url(counter_url)
    deadline = time.monotonic() + timeout
    try:
        while client.get(counter.LAST) is None:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {proc.returncode} before finishing (see bench-worker.log)"
                )
            if time.monotonic() > deadline:
                done = int(client.get(counter.COUNT) or 0)
                raise RuntimeError(f"only {done} of {target} tasks ran in {timeout:.0f} s")
            time.sleep(0.02)
        return float(client.get(counter.FIRST) or 0), float(client.get(counter.LAST) or 0)
    finally:
        client.close()


def bindir(python: str) -> str:
    return os.path.dirname(python) if os.path.isabs(python) else os.path.dirname(sys.executable)
