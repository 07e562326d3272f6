"""Shared pieces of the Celery 5.7 <-> taskq interop matrix: worker processes, waits, errors.

Deliberately stdlib-only at import time: the workers' app modules import :class:`MatrixError`
from here (``interop.sides``), so a ``taskq worker`` must be able to load this module without
pulling in pytest or Celery, and both sides then name the exception by the same module path.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0  # seconds a worker may take to log "ready" (two cold starts share 2 CPUs)
STOP_TIMEOUT = 15.0  # seconds a worker may take to exit after SIGTERM before it is killed
READY = re.compile(r"(\S+@\S+) ready\.")


class MatrixError(Exception):
    """A custom exception class importable on both sides as ``interop.sides.MatrixError``.

    Celery (and taskq) rebuild a stored exception only from a module the reader has already
    imported; a class defined here exists in the test process and in every worker alike.
    """


def unique(prefix: str) -> str:
    """A name no other run (or earlier test in this run) uses: queues, nodes, Redis keys."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def env_for(cwd: Path) -> dict[str, str]:
    """A clean environment: no inherited CELERY_/TASKQ_ settings; app dir, repo and tests importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "TASKQ_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(cwd), str(ROOT), str(TESTS)])
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Proc:
    """A worker subprocess with its combined output in a log file, stopped whatever happens."""

    def __init__(self, argv: Sequence[str], cwd: Path, name: str) -> None:
        self.argv = list(argv)
        self.name = name
        self.log_path = cwd / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=cwd,
                env=env_for(cwd),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a kill reaches the pool's children too
            )
        self.node: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self, tail: int = 8000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return "<no log>"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> str:
        """Block until the worker logs ``<node> ready.``; its node name."""
        deadline = time.monotonic() + timeout
        while True:
            found = READY.search(self.log(tail=10**6))
            if found:
                self.node = found.group(1)
                return self.node
            self.check_alive()
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.name} not ready after {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> int | None:
        """SIGTERM (a warm shutdown on both sides), then SIGKILL to the whole group if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass


@contextmanager
def workers(specs: Sequence[tuple[str, Sequence[str]]], cwd: Path) -> Iterator[list[Proc]]:
    """Start every ``(name, argv)`` at once, wait until all are ready, stop all on the way out.

    Starting them together halves the cold-start cost; a failure prints every worker's log.
    """
    with ExitStack() as stack:
        procs: list[Proc] = []
        for name, argv in specs:
            proc = Proc(argv, cwd, name)
            stack.callback(proc.stop)
            procs.append(proc)
        try:
            for proc in procs:
                proc.wait_ready()
            yield procs
        except BaseException:
            for proc in procs:
                print(f"--- {proc.name} ({' '.join(proc.argv)}) ---\n{proc.log()}")
            raise


def taskq_worker_argv(module: str, node: str, queues: Sequence[str], *options: str) -> list[str]:
    """``taskq -A <module> worker`` on ``queues`` (``options`` choose the pool, concurrency...)."""
    return [
        str(BIN / "taskq"), "-A", module, "worker", "-l", "info", "-n", node,
        "-Q", ",".join(queues), *options,
    ]  # fmt: skip


def celery_worker_argv(module: str, node: str, queues: Sequence[str], *options: str) -> list[str]:
    """``celery -A <module> worker`` on ``queues``, without the cluster chatter a test needs not."""
    return [
        str(BIN / "celery"), "-A", module, "worker", "-l", "info", "-n", node,
        "-Q", ",".join(queues), "--without-mingle", "--without-gossip", "--without-heartbeat",
        *options,
    ]  # fmt: skip


def wait_until(
    fetch: Callable[[], Any], what: str, procs: Sequence[Proc], timeout: float = 30.0, interval: float = 0.05
) -> Any:
    """``fetch()`` until it returns something truthy; fail naming ``what`` (with logs) at the bound."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if value:
            return value
        for proc in procs:
            proc.check_alive()
        if time.monotonic() >= deadline:
            logs = "\n".join(f"--- {p.name} ---\n{p.log()}" for p in procs)
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")
        time.sleep(interval)
