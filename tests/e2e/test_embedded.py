"""The embedded default: no broker configured, one SQLite file in the worker's directory."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from taskq import Celery, states

from .helpers import run_python, running_worker, write_module

pytestmark = pytest.mark.e2e

APP = """
from taskq import Celery

app = Celery("proj")


@app.task
def add(x, y):
    return x + y


@app.task
def square(x):
    return x * x
"""


@contextmanager
def client(directory: Path) -> Iterator[Celery]:
    """An in-process client sharing the worker's file (the worker runs in ``directory``)."""
    app = Celery("proj", taskq_sqlite_path=str(directory / "taskq.sqlite3"), set_as_current=False)
    try:
        yield app
    finally:
        app.close()


def waiting_messages(directory: Path) -> int:
    with sqlite3.connect(directory / "taskq.sqlite3") as db:
        return int(db.execute("SELECT COUNT(*) FROM taskq_message").fetchone()[0])


def test_round_trip_with_client_in_another_process(tmp_path: Path) -> None:
    write_module(tmp_path, "proj", APP)
    with running_worker(tmp_path, "-A", "proj", "worker", "-l", "info") as worker:
        out = run_python(
            tmp_path,
            """
            from proj import add
            result = add.delay(2, 3)
            print(result.get(timeout=20), result.state)
            """,
        )
        assert out == "5 SUCCESS"
        assert "(embedded default)" in worker.output
        assert f"sqlite:///{tmp_path}/taskq.sqlite3" in worker.output
    assert (tmp_path / "taskq.sqlite3").exists()


def test_many_tasks_on_four_threads(tmp_path: Path) -> None:
    write_module(tmp_path, "proj", APP)
    argv = ("-A", "proj", "worker", "-l", "info", "-c", "4", "-P", "threads")
    with running_worker(tmp_path, *argv), client(tmp_path) as app:
        results = [app.send_task("proj.square", (i,)) for i in range(200)]
        values = [r.get(timeout=60) for r in results]
        assert values == [i * i for i in range(200)]
        assert {r.state for r in results} == {states.SUCCESS}
    assert waiting_messages(tmp_path) == 0


def test_restarted_worker_keeps_queued_messages(tmp_path: Path) -> None:
    write_module(tmp_path, "proj", APP)
    with client(tmp_path) as app:
        with running_worker(tmp_path, "-A", "proj", "worker", "-l", "info") as first:
            assert app.send_task("proj.add", (1, 1)).get(timeout=20) == 2
        assert first.proc.returncode == 0, first.output
        queued = [app.send_task("proj.add", (i, 100)) for i in range(5)]
        assert waiting_messages(tmp_path) == 5
        assert [r.state for r in queued] == [states.PENDING] * 5
        with running_worker(tmp_path, "worker", "-A", "proj", "-l", "info"):
            assert [r.get(timeout=20) for r in queued] == [i + 100 for i in range(5)]
    assert waiting_messages(tmp_path) == 0
