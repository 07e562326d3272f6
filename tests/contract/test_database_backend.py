"""The database result backend beyond the shared contract: Celery's tables and rows, chords under
concurrency, expiry, forks, lost connections and bad rows, on SQLite, PostgreSQL and MariaDB.

The shared contract (store/get/wait/forget/...) runs these backends in test_result_backends.py.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from database_support import DB_KINDS, db_settings, db_url, write_row
from fork_support import wait_child

from taskq import signals, states
from taskq.app import App
from taskq.backend.database import DatabaseBackend
from taskq.backend.database_models import EXTENDED_COLUMNS
from taskq.exceptions import (
    BackendGetMetaError,
    BackendStoreError,
    ImproperlyConfigured,
    OperationalError,
    SecurityError,
)
from taskq.result import AsyncResult, GroupResult
from taskq.task import Context
from taskq.testing import RunningWorker

SERVERS = ["db+postgresql", "db+mysql"]


def make_app(request: pytest.FixtureRequest, kind: str, **settings: Any) -> App:
    settings = {**db_settings(request), **settings}
    return App("dbtest", broker="memory://", backend=db_url(request, kind), **settings)


@pytest.fixture(params=DB_KINDS)
def app(request: pytest.FixtureRequest) -> Iterator[App]:
    application = make_app(request, request.param)
    yield application
    application.close()


def backend_of(app: App) -> DatabaseBackend:
    backend = app.backend
    assert isinstance(backend, DatabaseBackend)
    return backend


# -- Celery's layout, and Celery 5.7 reading and writing the same rows ----------------------------


@pytest.mark.parametrize("extended", [False, True])
def test_tables_have_celerys_columns(request: pytest.FixtureRequest, extended: bool) -> None:
    from celery.backends.database import models

    for kind in DB_KINDS:
        app = make_app(request, kind, result_extended=extended)
        backend = backend_of(app)
        backend.prepare()
        inspector = sa.inspect(backend.engines.engine())
        columns = {c["name"] for c in inspector.get_columns(backend.tables.task.name)}
        expected = {c.name for c in models.TaskExtended.__table__.columns}  # one table in Celery
        if not extended:
            expected -= set(EXTENDED_COLUMNS)
        assert columns == expected, kind
        group_columns = {c["name"] for c in inspector.get_columns(backend.tables.group.name)}
        assert group_columns == {c.name for c in models.TaskSet.__table__.columns}, kind
        app.close()


@pytest.mark.parametrize("kind", DB_KINDS)
def test_celery_backend_reads_taskq_rows_and_back(request: pytest.FixtureRequest, kind: str) -> None:
    celery = pytest.importorskip("celery")
    names = request.getfixturevalue("db_table_names")
    url = db_url(request, kind)
    app = make_app(request, kind, result_extended=True)
    capp = celery.Celery(
        "dbinterop", broker="memory://", backend=url, set_as_current=False,
        database_table_names=names, result_extended=True,
    )  # fmt: skip
    try:
        backend = backend_of(app)
        done, failed = str(uuid.uuid4()), str(uuid.uuid4())
        request_ = Context(id=done, task="t.add", args=[1, 2], kwargs={"x": 1}, hostname="w@h", retries=0)
        backend.store_result(done, {"sum": 3}, states.SUCCESS, request=request_)
        backend.store_result(failed, ValueError("from taskq"), states.FAILURE, "Traceback...")
        assert capp.AsyncResult(done).get(timeout=5) == {"sum": 3}
        meta = capp.backend.get_task_meta(done)
        assert (meta["name"], meta["args"], meta["kwargs"], meta["worker"]) == (
            "t.add",
            [1, 2],
            {"x": 1},
            "w@h",
        )
        with pytest.raises(ValueError, match="from taskq"):
            capp.AsyncResult(failed).get(timeout=5)
        gid = str(uuid.uuid4())
        GroupResult(gid, [AsyncResult(done, app=app), AsyncResult(failed, app=app)], app=app).save()
        assert [r.id for r in capp.GroupResult.restore(gid).results] == [done, failed]

        theirs, their_failure, their_group = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
        capp.backend.store_result(theirs, [1, "two"], states.SUCCESS)
        capp.backend.store_result(their_failure, KeyError("from celery"), states.FAILURE)
        capp.GroupResult(their_group, [capp.AsyncResult(theirs)]).save()
        assert app.AsyncResult(theirs).get(timeout=5) == [1, "two"]
        assert app.AsyncResult(theirs).date_done is not None
        with pytest.raises(KeyError, match="from celery"):
            app.AsyncResult(their_failure).get(timeout=5)
        restored = GroupResult.restore(their_group, app=app)
        assert restored is not None and [r.id for r in restored.results] == [theirs]
        backend.store_result(theirs, "late duplicate", states.FAILURE)  # Celery's SUCCESS stays
        assert capp.AsyncResult(theirs).get(timeout=5) == [1, "two"]
    finally:
        capp.close()
        app.close()


# -- rows a reader must not trust -----------------------------------------------------------------

ran: list[str] = []


class Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (ran.append, ("code ran",))


def test_a_malicious_pickle_row_is_refused_not_run(app: App) -> None:
    backend, task_id = backend_of(app), str(uuid.uuid4())
    write_row(backend, task_id, status="SUCCESS", result=pickle.dumps({"value": Evil()}))
    with pytest.raises(SecurityError, match="taskq only loads plain data"):
        app.AsyncResult(task_id).get(timeout=2)
    write_row(backend, task_id, status="SUCCESS", result=pickle.dumps(os.system))
    with pytest.raises(SecurityError, match=r"posix\.system"):
        app.AsyncResult(task_id).get(timeout=2)
    assert ran == []


def test_legacy_pickled_rows_of_plain_data_are_read(app: App) -> None:
    """Rows of a Celery that kept ``result`` as PickleType: plain values and builtin exceptions."""
    backend, done, failed = backend_of(app), str(uuid.uuid4()), str(uuid.uuid4())
    when = datetime(2026, 1, 2, 3, 4, 5)
    write_row(backend, done, status="SUCCESS", result=pickle.dumps({"at": when, "n": (1, 2.5, b"x")}, 2))
    assert app.AsyncResult(done).get(timeout=2) == {"at": when, "n": (1, 2.5, b"x")}
    write_row(backend, failed, status="FAILURE", result=pickle.dumps(ZeroDivisionError("legacy")))
    with pytest.raises(ZeroDivisionError, match="legacy"):
        app.AsyncResult(failed).get(timeout=2)


def test_bad_columns_are_clear_errors(app: App) -> None:
    backend, task_id = backend_of(app), str(uuid.uuid4())
    write_row(backend, task_id, status="SUCCESS", result=b'"ok"', children=b"{truncated")
    with pytest.raises(BackendGetMetaError, match="column children cannot be decoded"):
        app.AsyncResult(task_id).get(timeout=2)
    write_row(backend, task_id, status=None, result=b'"ok"')
    with pytest.raises(BackendGetMetaError, match="status None"):
        app.AsyncResult(task_id).get(timeout=2)
    gid = str(uuid.uuid4())
    with backend.engines.engine().begin() as conn:
        conn.execute(sa.insert(backend.tables.group).values(taskset_id=gid, result=b'{"not": "a tuple"}'))
    with pytest.raises(BackendGetMetaError, match="malformed"):
        GroupResult.restore(gid, app=app)


# -- chords ----------------------------------------------------------------------------------------


class Published:
    """The bodies a ``memory://`` broker was handed, per task id."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        signals.after_task_publish.connect(self.record, weak=False, dispatch_uid=id(self))

    def record(self, sender: Any = None, body: Any = None, headers: Any = None, **_: Any) -> None:
        with self.lock:
            self.bodies.append((headers["id"], list(body[0])))

    def close(self) -> None:
        signals.after_task_publish.disconnect(self.record, dispatch_uid=id(self))


def test_concurrent_chords_send_each_body_once(app: App) -> None:
    """4 chords x 6 parts, every part reported twice (redelivery), 48 threads released at once."""
    backend = backend_of(app)
    app.task(name="dbtest.xsum")(sum)
    published = Published()
    chords = []
    for _ in range(4):
        gid, body_id = str(uuid.uuid4()), str(uuid.uuid4())
        body = app.tasks["dbtest.xsum"].s().set(task_id=body_id, group_id=gid)
        backend.set_chord_size(gid, 6)
        parts = [Context(id=str(uuid.uuid4()), group=gid, group_index=n, chord=dict(body)) for n in range(6)]
        chords.append((gid, body_id, parts))
    jobs = [(part, n) for _, _, parts in chords for n, part in enumerate(parts)] * 2
    barrier, errors = threading.Barrier(len(jobs)), []

    def report(part: Context, n: int) -> None:
        barrier.wait(10)
        try:
            backend.store_result(part.id, n, states.SUCCESS, request=part)
            backend.on_chord_part_return(part, states.SUCCESS, n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=report, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    published.close()
    assert errors == []
    for gid, body_id, _ in chords:
        sent = [args for task_id, args in published.bodies if task_id == body_id]
        assert sent == [[[0, 1, 2, 3, 4, 5]]], gid
        with backend.engines.engine().connect() as conn:
            table = backend.tables.chord
            left = conn.execute(sa.select(table.c.chord_key).where(table.c.chord_key.contains(gid))).scalars()
            assert [key.rpartition(".")[2] for key in left] == ["c"]  # only the "done" mark stays


@pytest.mark.parametrize("kind", DB_KINDS)
def test_chord_and_group_through_a_worker(request: pytest.FixtureRequest, kind: str) -> None:
    from taskq.workflows import chord, group

    app = make_app(request, kind, task_default_queue=f"db-{uuid.uuid4().hex[:8]}")
    add = app.task(name="dbtest.add")(lambda x, y: x + y)
    total = app.task(name="dbtest.total")(lambda values: sum(values))
    worker = RunningWorker(app, concurrency=4)
    worker.start()
    try:
        assert chord(add.s(i, i) for i in range(10))(total.s()).get(timeout=20) == 90
        result = group(add.s(i, 1) for i in range(5)).apply_async()
        result.save()
        restored = GroupResult.restore(result.id, app=app)
        assert restored is not None and restored.get(timeout=20) == [1, 2, 3, 4, 5]
    finally:
        worker.stop()
        app.close()


# -- expiry ----------------------------------------------------------------------------------------


def test_expired_results_are_purged_by_builtin_command_and_beat(app: App) -> None:
    from click.testing import CliRunner

    from taskq.beat_scheduler import Scheduler
    from taskq.cli import Settings
    from taskq.cli_purge_results import purge_results

    backend = backend_of(app)
    old, fresh, pending, gid = (str(uuid.uuid4()) for _ in range(4))
    for task_id in (old, fresh):
        backend.store_result(task_id, 1, states.SUCCESS)
    backend.store_result(pending, None, states.STARTED)
    GroupResult(gid, [AsyncResult(old, app=app)], app=app).save()
    two_days_ago = datetime.utcnow() - timedelta(days=2)
    with backend.engines.engine().begin() as conn:
        task, group = backend.tables.task, backend.tables.group
        conn.execute(sa.update(task).where(task.c.task_id == old).values(date_done=two_days_ago))
        conn.execute(sa.update(group).where(group.c.taskset_id == gid).values(date_done=two_days_ago))
    app.tasks["celery.backend_cleanup"]()  # result_expires: one day
    assert app.AsyncResult(old).state == states.PENDING and GroupResult.restore(gid, app=app) is None
    assert app.AsyncResult(fresh).state == states.SUCCESS
    assert app.AsyncResult(pending).state == states.STARTED  # not done: never expires

    settings = Settings(None, None, None, None, False)
    settings._app = app
    out = CliRunner().invoke(purge_results, ["--older-than", "0.000001"], obj=settings)
    assert out.exit_code == 0 and re.fullmatch(r"\d+ tasks, \d+ groups, \d+ chord deleted\.\n", out.output)
    assert app.AsyncResult(fresh).state == states.PENDING

    entry = Scheduler(app, lazy=True).default_entries()["celery.backend_cleanup"]
    assert entry["task"] == "celery.backend_cleanup" and str(entry["schedule"]) == str(
        __import__("taskq.schedules", fromlist=["crontab"]).crontab("0", "4", "*")
    )
    assert Scheduler(App("nodb", broker="memory://", backend="memory://"), lazy=True).default_entries() == {}


# -- processes, connections, configuration ----------------------------------------------------------


@pytest.mark.parametrize("kind", SERVERS)
def test_a_forked_child_opens_its_own_connection(request: pytest.FixtureRequest, kind: str) -> None:
    app = make_app(request, kind)
    backend = backend_of(app)
    ask = "SELECT pg_backend_pid()" if kind == "db+postgresql" else "SELECT CONNECTION_ID()"
    backend.store_result(str(uuid.uuid4()), "parent", states.SUCCESS)
    parent_id = backend.engines.run(lambda conn: conn.exec_driver_sql(ask).scalar(), RuntimeError)
    child_task = str(uuid.uuid4())
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: store through the inherited backend, report its connection
        code = 1
        try:
            backend.store_result(child_task, "child", states.SUCCESS)
            child_id = backend.engines.run(lambda conn: conn.exec_driver_sql(ask).scalar(), RuntimeError)
            os.write(write, json.dumps(child_id).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    code = wait_child(pid)
    child_id = json.loads(os.read(read, 100) or b"null")
    os.close(read)
    assert code == 0 and child_id is not None and child_id != parent_id
    assert backend.engines.run(lambda conn: conn.exec_driver_sql(ask).scalar(), RuntimeError) == parent_id
    assert app.AsyncResult(child_task).get(timeout=5) == "child"
    app.close()


@pytest.mark.parametrize("kind", SERVERS)
def test_a_connection_killed_by_the_server_is_retried(
    request: pytest.FixtureRequest, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="taskq.backend.database")
    app = make_app(request, kind, database_engine_options={"pool_pre_ping": False, "pool_size": 1})
    backend = backend_of(app)
    ask = "SELECT pg_backend_pid()" if kind == "db+postgresql" else "SELECT CONNECTION_ID()"
    victim = backend.engines.run(lambda conn: conn.exec_driver_sql(ask).scalar(), RuntimeError)
    killer = sa.create_engine(db_url(request, kind).removeprefix("db+"), poolclass=sa.pool.NullPool)
    with killer.begin() as conn:
        if kind == "db+postgresql":
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": victim})
        else:
            conn.exec_driver_sql(f"KILL {int(victim)}")
    killer.dispose()
    task_id = str(uuid.uuid4())
    backend.store_result(task_id, "after the kill", states.SUCCESS)  # the dead connection: retried
    assert app.AsyncResult(task_id).get(timeout=5) == "after the kill"
    assert "retrying a database step" in caplog.text  # the first attempt met the dead connection
    assert backend.engines.run(lambda conn: conn.exec_driver_sql(ask).scalar(), RuntimeError) != victim
    app.close()


def test_an_unreachable_server_is_a_clear_bounded_error() -> None:
    app = App(
        "dbdown", broker="memory://", backend="db+postgresql://postgres:s3cret@127.0.0.1:1/test",
        result_backend_max_retries=2, result_backend_base_sleep_between_retries_ms=1,
    )  # fmt: skip
    start = time.monotonic()
    with pytest.raises(BackendStoreError) as stored:
        app.backend.store_result("x", 1, states.SUCCESS)
    with pytest.raises(OperationalError) as read:
        app.AsyncResult("x").get(timeout=1)
    assert time.monotonic() - start < 10
    for error in (stored.value, read.value):
        assert "postgres:**@127.0.0.1:1" in str(error) and "s3cret" not in str(error)
    app.close()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("db+mysql://root@127.0.0.1/test", "driver is missing.*pymysql"),  # mysqlclient not installed
        ("db+nosuchdb://h/d", "not a usable database URL"),
        ("db+postgresql://h:notaport/d", "not a usable database URL"),
    ],
)
def test_bad_urls_and_missing_drivers_are_improperly_configured(url: str, match: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=match):
        App("dbbad", broker="memory://", backend=url).backend.store_result("x", 1, states.SUCCESS)


def test_without_sqlalchemy_the_error_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['sqlalchemy'] = None\n"
        "from taskq.app import App\n"
        "try:\n    App('x', broker='memory://', backend='db+sqlite://').backend\n"
        "except ImportError as exc:\n    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.startswith("ImproperlyConfigured") and "taskq[sqlalchemy]" in out.stdout, out


def test_tables_are_created_on_first_use_when_not_at_setup(request: pytest.FixtureRequest) -> None:
    url = db_url(request, "db+sqlite")
    app = App("dblazy", broker="memory://", backend=url, database_create_tables_at_setup=False)
    backend = backend_of(app)
    assert not sa.inspect(backend.engines.engine()).has_table("celery_taskmeta")
    backend.store_result("x", 1, states.SUCCESS)
    assert sa.inspect(backend.engines.engine()).get_table_names() == [
        "celery_taskmeta", "celery_tasksetmeta", "taskq_chordmeta",
    ]  # fmt: skip
    app.close()
