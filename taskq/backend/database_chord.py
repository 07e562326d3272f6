"""The key/value steps taskq's chord protocol needs, in a table of their own, locked per chord.

``taskq/backend/chord.py`` counts a chord's parts over ``_get``/``_set``/``_incr``/``_add``...
run inside ``_atomic()`` steps. Here a step is one transaction that first takes a lock named
after the chord's group id, so parts of one chord finishing at the same moment on many workers
are counted one after the other, while different chords never wait for each other:
PostgreSQL's ``pg_advisory_xact_lock`` (released by the commit), MariaDB/MySQL's ``GET_LOCK``
(released right after it), and on SQLite the database's own write lock (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from taskq.backend.database_engine import RETRYABLE, Engines
from taskq.exceptions import BackendError

LOCK_TIMEOUT = 30  # seconds a chord step waits for another step of the same chord (MySQL)
GLOBAL_LOCK = "taskq-chord"


class ChordStore:
    """Rows ``(chord_key, value, expires)``; expired rows read as absent, as Redis keys would."""

    def __init__(self, engines: Engines, table: sa.Table) -> None:
        self.engines = engines
        self.table = table
        self._local = threading.local()

    # -- steps ----------------------------------------------------------------------------------
    @contextmanager
    def locked(self, name: str | None) -> Iterator[None]:
        """Name the lock the steps of this thread take until the block ends (a chord's group id)."""
        previous = getattr(self._local, "name", None)
        self._local.name = name
        try:
            yield
        finally:
            self._local.name = previous

    @contextmanager
    def atomic(self) -> Iterator[None]:
        if getattr(self._local, "conn", None) is not None:  # already inside a step
            yield
            return
        name = getattr(self._local, "name", None) or GLOBAL_LOCK
        conn = self._begin(name)
        dialect = conn.dialect.name
        try:
            self._local.conn = conn
            yield
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            self._local.conn = None
            if dialect in ("mysql", "mariadb"):
                try:
                    conn.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (_lock_name(name),))
                    conn.commit()
                except sa.exc.DBAPIError:
                    pass  # the connection is gone, and the lock with it
            conn.close()

    def _begin(self, name: str) -> sa.Connection:
        """A connection inside a transaction holding ``name``'s lock; retried while connecting."""
        attempt = 0
        while True:
            conn: sa.Connection | None = None
            try:
                conn = self.engines.engine().connect()
                dialect = conn.dialect.name
                if dialect == "sqlite":
                    conn = conn.execution_options(taskq_write=True)
                conn.begin()
                if dialect == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(name)})
                elif dialect in ("mysql", "mariadb"):
                    got = conn.execute(
                        sa.text("SELECT GET_LOCK(:name, :timeout)"),
                        {"name": _lock_name(name), "timeout": LOCK_TIMEOUT},
                    ).scalar()
                    if got != 1:
                        raise BackendError(f"chord {name}: lock not granted within {LOCK_TIMEOUT} s")
                return conn
            except RETRYABLE as exc:
                if conn is not None:
                    conn.close()
                if attempt >= self.engines.retries:
                    raise BackendError(f"{self.engines.masked_url}: chord step failed: {exc}") from exc
                self.engines.invalidate()
                time.sleep(self.engines.backoff(attempt))
                attempt += 1
            except BaseException:
                if conn is not None:
                    conn.close()
                raise

    def _conn(self) -> sa.Connection:
        conn: sa.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            raise RuntimeError("chord store used outside atomic()")
        return conn

    # -- primitives -----------------------------------------------------------------------------
    def _alive(self) -> sa.ColumnElement[bool]:
        expires = self.table.c.expires
        return sa.or_(expires.is_(None), expires > time.time())

    def get(self, key: str) -> bytes | None:
        with self.atomic():
            value = (
                self._conn()
                .execute(sa.select(self.table.c.value).where(self.table.c.chord_key == key, self._alive()))
                .scalar()
            )
        return None if value is None else bytes(value)

    def set(self, key: str, value: bytes | str, ttl: float | None) -> None:
        data = value.encode() if isinstance(value, str) else bytes(value)
        with self.atomic():
            conn = self._conn()
            conn.execute(sa.delete(self.table).where(self.table.c.chord_key == key))
            conn.execute(sa.insert(self.table).values(chord_key=key, value=data, expires=_deadline(ttl)))

    def delete(self, key: str) -> None:
        with self.atomic():
            self._conn().execute(sa.delete(self.table).where(self.table.c.chord_key == key))

    def incr(self, key: str, ttl: float | None) -> int:
        with self.atomic():
            count = int(self.get(key) or 0) + 1
            self.set(key, str(count), ttl)
        return count

    def add(self, key: str, value: bytes | str, ttl: float | None) -> bool:
        with self.atomic():
            if self.get(key) is not None:
                return False
            self.set(key, value, ttl)
        return True

    def expire(self, key: str, ttl: float | None) -> None:
        with self.atomic():
            self._conn().execute(
                sa.update(self.table)
                .where(self.table.c.chord_key == key, self._alive())
                .values(expires=_deadline(ttl))
            )

    def expire_prefix(self, prefix: str, ttl: float | None) -> None:
        with self.atomic():
            self._conn().execute(
                sa.update(self.table)
                .where(self.table.c.chord_key.startswith(prefix, autoescape=True), self._alive())
                .values(expires=_deadline(ttl))
            )

    def delete_prefix(self, prefix: str) -> None:
        with self.atomic():
            self._conn().execute(
                sa.delete(self.table).where(self.table.c.chord_key.startswith(prefix, autoescape=True))
            )

    def purge_expired(self, conn: sa.Connection) -> int:
        """Delete the rows whose time is up (``celery.backend_cleanup``)."""
        expires = self.table.c.expires
        deleted = conn.execute(sa.delete(self.table).where(expires.is_not(None), expires <= time.time()))
        return int(deleted.rowcount or 0)


def _deadline(ttl: float | None) -> float | None:
    return time.time() + ttl if ttl else None


def _lock_key(name: str) -> int:
    """A signed 64-bit key for PostgreSQL's advisory locks."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def _lock_name(name: str) -> str:
    """A MySQL lock name (at most 64 characters) for ``name``."""
    return "taskq-chord-" + hashlib.blake2b(name.encode(), digest_size=16).hexdigest()
