"""A worker's life as a service: -D/--detach, --pidfile, SIGHUP restarts, -S/--statedb.

Real ``taskq worker -P threads`` processes; a detached one is not our child, so every test that
starts one kills it by pid in a ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from taskq import Celery, states

from . import helpers
from .helpers import STOP_TIMEOUT, run_taskq, running_worker, wait_for, write_module

pytestmark = pytest.mark.e2e

APP = """
import os
import time
from pathlib import Path

from taskq import Celery

app = Celery("proj")


@app.task
def add(x, y):
    return x + y


@app.task
def pid():
    return os.getpid()


@app.task
def slow(marker, seconds):
    Path(marker).write_text("started")
    time.sleep(seconds)
    return "done"


@app.task
def mark(path):
    Path(path).write_text("ran")
    return "ran"
"""
WORKER = ("-A", "proj", "worker", "-P", "threads", "-l", "info")


@contextmanager
def client(directory: Path, broker: str | None = None) -> Iterator[Celery]:
    if broker:
        app = Celery("proj", broker=broker, backend=broker, set_as_current=False)
    else:
        app = Celery("proj", taskq_sqlite_path=str(directory / "taskq.sqlite3"), set_as_current=False)
    try:
        yield app
    finally:
        app.close()


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent (a daemon's parent is init)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def kill(pid: int | None) -> None:
    """Last resort for a detached worker a test left behind."""
    if pid and alive(pid):
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid), STOP_TIMEOUT, f"pid {pid} to die")


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    return proc.pid


def read_pid(path: Path) -> int:
    return int(wait_for(lambda: path.exists() and path.read_text().strip(), 15, f"pid file {path}"))


def log_has(path: Path, text: str, timeout: float = 20) -> None:
    wait_for(lambda: path.exists() and text in path.read_text(), timeout, f"{text!r} in {path}")


# -- -D/--detach and --pidfile ------------------------------------------------------------------
def test_detach_runs_in_the_background_until_sigterm(tmp_path: Path) -> None:
    write_module(tmp_path, "proj", APP)
    pidfile, logfile = tmp_path / "run" / "alpha.pid", tmp_path / "alpha-0.log"
    pidfile.parent.mkdir()
    started = time.monotonic()
    done = run_taskq(
        tmp_path, *WORKER, "-n", "alpha@%h", "-D", "--pidfile", "run/%n.pid", "-f", "%n-%i.log", timeout=30
    )
    pid = None
    try:
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 15  # returned without waiting for the worker
        assert done.stdout == done.stderr == ""  # nothing on the terminal
        pid = read_pid(pidfile)
        assert alive(pid)
        assert os.getsid(pid) != os.getsid(0)  # its own session: no terminal signals reach it
        log_has(logfile, "alpha@")
        log_has(logfile, " ready.")
        text = logfile.read_text()
        assert "[tasks]" in text and ". proj.add" in text  # the banner, since stderr is /dev/null
        with client(tmp_path) as app:
            assert app.send_task("proj.pid").get(timeout=20) == pid
        log_has(logfile, "succeeded")
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not alive(pid), STOP_TIMEOUT, "the daemon to exit")
        assert not pidfile.exists()
        assert "warm shutdown" in logfile.read_text()
    finally:
        kill(pid)


def test_detach_defaults_to_node_named_files(tmp_path: Path) -> None:
    """Without --pidfile/--logfile: %n.pid and %n%I.log in the working directory."""
    write_module(tmp_path, "proj", APP)
    done = run_taskq(tmp_path, *WORKER, "-n", "beta@%h", "--detach", timeout=30)
    pid = None
    try:
        assert done.returncode == 0, done.stderr
        pid = read_pid(tmp_path / "beta.pid")
        log_has(tmp_path / "beta.log", f"beta@{socket.gethostname()} ready.")
        with client(tmp_path) as app:
            assert app.send_task("proj.add", (2, 3)).get(timeout=20) == 5
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not alive(pid), STOP_TIMEOUT, "the daemon to exit")
        kill(pid)
    assert not (tmp_path / "beta.pid").exists()


@pytest.mark.parametrize("detach", [True, False], ids=["detached", "foreground"])
def test_live_pidfile_refuses_to_start(tmp_path: Path, detach: bool) -> None:
    write_module(tmp_path, "proj", APP)
    pidfile = tmp_path / "w.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # this test process: certainly alive
    extra = ["-D", "-f", "w.log"] if detach else []
    done = run_taskq(tmp_path, *WORKER, "--pidfile", "w.pid", *extra, timeout=30)
    assert done.returncode == 73, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"Error: pidfile {pidfile} names running process {os.getpid()}: is the worker already running?"
    ]
    assert pidfile.read_text() == f"{os.getpid()}\n"  # left alone
    assert not (tmp_path / "w.log").exists()  # refused before anything was created


def test_stale_pidfile_is_replaced_and_removed_on_exit(tmp_path: Path) -> None:
    write_module(tmp_path, "proj", APP)
    pidfile = tmp_path / "w.pid"
    stale = dead_pid()
    pidfile.write_text(f"{stale}\n")
    with running_worker(tmp_path, *WORKER, "--pidfile", "w.pid") as worker:
        assert pidfile.read_text() == f"{worker.pid}\n"
        assert f"Stale pidfile {pidfile} (pid {stale} is not running)" in worker.output
    assert worker.proc.returncode == 0
    assert not pidfile.exists()


# -- SIGHUP ------------------------------------------------------------------------------------
@pytest.mark.parametrize("launcher", ["script", "module"])
def test_sighup_restarts_in_place(
    tmp_path: Path, launcher: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running task finishes, waiting ones come back, the same pid runs the same command line.

    ``module``: ``python -m taskq.cli --workdir <relative dir>`` on the embedded store, which a
    restart must reproduce exactly (the module form, and the directory resolved once).
    ``script``: the ``taskq`` script on Redis.
    """
    if launcher == "module":
        monkeypatch.setattr(helpers, "taskq_command", lambda: [sys.executable, "-m", "taskq.cli"])
        project = tmp_path / "project"
        args: tuple[str, ...] = ("--workdir", "project", *WORKER, "-c", "1")
        broker = None
        expected_exec = f"{sys.executable} -m taskq.cli --workdir {project} -A proj worker"
    else:
        project = tmp_path
        redis_url = request.getfixturevalue("redis_url")
        request.getfixturevalue("redis_client")  # an empty DB
        args = (*WORKER, "-c", "1", "-b", redis_url, "--result-backend", redis_url)
        broker = redis_url
        expected_exec = f"{helpers.taskq_command()[0]} -A proj worker"
    write_module(project, "proj", APP)
    marker = tmp_path / "started"
    with running_worker(tmp_path, *args) as worker, client(project, broker) as app:
        assert app.send_task("proj.pid").get(timeout=20) == worker.pid
        running = app.send_task("proj.slow", (str(marker), 2.0))
        waiting = [app.send_task("proj.add", (i, i)) for i in range(3)]  # prefetched behind it
        wait_for(marker.exists, 20, "the slow task to start")
        worker.send_signal(signal.SIGHUP)
        assert running.get(timeout=30) == "done"
        assert running.state == states.SUCCESS
        assert [r.get(timeout=30) for r in waiting] == [0, 2, 4]
        wait_for(lambda: worker.output.count(" ready.") == 2, 30, "a second 'ready.'")
        assert worker.alive()
        assert app.send_task("proj.pid").get(timeout=20) == worker.pid  # exec kept the pid
        out = worker.output
    assert "SIGHUP received: restarting" in out
    assert expected_exec in out
    assert out.index(f"Task proj.slow[{running.id}] succeeded") < out.rindex(" ready.")


# -- -S/--statedb ------------------------------------------------------------------------------
def test_statedb_keeps_revokes_across_restarts(tmp_path: Path) -> None:
    write_module(tmp_path, "proj", APP)
    state = tmp_path / "state-celery.json"  # -S state-%n.json, node celery@<host>
    ran = tmp_path / "ran"
    task_id = str(uuid.uuid4())
    with client(tmp_path) as app:
        with running_worker(tmp_path, *WORKER, "-S", "state-%n.json") as worker:
            replies = app.control.revoke(task_id, reply=True, timeout=5)
            assert any(worker.wait_ready().group(1) in reply for reply in replies), replies
            wait_for(lambda: state.exists() and task_id in state.read_text(), 10, "the revoke saved")
        saved = json.loads(state.read_text())
        assert saved["taskq_statedb"] == 1
        assert abs(saved["revoked"][task_id] - time.time()) < 60
        app.AsyncResult(task_id).forget()  # so REVOKED below can only come from the new worker
        assert app.AsyncResult(task_id).state == states.PENDING

        with running_worker(tmp_path, *WORKER, "--statedb", "state-%n.json") as worker:
            worker.wait_for_log("1 revoked id")
            result = app.send_task("proj.mark", (str(ran),), task_id=task_id)
            wait_for(lambda: result.state == states.REVOKED, 20, "the task discarded as REVOKED")
            assert app.send_task("proj.add", (1, 1)).get(timeout=20) == 2
            worker.wait_for_log(rf"Discarding revoked task proj.mark\[{task_id}\]")
        assert not ran.exists()
        assert task_id in json.loads(state.read_text())["revoked"]


def test_corrupt_statedb_warns_and_starts_empty(tmp_path: Path) -> None:
    write_module(tmp_path, "proj", APP)
    state = tmp_path / "worker.state"
    state.write_bytes(b"\x00{not json")
    with running_worker(tmp_path, *WORKER, "-S", "worker.state") as worker, client(tmp_path) as app:
        assert app.send_task("proj.add", (20, 22)).get(timeout=20) == 42
    warnings = [line for line in worker.output.splitlines() if "--statedb" in line and "WARNING" in line]
    assert len(warnings) == 1, worker.output
    assert f"{state} is unreadable" in warnings[0]
    assert "Traceback" not in worker.output
    assert json.loads(state.read_text()) == {"taskq_statedb": 1, "revoked": {}}  # rewritten
