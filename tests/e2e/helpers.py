"""Run ``taskq ... worker`` as a real subprocess, and always clean it up.

Every wait is bounded; a worker that does not stop on SIGTERM within its bound is killed, and
a failing wait says what the worker logged so far.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0  # seconds a worker may take to log "ready"
STOP_TIMEOUT = 15.0  # seconds a worker may take to exit after SIGTERM
_ENV_DROP = (
    "TASKQ_APP",
    "TASKQ_BROKER_URL",
    "CELERY_BROKER_URL",
    "TASKQ_RESULT_BACKEND",
    "CELERY_RESULT_BACKEND",
    "TASKQ_BROKER_READ_URL",
    "CELERY_BROKER_READ_URL",
    "TASKQ_BROKER_WRITE_URL",
    "CELERY_BROKER_WRITE_URL",
)
_counter = itertools.count(1)


def taskq_command() -> list[str]:
    """The installed ``taskq`` script next to this interpreter, else ``python -m taskq.cli``."""
    script = shutil.which("taskq", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "taskq.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def write_module(directory: Path, name: str, source: str) -> Path:
    """Write ``name`` (``pkg.mod`` makes the package) as Python source under ``directory``."""
    parts = name.split(".")
    path = directory.joinpath(*parts[:-1])
    path.mkdir(parents=True, exist_ok=True)
    for depth in range(1, len(parts)):
        init = directory.joinpath(*parts[:depth], "__init__.py")
        if not init.exists():
            init.write_text("")
    target = path / f"{parts[-1]}.py"
    target.write_text(textwrap.dedent(source))
    return target


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def complete_lines(path: Path) -> list[str]:
    """The lines of ``path`` a writer has finished: a task may be half-way through appending
    one while the test reads, and the part already written must not be taken for a line."""
    if not path.exists():
        return []
    text = path.read_text()
    return [line for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


class MakeDirectoryWhenUnpickled:
    """A pickle that creates a directory as it is loaded: proof that nothing unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


class WorkerProcess:
    """One ``taskq`` subprocess with its combined output in a log file."""

    def __init__(self, args: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.cwd = cwd
        self.log_path = cwd / f"worker-{next(_counter)}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*taskq_command(), *self.args],
            cwd=cwd,
            env=env or clean_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_log(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """Wait until the log matches ``pattern`` (a regex); fail early if the worker exits."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.output)
            if found:
                return found
            if not self.alive():
                raise AssertionError(
                    f"worker exited with {self.proc.returncode} before logging {pattern!r}:\n{self.output}"
                )
            if time.monotonic() >= deadline:
                raise AssertionError(f"worker did not log {pattern!r} within {timeout} s:\n{self.output}")
            time.sleep(0.05)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> re.Match[str]:
        return self.wait_for_log(r"(\S+@\S+) ready\.", timeout)

    def send_signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        return self.proc.wait(timeout)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """Ask it to stop, wait, and kill it (and anything it started) if it does not."""
        try:
            if self.alive():
                self.send_signal(signum)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.kill()
            return self.proc.returncode
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass


def start_worker(cwd: Path, *args: str, env: dict[str, str] | None = None) -> WorkerProcess:
    return WorkerProcess(args, cwd, env)


@contextmanager
def running_worker(
    cwd: Path, *args: str, env: dict[str, str] | None = None, ready: bool = True
) -> Iterator[WorkerProcess]:
    """Start ``taskq <args>``, wait for "ready", and stop it whatever happens."""
    worker = WorkerProcess(args, cwd, env)
    try:
        if ready:
            worker.wait_ready()
        yield worker
    except BaseException:
        worker.stop()
        print(f"--- output of taskq {' '.join(args)} ({worker.log_path}) ---\n{worker.output}")
        raise
    finally:
        worker.stop()


def run_taskq(cwd: Path, *args: str, timeout: float = 60, env: dict[str, str] | None = None) -> Any:
    """Run a short ``taskq`` command to completion; its CompletedProcess."""
    return subprocess.run(
        [*taskq_command(), *args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_python(cwd: Path, source: str, timeout: float = 60) -> str:
    """Run client code in its own process in ``cwd`` (so the embedded default finds its file)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        cwd=cwd,
        env=clean_env(PYTHONPATH=os.pathsep.join((str(cwd), str(ROOT)))),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"client failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.strip()
