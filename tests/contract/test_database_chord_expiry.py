"""Expiry of the database backend's chord rows, to the second, on SQLite, PostgreSQL and MariaDB.

A chord's claim lives a few seconds (``claim_ttls``). MySQL/MariaDB's bare FLOAT is single
precision, 128-second steps at today's Unix times, so a claim's ``expires`` could be stored
already past: the claim read as absent and every copy of the last part claimed the chord and
sent its body (test_concurrent_chords_send_each_body_once[db+mysql], in about half of each
128 seconds). These tests pin the store's clock where that rounding goes down.
"""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from database_support import DB_KINDS, db_settings, db_url

from taskq.app import App
from taskq.backend import database_chord
from taskq.backend.database import DatabaseBackend

CLAIM = 6  # seconds, the shortest claim taskq takes (claim_ttls: max(5, 2 x join timeout))
NOW = float((int(time.time()) // 128) * 128 + 10)  # float32(NOW + CLAIM) is NOW - 10


def float32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The chord store's time.time(), set by the test."""
    now = [NOW]
    monkeypatch.setattr(database_chord, "time", SimpleNamespace(time=lambda: now[0], sleep=time.sleep))
    yield now


def check_claim(backend: DatabaseBackend, clock: list[float]) -> None:
    assert float32(NOW + CLAIM) < NOW  # the premise: a FLOAT column stores this claim expired
    store, key = backend.chords, f"claim-{uuid.uuid4()}"
    with store.locked(key), store.atomic():
        assert store.add(key, "first", CLAIM)
        assert not store.add(key, "second", CLAIM)
    assert store.get(key) == b"first"
    assert not store.add(key, "second", CLAIM)  # a second claimer is refused while it lives
    table = backend.tables.chord
    with backend.engines.engine().connect() as conn:
        stored = conn.execute(sa.select(table.c.expires).where(table.c.chord_key == key)).scalar()
    assert stored == NOW + CLAIM
    clock[0] = NOW + CLAIM + 0.5
    assert store.get(key) is None
    assert store.add(key, "second", CLAIM)  # and taken once it expired


@pytest.mark.parametrize("kind", DB_KINDS)
def test_a_short_chord_claim_lives_its_seconds(
    request: pytest.FixtureRequest, kind: str, clock: list[float]
) -> None:
    app = App("dbexpiry", broker="memory://", backend=db_url(request, kind), **db_settings(request))
    try:
        backend = app.backend
        assert isinstance(backend, DatabaseBackend)
        backend.prepare()
        check_claim(backend, clock)
    finally:
        app.close()


def test_an_older_single_precision_chord_table_is_widened(
    request: pytest.FixtureRequest, clock: list[float]
) -> None:
    """A chord table an older taskq made with FLOAT ``expires`` becomes DOUBLE, its index kept."""
    url = db_url(request, "db+mysql")
    names = {**db_settings(request)["database_table_names"], "chord": f"tq{uuid.uuid4().hex[:10]}_oldchord"}
    engine = sa.create_engine(url.removeprefix("db+"), poolclass=sa.pool.NullPool)
    old = sa.Table(
        names["chord"],
        sa.MetaData(),
        sa.Column("chord_key", sa.String(255), primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("expires", sa.Float, nullable=True, index=True),
    )
    old.create(engine)
    app = App("dbwiden", broker="memory://", backend=url, database_table_names=names)
    try:
        backend = app.backend
        assert isinstance(backend, DatabaseBackend)
        backend.prepare()
        inspector = sa.inspect(engine)
        expires = next(c for c in inspector.get_columns(names["chord"]) if c["name"] == "expires")
        assert isinstance(expires["type"], sa.Double) and expires["nullable"]
        assert [ix["column_names"] for ix in inspector.get_indexes(names["chord"])] == [["expires"]]
        check_claim(backend, clock)
    finally:
        app.close()
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {names['chord']}")
        engine.dispose()
