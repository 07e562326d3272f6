"""taskq.daemon and taskq.relaunch without starting anything: names, pid files, command lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskq import relaunch
from taskq.daemon import PidfileLocked, create_pidfile, node_format, remove_pidfile
from taskq.relaunch import without_options


@pytest.mark.parametrize(
    ("template", "index", "expected"),
    [
        ("%n.pid", None, "w1.pid"),
        ("%n%I.log", None, "w1.log"),
        ("%n%I.log", 3, "w1-3.log"),
        ("%n-%i.log", None, "w1-0.log"),
        ("%n-%i.log", 2, "w1-2.log"),
        ("/var/run/%h/%d/%p.pid", None, "/var/run/box.example.com/example.com/w1@box.example.com.pid"),
        ("100%%-%n", None, "100%-w1"),
    ],
)
def test_node_format(template: str, index: int | None, expected: str) -> None:
    assert node_format(template, "w1@box.example.com", index) == expected


def test_node_format_without_a_name_part_is_celery() -> None:
    assert node_format("%n@%h", "box") == "celery@box"


def test_node_format_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match=r"unknown format %x in '%x.pid'"):
        node_format("%x.pid", "w1@box")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    return proc.pid


def test_pidfile_written_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "w.pid"
    assert create_pidfile(str(path), "the worker") == str(path)
    assert path.read_text() == f"{os.getpid()}\n"
    assert create_pidfile(str(path), "the worker") == str(path)  # a restart of the same process
    remove_pidfile(str(path))
    assert not path.exists()
    assert sorted(tmp_path.iterdir()) == []  # no temporary file either


def test_live_pidfile_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pid"
    path.write_text(f"{os.getppid()}\n")  # our parent: alive
    with pytest.raises(PidfileLocked) as info:
        create_pidfile(str(path), "the worker")
    assert info.value.exit_code == 73
    assert info.value.message == (
        f"pidfile {path} names running process {os.getppid()}: is the worker already running?"
    )
    assert path.read_text() == f"{os.getppid()}\n"


@pytest.mark.parametrize("content", ["{pid}\n", "garbage", ""], ids=["dead-pid", "garbage", "empty"])
def test_stale_pidfile_replaced(tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "w.pid"
    path.write_text(content.format(pid=dead_pid()))
    create_pidfile(str(path), "the worker")
    assert path.read_text() == f"{os.getpid()}\n"
    assert "Stale pidfile" in capsys.readouterr().err


def test_remove_pidfile_leaves_a_successor_alone(tmp_path: Path) -> None:
    path = tmp_path / "w.pid"
    path.write_text(f"{os.getppid()}\n")
    remove_pidfile(str(path))
    assert path.exists()


def test_unwritable_pidfile_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="cannot write pidfile"):
        create_pidfile(str(tmp_path / "no-such-dir" / "w.pid"), "the worker")


TAKES_VALUE = {
    "-D": False, "--detach": False, "-B": False, "-E": False, "-Q": True, "-n": True, "-A": True,
    "--uid": True, "--gid": True, "-l": True, "--loglevel": True,
}  # fmt: skip


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-A", "p", "worker", "-D"], ["-A", "p", "worker"]),
        (["worker", "--detach", "-l", "info"], ["worker", "-l", "info"]),
        (["worker", "-BD"], ["worker", "-B"]),
        (["worker", "-DBE"], ["worker", "-BE"]),
        (["worker", "-Q", "-D"], ["worker", "-Q", "-D"]),  # a queue named -D
        (["worker", "-QD", "-D"], ["worker", "-QD"]),  # -Q with the value "D"
        (["worker", "-BQD"], ["worker", "-BQD"]),
        (["worker", "-n", "x@%h", "-D"], ["worker", "-n", "x@%h"]),
        (["worker", "-D", "--", "-D"], ["worker", "--", "-D"]),
    ],
)
def test_without_detach(args: list[str], expected: list[str]) -> None:
    assert without_options(args, {"-D", "--detach"}, TAKES_VALUE) == expected


def test_without_uid_and_gid_drops_their_values() -> None:
    args = ["worker", "--uid", "nobody", "--gid=nogroup", "-l", "info"]
    assert without_options(args, {"--uid", "--gid"}, TAKES_VALUE) == ["worker", "-l", "info"]


def test_remembered_command_line_of_an_embedding_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(relaunch, "_command_line", None)
    relaunch.remember_command_line(["--workdir", "proj", "worker", "--workdir=other"])
    line = relaunch.command_line()
    assert line is not None
    assert line.prefix == [sys.executable, "-m", "taskq.cli"]
    assert line.args == ["--workdir", str(tmp_path / "proj"), "worker", f"--workdir={tmp_path / 'other'}"]
    assert line.cwd == str(tmp_path)


@pytest.mark.parametrize(("tty", "restartable"), [(False, True), (True, False)])
def test_sighup_restarts_only_without_a_terminal(
    monkeypatch: pytest.MonkeyPatch, tty: bool, restartable: bool
) -> None:
    """As Celery: closing a terminal sends SIGHUP, which must not restart the worker behind it."""
    import io
    import signal

    from taskq import Celery
    from taskq.worker.worker import Worker

    class Stdout(io.StringIO):
        def isatty(self) -> bool:
            return tty

    app = Celery("sighup", broker="memory://", backend="memory://", set_as_current=False)
    node = Worker(app, pool="threads", concurrency=1)
    node.restart_command = relaunch.CommandLine([sys.executable, "-m", "taskq.cli"], ["worker"], "/")
    monkeypatch.setattr(sys, "stdout", Stdout())
    saved = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)}
    try:
        node.install_signal_handlers()
        installed = signal.getsignal(signal.SIGHUP) == node._on_restart_signal
        assert installed is restartable
        if restartable:
            os.kill(os.getpid(), signal.SIGHUP)
            assert node.restart_requested and node.consumer.stopping
            node._on_stop_signal(signal.SIGTERM, None)  # a stop during the restart wins
            assert not node.restart_requested
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        app.close()
