"""Start-up errors: one clear line on stderr, a non-zero exit, no traceback, no secrets."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .helpers import run_taskq, write_module

pytestmark = pytest.mark.e2e


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


@pytest.mark.parametrize(
    "argv", [["-A", "nosuchmodule", "worker"], ["worker", "-A", "nosuchmodule"]], ids=["new", "old"]
)
def test_missing_app_module(tmp_path: Path, argv: list[str]) -> None:
    proc = run_taskq(tmp_path, *argv)
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert error_lines(proc.stderr) == [
        "Error: Unable to load app 'nosuchmodule': cannot import nosuchmodule"
    ]


def test_app_module_raising_at_import(tmp_path: Path) -> None:
    write_module(tmp_path, "broken", 'raise RuntimeError("boom at import")\n')
    proc = run_taskq(tmp_path, "-A", "broken", "worker", "-l", "info")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert error_lines(proc.stderr) == ["Error: Unable to load app 'broken': RuntimeError: boom at import"]


def test_app_module_with_missing_dependency(tmp_path: Path) -> None:
    write_module(tmp_path, "needsdep", "import no_such_dependency_zz\n")
    proc = run_taskq(tmp_path, "-A", "needsdep", "worker")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "no_such_dependency_zz" in lines[0], proc.stderr


def test_module_without_app(tmp_path: Path) -> None:
    write_module(tmp_path, "noapp", "VALUE = 1\n")
    proc = run_taskq(tmp_path, "-A", "noapp", "worker")
    assert proc.returncode != 0
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "no taskq/Celery app" in lines[0], proc.stderr


BAD_BROKER = """
from taskq import Celery

app = Celery(
    "badbroker",
    broker="redis://:secret@127.0.0.1:1/0",
    broker_connection_retry_on_startup=False,
)


@app.task
def add(x, y):
    return x + y
"""


def test_unreachable_broker_is_one_line_without_password(tmp_path: Path) -> None:
    write_module(tmp_path, "badbroker", BAD_BROKER)
    started = time.monotonic()
    quiet = run_taskq(tmp_path, "-A", "badbroker", "worker", "-q", "-l", "info", timeout=30)
    assert time.monotonic() - started < 20
    assert quiet.returncode != 0
    output = quiet.stdout + quiet.stderr
    assert "secret" not in output
    assert "Traceback" not in output
    lines = error_lines(output)
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: cannot connect to redis://:**@127.0.0.1:1/0")

    # With the banner (default), the URL is masked there too.
    loud = run_taskq(tmp_path, "-A", "badbroker", "worker", "-l", "debug", timeout=30)
    assert loud.returncode != 0
    output = loud.stdout + loud.stderr
    assert "secret" not in output
    assert "Traceback" not in output
    assert "redis://:**@127.0.0.1:1/0" in output
    assert [line for line in error_lines(output) if line.startswith("Error")] == [lines[0]]


def test_unreachable_broker_given_on_the_command_line(tmp_path: Path) -> None:
    write_module(tmp_path, "plain", "from taskq import Celery\napp = Celery('plain')\n")
    write_module(tmp_path, "noretry", "broker_connection_retry_on_startup = False\n")
    proc = run_taskq(
        tmp_path,
        "-A",
        "plain",
        "--config",
        "noretry",
        "-b",
        "redis://user:hunter2@127.0.0.1:1/0",
        "worker",
        "-q",
        timeout=30,
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "hunter2" not in output
    assert "Traceback" not in output
    assert len(error_lines(output)) == 1, output


def test_unknown_pool_is_a_usage_error(tmp_path: Path) -> None:
    write_module(tmp_path, "plain", "from taskq import Celery\napp = Celery('plain')\n")
    proc = run_taskq(tmp_path, "-A", "plain", "worker", "-P", "nosuchpool")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
