"""Worker command-line options, seen from outside: queues, node name, app path, order, log level."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from taskq import Celery, states

from .helpers import running_worker, start_worker, wait_for, write_module

pytestmark = pytest.mark.e2e

APP = """
import logging

from taskq import Celery

app = Celery("proj")
log = logging.getLogger("proj.tasks")


@app.task
def add(x, y):
    return x + y


@app.task(bind=True)
def whoami(self):
    return {"hostname": self.request.hostname, "queue": self.request.delivery_info.get("routing_key")}


@app.task
def chatty(x):
    log.debug("debug-marker %s", x)
    log.info("info-marker %s", x)
    log.warning("warning-marker %s", x)
    return x
"""


@contextmanager
def client(directory: Path) -> Iterator[Celery]:
    app = Celery("proj", taskq_sqlite_path=str(directory / "taskq.sqlite3"), set_as_current=False)
    try:
        yield app
    finally:
        app.close()


def test_queues_option_consumes_only_those_queues(tmp_path: Path) -> None:
    write_module(tmp_path, "proj", APP)
    with client(tmp_path) as app:
        sent = {q: app.send_task("proj.whoami", queue=q) for q in ("a", "b", "c")}
        with running_worker(tmp_path, "-A", "proj", "worker", "-l", "info", "-Q", "a,b") as worker:
            assert sent["a"].get(timeout=20)["queue"] == "a"
            assert sent["b"].get(timeout=20)["queue"] == "b"
            time.sleep(0.5)
            assert sent["c"].state == states.PENDING
            banner = worker.output.split("[tasks]")[0]
            assert ".> a " in banner and ".> b " in banner
            assert ".> c " not in banner and ".> celery " not in banner
        with running_worker(tmp_path, "-A", "proj", "worker", "-l", "info", "-Q", "c"):
            assert sent["c"].get(timeout=20)["queue"] == "c"


def test_hostname_option(tmp_path: Path) -> None:
    write_module(tmp_path, "proj", APP)
    expected = f"alpha@{socket.gethostname()}"
    with running_worker(tmp_path, "-A", "proj", "worker", "-l", "info", "-n", "alpha@%h") as worker:
        assert worker.wait_ready().group(1) == expected
        with client(tmp_path) as app:
            assert app.send_task("proj.whoami").get(timeout=20)["hostname"] == expected
        assert f" {expected} v" in worker.output  # banner


def test_app_as_package_module_and_attribute(tmp_path: Path) -> None:
    source = APP.replace("app = Celery", "application = Celery").replace("@app.", "@application.")
    write_module(tmp_path, "pkg.module", source)
    argv = ("-A", "pkg.module:application", "worker", "-l", "info")
    with running_worker(tmp_path, *argv), client(tmp_path) as app:
        assert app.send_task("pkg.module.add", (40, 2)).get(timeout=20) == 42


@pytest.mark.parametrize(
    "argv",
    [
        ["worker", "-A", "proj", "-l", "info"],
        ["-A", "proj", "worker", "-l", "info"],
        ["worker", "--app=proj", "--loglevel=INFO"],
    ],
    ids=["old-order", "celery5-order", "long-options"],
)
def test_option_order(tmp_path: Path, argv: list[str]) -> None:
    write_module(tmp_path, "proj", APP)
    with running_worker(tmp_path, *argv) as worker:
        with client(tmp_path) as app:
            assert app.send_task("proj.add", (1, 2)).get(timeout=20) == 3
        assert ".> app:         proj:" in worker.output


def test_loglevel_debug(tmp_path: Path) -> None:
    write_module(tmp_path, "proj", APP)
    with running_worker(tmp_path, "-A", "proj", "worker", "-l", "debug") as worker:
        with client(tmp_path) as app:
            assert app.send_task("proj.chatty", (7,)).get(timeout=20) == 7
        worker.wait_for_log("warning-marker 7")
        out = worker.output
    assert re.search(r"DEBUG/(MainProcess|ForkPoolWorker-\d+)\] debug-marker 7", out), out
    assert re.search(r"INFO/(MainProcess|ForkPoolWorker-\d+)\] info-marker 7", out), out


def test_loglevel_warning(tmp_path: Path) -> None:
    write_module(tmp_path, "proj", APP)
    worker = start_worker(tmp_path, "-A", "proj", "worker", "--loglevel", "WARNING")
    try:
        with client(tmp_path) as app:
            assert app.send_task("proj.chatty", (8,)).get(timeout=20) == 8
        worker.wait_for_log("warning-marker 8")
    finally:
        code = worker.stop()
    out = worker.output
    assert code == 0, out
    assert "warm shutdown" in out  # a WARNING line
    for quiet in ("ready.", "info-marker", "debug-marker", "] received", "succeeded"):
        assert quiet not in out, f"{quiet!r} logged at --loglevel WARNING:\n{out}"


def test_default_loglevel_is_quiet_and_logfile(tmp_path: Path) -> None:
    write_module(tmp_path, "proj", APP)
    logfile = tmp_path / "worker.log"
    worker = start_worker(tmp_path, "-A", "proj", "worker", "-l", "INFO", "-f", str(logfile), "-q")
    try:
        wait_for(lambda: logfile.exists() and "ready." in logfile.read_text(), 20, "ready in the log file")
        with client(tmp_path) as app:
            assert app.send_task("proj.add", (2, 2)).get(timeout=20) == 4
    finally:
        worker.stop()
    assert "ready." not in worker.output
    assert "[tasks]" not in worker.output  # -q: no banner
    assert "succeeded" in logfile.read_text()
