"""Shared fixtures: real servers for service tests, isolated per run.

A service test must talk to a real Redis or RabbitMQ. On a laptop without them the test is
skipped with a loud reason; under ``CI=true`` a missing server is a failure, so CI can never
go green by skipping what it was meant to prove.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_HOST = os.environ.get("TASKQ_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("TASKQ_TEST_REDIS_PORT", "6379"))
# Each run takes a Redis DB of its own (1-14; the vectors were captured in 15), flushed before and
# after, so two runs on one machine never flush each other's keys. TASKQ_TEST_REDIS_DB forces one.
REDIS_DB_ENV = os.environ.get("TASKQ_TEST_REDIS_DB")
RUN_ID = uuid.uuid4().hex
LOCK_KEY = "taskq-test-run"
AMQP_HOST = os.environ.get("TASKQ_TEST_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("TASKQ_TEST_AMQP_PORT", "5672"))
PG_HOST = os.environ.get("TASKQ_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TASKQ_TEST_PG_PORT", "5432"))
MYSQL_HOST = os.environ.get("TASKQ_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("TASKQ_TEST_MYSQL_PORT", "3306"))


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def need_service(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: service tests must run, not skip)")
    pytest.skip(f"SKIPPED SERVICE TEST: {message}; start it to run this test")


def flush(client: Any) -> None:
    """Empty this run's DB, keeping the mark that reserves it."""
    client.flushdb()
    client.set(LOCK_KEY, RUN_ID, ex=3600)


def _claim_db(redis: Any) -> Any:
    candidates = [int(REDIS_DB_ENV)] if REDIS_DB_ENV else range(1, 15)
    for db in candidates:
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
        if REDIS_DB_ENV or client.set(LOCK_KEY, RUN_ID, nx=True, ex=3600):
            return client
        client.close()
    pytest.fail("every Redis DB 1-14 is reserved by another test run (key taskq-test-run)")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://`` URL of this run's own DB, flushed before and after."""
    need_service("Redis", REDIS_HOST, REDIS_PORT)
    import redis

    client = _claim_db(redis)
    flush(client)
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{client.connection_pool.connection_kwargs['db']}"
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_url)
    flush(client)
    yield client
    client.close()


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """``amqp://`` URL of a RabbitMQ vhost made for this run and deleted after it."""
    need_service("RabbitMQ", AMQP_HOST, AMQP_PORT)
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:  # a remote server: share the default vhost, queues are per test anyway
        yield f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}//"
        return
    vhost = f"taskq-test-{uuid.uuid4().hex[:8]}"
    subprocess.run([ctl, "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        [ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    yield f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{vhost}"
    subprocess.run([ctl, "delete_vhost", vhost], capture_output=True)


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    return f"sqlite:///{tmp_path}/taskq.sqlite3"


@pytest.fixture(scope="session")
def db_table_names() -> dict[str, str]:
    """``database_table_names`` of this run's own tables (the URL fixtures drop them after it)."""
    prefix = f"tq{RUN_ID[:10]}_"
    return {"task": f"{prefix}taskmeta", "group": f"{prefix}tasksetmeta", "chord": f"{prefix}chordmeta"}


def _drop_tables(url: str, names: dict[str, str]) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url.removeprefix("db+"))
    with engine.begin() as conn:
        for name in names.values():
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
    engine.dispose()


@pytest.fixture(scope="session")
def postgresql_url(db_table_names: dict[str, str]) -> Iterator[str]:
    """``db+postgresql://`` URL of the local server's ``test`` database; this run's tables dropped after."""
    need_service("PostgreSQL", PG_HOST, PG_PORT)
    url = f"db+postgresql://postgres@{PG_HOST}:{PG_PORT}/test"
    yield url
    _drop_tables(url, db_table_names)


@pytest.fixture(scope="session")
def mysql_url(db_table_names: dict[str, str]) -> Iterator[str]:
    """``db+mysql+pymysql://`` URL of the local MariaDB's ``test`` database; this run's tables dropped after."""
    need_service("MariaDB", MYSQL_HOST, MYSQL_PORT)
    url = f"db+mysql+pymysql://root@{MYSQL_HOST}:{MYSQL_PORT}/test"
    yield url
    _drop_tables(url, db_table_names)
