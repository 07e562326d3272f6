"""Running the client commands (``taskq inspect``, ``call``, ``events``...) against a real worker.

``cluster`` is one ``taskq worker -P threads -E`` per broker (Redis, RabbitMQ) for a whole test
module, with a ``Cli`` that runs a command with the same app and URLs; results go to Redis on
both brokers so ``taskq result`` in another process can read them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .helpers import WorkerProcess, clean_env, running_worker, taskq_command, wait_for, write_module

APP = """
import time

from taskq import Celery

app = Celery("proj")


@app.task
def add(x, y):
    return x + y


@app.task
def boom():
    raise ZeroDivisionError("nope")


@app.task
def sleepy(seconds):
    time.sleep(seconds)
    return seconds


@app.task
def limited():
    return "limited"
"""

COMMAND_TIMEOUT = 60.0  # a client command that has not exited by then has hung
UNREACHABLE_PORT = 1  # nothing listens there: connections are refused at once


@dataclass
class Cli:
    """``taskq -A proj -b <broker> --result-backend <backend> ...`` run in ``cwd``."""

    cwd: Path
    broker: str
    backend: str

    def base(self) -> list[str]:
        return ["-A", "proj", "-b", self.broker, "--result-backend", self.backend]

    def __call__(
        self,
        *args: str,
        input: str | None = None,  # noqa: A002 - subprocess.run's name
        timeout: float = COMMAND_TIMEOUT,
        base: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*taskq_command(), *(self.base() if base else []), *args],
            cwd=self.cwd,
            env=clean_env(),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str, **kwargs: Any) -> str:
        """Run, insist on exit 0, return stdout."""
        proc = self(*args, **kwargs)
        assert proc.returncode == 0, (
            f"taskq {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
        return proc.stdout

    def popen(self, *args: str) -> LongCommand:
        return LongCommand(self.cwd, [*self.base(), *args])


class LongCommand:
    """A command that runs until stopped (``taskq events``), output in a file, always cleaned up."""

    def __init__(self, cwd: Path, args: Sequence[str]) -> None:
        self.path = cwd / f"command-{time.monotonic_ns()}.out"
        self._out = self.path.open("wb")
        self.proc = subprocess.Popen(
            [*taskq_command(), *args],
            cwd=cwd,
            env=clean_env(),
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        return self.path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None and text not in self.output:
                raise AssertionError(
                    f"exited {self.proc.returncode} before printing {text!r}:\n{self.output}"
                )
            return text in self.output

        try:
            wait_for(seen, timeout, f"{text!r} in the output")
        except AssertionError:
            raise AssertionError(f"no {text!r} within {timeout} s:\n{self.output}") from None

    def interrupt(self, timeout: float = 15.0) -> int:
        """Ctrl-C, as a user stops it; killed if it does not exit within ``timeout``."""
        try:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGINT)
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(15)
        self._out.close()

    def __enter__(self) -> LongCommand:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Cluster:
    cli: Cli
    node: str
    worker: WorkerProcess
    kind: str


def broker_urls(request: pytest.FixtureRequest, kind: str) -> tuple[str, str]:
    """(broker, result backend) for ``kind``; results on Redis for both."""
    redis_url: str = request.getfixturevalue("redis_url")
    if kind == "redis":
        return redis_url, redis_url
    return request.getfixturevalue("amqp_url"), redis_url


@pytest.fixture(scope="module", params=["redis", "amqp"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running ``-E`` worker on each broker in turn, named ``cli-<broker>@host``."""
    kind = request.param
    broker, backend = broker_urls(request, kind)
    cwd = tmp_path_factory.mktemp(f"cli-{kind}")
    write_module(cwd, "proj", APP)
    cli = Cli(cwd, broker, backend)
    args = [*cli.base(), "worker", "-P", "threads", "-c", "2", "-E", "-n", f"cli-{kind}@%h", "-l", "info"]
    with running_worker(cwd, *args) as worker:
        node = worker.wait_ready().group(1)
        yield Cluster(cli, node, worker, kind)


@pytest.fixture(params=["redis", "amqp"])
def bare(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    """The app and a reachable broker, and no worker."""
    broker, backend = broker_urls(request, request.param)
    write_module(tmp_path, "proj", APP)
    return Cli(tmp_path, broker, backend)


def unreachable(url: str) -> str:
    """``url`` with a password, pointed at a port nothing listens on."""
    if url.startswith("redis"):
        return f"redis://:s3cret-pw@127.0.0.1:{UNREACHABLE_PORT}/0"
    return f"amqp://guest:s3cret-pw@127.0.0.1:{UNREACHABLE_PORT}//"
