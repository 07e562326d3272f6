"""Remote control across the two implementations, on Redis and on RabbitMQ.

- Celery 5.7's own command line, ``celery -A celeryside inspect ping|active|registered|stats
  --json``, asks a running ``taskq worker`` and gets answers it can print.
- A ``celery worker`` answers taskq's ``app.control.inspect().ping()/registered()/stats()`` and
  ``app.control.ping()``.

Both apps come from one module text, only the ``Celery`` import differs; every worker is a
subprocess, stopped (and killed if it must be) whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WAIT = 30.0  # seconds a worker may take to start, or a reply to come

pytestmark = pytest.mark.e2e

APP = """\
import os
import time

from {package} import Celery

app = Celery("ctlinterop", broker={broker!r}, backend={backend!r})
app.conf.task_default_queue = {queue!r}
app.conf.broker_connection_retry_on_startup = True


@app.task(name="ctl.add")
def add(x, y):
    return x + y


@app.task(name="ctl.wait_for_file")
def wait_for_file(path, timeout=30):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.path.exists(path)
"""


@dataclass
class Side:
    """A directory holding ``celeryside.py`` and ``taskqside.py``: one app, one fresh queue."""

    path: Path
    broker: str
    backend: str
    queue: str

    def client(self) -> Any:
        """A taskq client of the same app (its tasks need not be registered to be sent)."""
        from taskq import Celery

        app = Celery("ctlinterop", broker=self.broker, backend=self.backend, set_as_current=False)
        app.conf.task_default_queue = self.queue
        return app


@pytest.fixture(
    params=[pytest.param("redis", marks=pytest.mark.redis), pytest.param("amqp", marks=pytest.mark.amqp)]
)
def side(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str) -> Side:
    broker = redis_url if request.param == "redis" else request.getfixturevalue("amqp_url")
    found = Side(tmp_path, broker, redis_url, f"ctl-interop-{uuid.uuid4().hex[:8]}")
    for module, package in (("celeryside", "celery"), ("taskqside", "taskq")):
        text = APP.format(package=package, broker=broker, backend=redis_url, queue=found.queue)
        (tmp_path / f"{module}.py").write_text(text)
    return found


def env_for(cwd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "TASKQ_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(cwd), str(ROOT)]), PYTHONUNBUFFERED="1")
    return env


@contextmanager
def process(argv: list[str], cwd: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run a worker; SIGTERM, then SIGKILL, on the way out; its log printed if the test fails."""
    log_path = cwd / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=cwd, env=env_for(cwd), stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    except BaseException:
        print(f"--- {name} log ---\n{log_path.read_text(errors='replace')[-6000:]}")
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def wait_for(
    fetch: Callable[[], Any], what: str, proc: subprocess.Popen[bytes], timeout: float = WAIT
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if value:
            return value
        assert proc.poll() is None, f"the worker exited with {proc.returncode} while waiting for {what}"
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def celery_inspect(cwd: Path, command: str, node: str, *args: str) -> Any:
    """``celery -A celeryside inspect <command> --json -d <node>``, its JSON parsed (None: no reply)."""
    argv = [str(BIN / "celery"), "-A", "celeryside", "inspect", command, *args, "--json", "-t", "5", "-d", node]  # fmt: skip
    done = subprocess.run(argv, cwd=cwd, env=env_for(cwd), capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        assert "No nodes replied" in done.stderr + done.stdout, (
            f"{argv} failed:\n{done.stdout}\n{done.stderr}"
        )
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_celery_cli_inspects_a_taskq_worker(side: Side) -> None:
    node = f"taskq-{uuid.uuid4().hex[:8]}@{os.uname().nodename}"
    argv = [str(BIN / "taskq"), "-A", "taskqside", "worker", "-P", "prefork", "-c", "2", "-l", "info", "-n", node]  # fmt: skip
    client, cwd = side.client(), side.path
    release = cwd / "release"
    try:
        with process(argv, cwd, "taskq-worker") as proc:
            assert wait_for(lambda: celery_inspect(cwd, "ping", node), "a pong", proc) == {
                node: {"ok": "pong"}
            }
            waiting = client.send_task("ctl.wait_for_file", (str(release),))
            active = wait_for(
                lambda: (celery_inspect(cwd, "active", node) or {}).get(node), "an active task", proc
            )

            registered = celery_inspect(cwd, "registered", node)
            assert registered == {node: ["ctl.add", "ctl.wait_for_file"]}
            stats = celery_inspect(cwd, "stats", node)[node]
            assert stats["pid"] == proc.pid
            assert stats["pool"]["max-concurrency"] == 2 and len(stats["pool"]["processes"]) == 2
            assert stats["total"] == {"ctl.wait_for_file": 1}
            assert stats["broker"]["transport"] in ("redis", "amqp") and "password" not in stats["broker"]
            assert {"clock", "uptime", "prefetch_count", "rusage"} <= set(stats)

            [info] = active
            assert info["id"] == waiting.id and info["name"] == "ctl.wait_for_file"
            assert info["args"] == [str(release)] and info["hostname"] == node
            assert info["worker_pid"] in stats["pool"]["processes"]  # the prefork child running it
            release.touch()
            assert waiting.get(timeout=WAIT) is True
    finally:
        client.close()


def test_celery_worker_answers_taskq_inspect(side: Side) -> None:
    node = f"celery-{uuid.uuid4().hex[:8]}@{os.uname().nodename}"
    argv = [
        str(BIN / "celery"), "-A", "celeryside", "worker", "-P", "solo", "-l", "info", "-n", node,
        "--without-mingle", "--without-gossip", "--without-heartbeat",
    ]  # fmt: skip
    client = side.client()
    try:
        with process(argv, side.path, "celery-worker") as proc:
            pong = wait_for(lambda: client.control.ping(destination=[node], timeout=1), "a pong", proc)
            assert pong == [{node: {"ok": "pong"}}]
            assert client.send_task("ctl.add", (2, 3)).get(timeout=WAIT) == 5

            inspect = client.control.inspect(destination=[node], timeout=5)
            assert inspect.ping() == {node: {"ok": "pong"}}
            assert inspect.registered() == {node: ["ctl.add", "ctl.wait_for_file"]}
            stats = inspect.stats()[node]
            assert stats["pid"] == proc.pid and stats["total"] == {"ctl.add": 1}
            assert stats["pool"]["max-concurrency"] == 1
            assert stats["pool"]["implementation"] == "celery.concurrency.solo:TaskPool"
            assert [q["name"] for q in inspect.active_queues()[node]] == [side.queue]
            assert inspect.active() == {node: []}
    finally:
        client.close()
