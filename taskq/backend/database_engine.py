"""SQLAlchemy engines for the database result backend: one per process, retried, clearly failing.

A pooled connection copied into a forked child would be shared with the parent (two processes
talking over one socket garble each other's replies), so every engine is dropped in a forked
child without closing the parent's sockets (``dispose(close=False)``, SQLAlchemy's recipe for
``os.fork``), and the child opens its own on first use. This covers the prefork pool, whose
children billiard forks.

Like Celery's database backend, a step that failed on a lost connection, a deadlock or a
concurrent insert is retried a bounded number of times with backoff, on a fresh connection;
after that the caller gets one taskq error naming the (masked) URL.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from taskq.exceptions import ImproperlyConfigured

try:
    import sqlalchemy as sa
    from sqlalchemy import event
    from sqlalchemy.pool import NullPool
except ImportError as _exc:  # pragma: no cover - the extra is not installed
    raise ImproperlyConfigured(
        "the database result backend (db+...://) needs SQLAlchemy 2: pip install 'taskq[sqlalchemy]'"
    ) from _exc

logger = logging.getLogger("taskq.backend.database")

T = TypeVar("T")
#: errors worth another attempt on a new connection (lost connection, deadlock, insert race)
RETRYABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.IntegrityError, sa.exc.TimeoutError)
DRIVER_HINT = {
    "postgresql": "pip install 'psycopg[binary]' (SQLAlchemy 2.1's default), or name the driver: db+postgresql+psycopg2://",
    "mysql": "pip install mysqlclient (or use db+mysql+pymysql://... with PyMySQL)",
    "mariadb": "pip install mysqlclient (or use db+mariadb+pymysql://... with PyMySQL)",
}

_ENGINES: weakref.WeakSet[Engines] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for engines in list(_ENGINES):
        engines.forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Engines:
    """The engine of one backend in this process, and the retry loop around its transactions."""

    def __init__(
        self,
        url: str,
        masked_url: str,
        options: Mapping[str, Any] | None = None,
        callback: Callable[[sa.Engine], Any] | None = None,
        short_lived: bool = False,
        retries: int = 3,
        base_sleep: float = 0.01,
        max_sleep: float = 10.0,
    ) -> None:
        self.url = url
        self.masked_url = masked_url
        self.options = dict(options or {})
        self.callback = callback
        self.short_lived = short_lived
        self.retries = retries
        self.base_sleep = base_sleep
        self.max_sleep = max_sleep
        self._engine: sa.Engine | None = None
        self._lock = threading.Lock()
        _ENGINES.add(self)

    @property
    def dialect(self) -> str:
        return self.engine().dialect.name

    def engine(self) -> sa.Engine:
        engine = self._engine
        if engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._create()
                engine = self._engine
        return engine

    def _create(self) -> sa.Engine:
        options = dict(self.options)
        if self.short_lived:  # no connection kept between two steps
            options = {k: v for k, v in options.items() if not k.startswith("pool") and k != "max_overflow"}
            options["poolclass"] = NullPool
        try:
            url = sa.engine.make_url(self.url)
            if url.get_backend_name() == "mysql" or url.get_backend_name() == "mariadb":
                # no gap locks: concurrent inserts of new task ids must not deadlock each other
                options.setdefault("isolation_level", "READ COMMITTED")
            engine = sa.create_engine(url, **options)
        except ImportError as exc:
            backend = self.url.partition(":")[0].partition("+")[0]
            hint = DRIVER_HINT.get(backend, "install the DBAPI driver SQLAlchemy names")
            raise ImproperlyConfigured(f"{self.masked_url}: the database driver is missing ({exc}); {hint}")
        except (sa.exc.ArgumentError, TypeError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"{self.masked_url}: not a usable database URL or engine option: {exc}"
            )
        if engine.dialect.name == "sqlite":
            _sqlite_transactions(engine)
        if self.callback is not None:
            self.callback(engine)
        return engine

    def run(self, step: Callable[[sa.Connection], T], error: type[Exception], write: bool = False) -> T:
        """``step`` in one transaction, retried on a new connection when that can help."""
        attempt = 0
        while True:
            try:
                engine = self.engine()
                with engine.connect() as conn:
                    if write and engine.dialect.name == "sqlite":
                        conn = conn.execution_options(taskq_write=True)
                    with conn.begin():
                        return step(conn)
            except RETRYABLE as exc:
                if attempt >= self.retries:
                    raise error(f"{self.masked_url}: {_reason(exc)} (after {attempt + 1} attempts)") from exc
                if not isinstance(exc, sa.exc.IntegrityError):
                    self.invalidate()
                logger.debug("retrying a database step after %s", _reason(exc))
                time.sleep(self.backoff(attempt))
                attempt += 1
            except sa.exc.SQLAlchemyError as exc:
                raise error(f"{self.masked_url}: {_reason(exc)}") from exc

    def backoff(self, attempt: int) -> float:
        """Exponential with full jitter, as Celery's ``get_exponential_backoff_interval``."""
        return random.uniform(0, min(self.max_sleep, self.base_sleep * 2**attempt))

    def invalidate(self) -> None:
        """Drop the pool (a server restart leaves every pooled connection dead)."""
        engine = self._engine
        if engine is not None:
            engine.dispose()

    def forget_after_fork(self) -> None:
        engine, self._engine = self._engine, None
        self._lock = threading.Lock()
        if engine is not None:
            engine.dispose(close=False)

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return f"{type(orig or exc).__name__}: {str(orig or exc).strip().splitlines()[0]}"


def _sqlite_transactions(engine: sa.Engine) -> None:
    """Real transactions on SQLite: ``BEGIN IMMEDIATE`` for writes, so a read-then-write step
    holds the write lock from its first read (pysqlite would begin only at the first write)."""

    @event.listens_for(engine, "connect")
    def connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's BEGIN events decide
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 5000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get("taskq_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
