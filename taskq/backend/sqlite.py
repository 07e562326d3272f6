"""SQLite result backend: results of the embedded default, in the broker's file by default.

Stores the same meta bytes the Redis backend stores (Celery's JSON), keyed the same way, so
moving from the embedded default to Redis changes nothing but the URL. SQLite cannot notify
another process, so ``get()`` polls with a short, capped back-off; an indexed primary-key read
is cheap enough for that.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from taskq.backend.base import ResultBackend
from taskq.broker.sqlite import path_from_url
from taskq.exceptions import BackendError

if TYPE_CHECKING:
    from taskq.app import App

BUSY_TIMEOUT_MS = 5000
POLL_CAP = 0.05  # the longest pause between two reads while waiting for a result
PURGE_EVERY = 1000  # expired rows are deleted once every this many writes

_SCHEMA = """
CREATE TABLE IF NOT EXISTS taskq_result (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL);
CREATE INDEX IF NOT EXISTS taskq_result_expires ON taskq_result (expires) WHERE expires IS NOT NULL;
"""


def _retry_locked(action: Callable[[], None], attempts: int = 50) -> None:
    """Retry what SQLite refuses with "database is locked" without calling the busy handler.

    Schema and journal-mode changes can fail at once when another process opens the same file
    at the same moment (SQLite skips the busy handler where waiting could deadlock).
    """
    for attempt in range(attempts):
        try:
            action()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.01 * (attempt + 1))


class SQLiteBackend(ResultBackend):
    """Results in a SQLite file; one connection per thread (pool threads store concurrently)."""

    poll_cap = POLL_CAP

    supports_native_chord = True

    def __init__(self, app: App, url: str | None = None) -> None:
        super().__init__(app, url)
        self.path = path_from_url(url or "sqlite://")
        self._local = threading.local()
        self._writes = 0
        self._ready = False
        self._db()  # open now: a bad path is reported at configuration time

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
                db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                db.execute("PRAGMA synchronous = NORMAL")
                if not self._ready:
                    _retry_locked(lambda: self._prepare(db))
                    self._ready = True
            except sqlite3.Error as exc:
                raise BackendError(f"cannot use {self.path!r} as SQLite result store: {exc}") from exc
            self._local.db = db
        return db

    @staticmethod
    def _prepare(db: sqlite3.Connection) -> None:
        # Switching to WAL takes an exclusive lock; skip it when another process already did.
        if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            db.execute("PRAGMA journal_mode = WAL").fetchall()
        db.executescript(_SCHEMA)

    def _get(self, key: str) -> bytes | str | None:
        row = (
            self._db()
            .execute(
                "SELECT value FROM taskq_result WHERE key = ? AND (expires IS NULL OR expires > ?)",
                (key, time.time()),
            )
            .fetchone()
        )
        return None if row is None else row[0]

    def _set(self, key: str, value: bytes | str, ttl: float | None) -> None:
        db = self._db()
        expires = time.time() + ttl if ttl else None
        db.execute(
            "INSERT OR REPLACE INTO taskq_result (key, value, expires) VALUES (?, ?, ?)",
            (key, value, expires),
        )
        self._writes += 1
        if self._writes % PURGE_EVERY == 0:
            db.execute("DELETE FROM taskq_result WHERE expires < ?", (time.time(),))

    def _delete(self, key: str) -> None:
        self._db().execute("DELETE FROM taskq_result WHERE key = ?", (key,))

    # -- chord primitives: a step is one IMMEDIATE transaction (other writers wait) -------------
    @contextmanager
    def _atomic(self) -> Iterator[None]:
        db = self._db()
        if db.in_transaction:  # already inside one step
            yield
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _incr(self, key: str, ttl: float | None) -> int:
        now = time.time()
        row = (
            self._db()
            .execute(
                "INSERT INTO taskq_result (key, value, expires) VALUES (?, '1', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = CASE WHEN expires IS NOT NULL AND expires <= ? "
                "THEN '1' ELSE CAST(CAST(value AS INTEGER) + 1 AS TEXT) END, expires = excluded.expires "
                "RETURNING value",
                (key, now + ttl if ttl else None, now),
            )
            .fetchall()
        )
        return int(row[0][0])

    def _add(self, key: str, value: bytes | str, ttl: float | None) -> bool:
        now = time.time()
        cursor = self._db().execute(
            "INSERT INTO taskq_result (key, value, expires) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires "
            "WHERE taskq_result.expires IS NOT NULL AND taskq_result.expires <= ?",
            (key, value, now + ttl if ttl else None, now),
        )
        return cursor.rowcount > 0

    def _expire(self, key: str, ttl: float | None) -> None:
        now = time.time()
        self._db().execute(
            "UPDATE taskq_result SET expires = ? WHERE key = ? AND (expires IS NULL OR expires > ?)",
            (now + ttl if ttl else None, key, now),
        )

    def _expire_prefix(self, prefix: str, ttl: float | None) -> None:
        now = time.time()
        self._db().execute(
            "UPDATE taskq_result SET expires = ? WHERE key >= ? AND key < ? AND (expires IS NULL OR expires > ?)",
            (now + ttl if ttl else None, prefix, _after(prefix), now),
        )

    def _delete_prefix(self, prefix: str) -> None:
        self._db().execute("DELETE FROM taskq_result WHERE key >= ? AND key < ?", (prefix, _after(prefix)))

    def cleanup(self) -> None:
        """``celery.backend_cleanup``: delete the rows whose time is up."""
        self._db().execute("DELETE FROM taskq_result WHERE expires < ?", (time.time(),))

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def _after(prefix: str) -> str:
    """The smallest string greater than every string that starts with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)
