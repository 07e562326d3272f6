"""kombu's SQLAlchemy transport as taskq names it (taskq/broker/sqla.py), on the real servers.

Two sessions creating the same new queue: kombu inserts the queue row after a check that the
other session's committed row can be hidden from (MySQL's and MariaDB's REPEATABLE READ
snapshot; any database when the other session is in another process). The first send to a new
queue must still go through, once, into the one queue row.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import broker_servers
import pytest
from broker_servers import mysql_sqla_url, pg_sqla_url  # noqa: F401 (fixtures)
from kombu import Connection

from taskq.broker import sqla

SERVERS = ["sqla+mysql", "sqla+postgresql"]


@pytest.fixture(params=SERVERS)
def snapshot_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The server's URL with REPEATABLE READ on a fresh engine: each session keeps the snapshot
    of its first query, so the race is the same every run (and MySQL's default anyway)."""
    url = request.getfixturevalue("mysql_sqla_url" if request.param == "sqla+mysql" else "pg_sqla_url")
    yield (
        f"{url}?application_name=race{uuid.uuid4().hex[:6]}"
        if "postgresql" in url
        else f"{url}?charset=utf8mb4"
    )


def connect(url: str) -> Connection:
    options = {**broker_servers.TABLES, "isolation_level": "REPEATABLE READ", "polling_interval": 0.01}
    return Connection(url, transport=sqla.Transport, transport_options=options)


def queue_rows(channel: Any, name: str) -> int:
    channel.session.rollback()  # a fresh snapshot
    return int(channel.session.query(channel.queue_cls).filter(channel.queue_cls.name == name).count())


def test_a_queue_created_by_another_session_meanwhile_is_used(snapshot_url: str) -> None:
    name = f"race-{uuid.uuid4().hex[:8]}"
    with connect(snapshot_url) as first, connect(snapshot_url) as second:
        a, b = first.default_channel, second.default_channel
        assert queue_rows(a, name) == 0  # a's snapshot is taken: b's row will be invisible to it
        b._put(name, {"body": "from b"})
        a._put(name, {"body": "from a"})  # kombu alone: IntegrityError, the message lost
        assert queue_rows(b, name) == 1
        got = sorted(b._get(name)["body"] for _ in range(2))
        assert got == ["from a", "from b"]
