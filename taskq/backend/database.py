"""SQL database result backend (``db+postgresql://``, ``db+mysql://``, ``db+sqlite:///``...).

Rows are exactly those of Celery 5.7's database backend: one row per task in
``celery_taskmeta`` (result, children, args and kwargs encoded with ``result_serializer``;
``date_done`` in UTC without a zone), one per saved group in ``celery_tasksetmeta`` (the group's
result tuple), so a Celery worker and a taskq client, or the reverse, share the tables. A
SUCCESS already stored is never overwritten (the row is locked while it is checked).

Chords are counted by taskq's own protocol in a third table (``database_chord.py``); a Celery
client's chord on this backend sends ``celery.chord_unlock``, which taskq workers run too. Set
``supports_native_chord = False`` on the backend class (or in a subclass) to make taskq clients
send ``chord_unlock`` as Celery clients do, when Celery workers run the header tasks.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from kombu.utils.encoding import ensure_bytes
from kombu.utils.imports import symbol_by_name

from taskq import states
from taskq.backend import database_engine, database_models
from taskq.backend.base import ResultBackend
from taskq.backend.database_chord import ChordStore
from taskq.backend.database_engine import sa  # imported there, with a clear error if missing
from taskq.backend.database_pickle import loads_plain, looks_pickled
from taskq.exceptions import (
    BackendError,
    BackendGetMetaError,
    BackendStoreError,
    ImproperlyConfigured,
    OperationalError,
    SecurityError,
)

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.result import GroupResult

logger = logging.getLogger("taskq.backend.database")
T = TypeVar("T")
POLL_CAP = 0.1  # the longest pause between two reads while a client waits for a result
DEFAULT_RETRIES = 3  # Celery's database backend retries three times unless told otherwise


def sqlalchemy_url(url: str | None, database_url: str | None) -> str:
    """The SQLAlchemy URL in ``db+<url>`` (Celery's form), or ``database_url`` for a bare ``db``."""
    if url and "://" in url:
        scheme, _, rest = url.partition("://")
        if scheme.lower().startswith("db+"):
            return f"{scheme[3:]}://{rest}"
        return url
    if database_url:
        return str(database_url)
    raise ImproperlyConfigured(
        "the database result backend needs a URL: result_backend='db+postgresql://user@host/db' "
        "(or set database_url)"
    )


class DatabaseBackend(ResultBackend):
    """Celery's database backend layout over SQLAlchemy 2, with taskq's chord counting."""

    poll_cap = POLL_CAP

    supports_native_chord = True
    supports_autoexpire = False  # expired rows stay until celery.backend_cleanup (beat, 4 a.m.)

    def __init__(self, app: App, url: str | None = None) -> None:
        super().__init__(app, url)
        conf = app.conf
        self.db_url = sqlalchemy_url(url, conf.get("database_url"))
        if not url or "://" not in url:
            self.url = url = self.db_url
        self.tables = database_models.make_tables(
            conf.get("database_table_names"), conf.get("database_table_schemas"), self.extended
        )
        retries = conf.get("result_backend_max_retries")
        self.engines = database_engine.Engines(
            self.db_url,
            self.masked_url,
            options=conf.get("database_engine_options"),
            callback=_callback(conf.get("database_engine_callback")),
            short_lived=bool(conf.get("database_short_lived_sessions")),
            retries=DEFAULT_RETRIES if retries is None or retries == float("inf") else int(retries),
            base_sleep=(conf.get("result_backend_base_sleep_between_retries_ms") or 10) / 1000,
            max_sleep=(conf.get("result_backend_max_sleep_between_retries_ms") or 10000) / 1000,
        )
        self.chords = ChordStore(self.engines, self.tables.chord)
        self._columns: set[str] | None = None
        self._prepare_lock = threading.Lock()
        if conf.get("database_create_tables_at_setup", True):
            try:
                self.prepare()
            except OperationalError as exc:  # a worker may start before its database: next use tries again
                logger.warning("result tables not ready yet: %s", exc)

    # -- tables ---------------------------------------------------------------------------------
    def prepare(self) -> set[str]:
        """Create the tables if missing (once per backend); the task table's columns."""
        if self._columns is None:
            with self._prepare_lock:
                if self._columns is None:
                    try:
                        self._columns = database_models.prepare(self.engines.engine(), self.tables)
                    except sa.exc.SQLAlchemyError as exc:
                        raise OperationalError(
                            f"{self.masked_url}: cannot create or inspect the result tables: "
                            f"{database_engine._reason(exc)}"
                        ) from exc
        return self._columns

    def _run(self, step: Callable[[sa.Connection], T], error: type[Exception], write: bool = False) -> T:
        try:
            self.prepare()
        except OperationalError as exc:
            raise error(str(exc)) from exc
        return self.engines.run(step, error, write)

    @property
    def masked_url(self) -> str:
        try:
            return super().masked_url
        except ValueError:  # kombu cannot parse it (a bad port): mask by hand, for the error
            return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1**@", self.url or "")

    # -- tasks ----------------------------------------------------------------------------------
    def store_result(
        self, task_id: str, result: Any, state: str, traceback: str | None = None, request: Any = None
    ) -> dict[str, Any]:
        meta = self.make_meta(task_id, result, state, traceback, request)
        table = self.tables.task

        def write(conn: sa.Connection) -> None:
            row = self._row(meta)
            current = conn.execute(
                sa.select(table.c.id, table.c.status).where(table.c.task_id == task_id).with_for_update()
            ).first()
            if current is None:
                conn.execute(sa.insert(table).values(task_id=task_id, **row))
            elif current.status != states.SUCCESS:  # a stored SUCCESS wins over any later write
                conn.execute(sa.update(table).where(table.c.id == current.id).values(**row))

        self._run(write, BackendStoreError, write=True)
        return meta

    def _row(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Column values for ``meta``, as Celery's ``_update_result`` writes them."""
        columns = self.prepare()
        date_done = meta.get("date_done")
        row: dict[str, Any] = {
            "status": meta["status"],
            "result": ensure_bytes(self.encode(meta["result"])),
            "date_done": _utc_naive(date_done) if date_done else None,
            "traceback": meta.get("traceback"),
        }
        if "children" in columns:
            children = meta.get("children")
            row["children"] = ensure_bytes(self.encode(children)) if children else None
        if self.extended:
            for name in ("name", "worker", "retries", "queue"):
                if name in columns and name in meta:
                    row[name] = meta[name]
            for name in ("args", "kwargs"):
                if name in columns and name in meta:
                    row[name] = ensure_bytes(self.encode(meta[name]))
        return row

    def get_task_meta(self, task_id: str) -> dict[str, Any]:
        columns = self.prepare()
        table = self.tables.task
        wanted = [c for c in table.c if c.name in columns and c.name not in ("id", "stamps")]
        row = self._run(
            lambda conn: conn.execute(sa.select(*wanted).where(table.c.task_id == task_id)).first(),
            OperationalError,
        )
        if row is None:
            return {"status": states.PENDING, "result": None, "task_id": task_id}
        return self._meta(task_id, row._mapping)

    def _meta(self, task_id: str, row: Any) -> dict[str, Any]:
        where = f"result of task {task_id} in {self.masked_url}"
        status = row["status"]
        if not isinstance(status, str) or not status:
            raise BackendGetMetaError(f"{where} is malformed: status {status!r}")
        date_done = row["date_done"]
        if isinstance(date_done, datetime) and date_done.tzinfo is None:
            date_done = date_done.replace(tzinfo=timezone.utc)
        meta: dict[str, Any] = {
            "status": status,
            "result": self._column(where, "result", row["result"]),
            "traceback": row["traceback"],
            "children": self._column(where, "children", row.get("children")),
            "date_done": date_done,
        }
        if self.extended:
            for name in ("name", "args", "kwargs", "worker", "retries", "queue"):
                if name in row:
                    value = row[name]
                    meta[name] = self._column(where, name, value) if name in ("args", "kwargs") else value
        meta["task_id"] = task_id
        return meta

    def _column(self, where: str, name: str, payload: Any) -> Any:
        """One encoded column; a legacy pickle (Celery < 5.7's PickleType) only if plain data."""
        if payload is None:
            return None
        payload = bytes(payload) if not isinstance(payload, str) else payload.encode()
        try:
            return self.decode(payload)
        except Exception as exc:
            if looks_pickled(payload):
                try:
                    return loads_plain(payload)
                except SecurityError:
                    raise
                except Exception as pickle_exc:
                    raise BackendGetMetaError(f"{where}: column {name} cannot be unpickled: {pickle_exc}")
            raise BackendGetMetaError(
                f"{where}: column {name} cannot be decoded: {type(exc).__name__}: {exc}"
            )

    def forget(self, task_id: str) -> None:
        table = self.tables.task
        self._run(lambda conn: conn.execute(sa.delete(table).where(table.c.task_id == task_id)), BackendError)

    # -- groups ---------------------------------------------------------------------------------
    def save_group(self, group_id: str, result: GroupResult) -> GroupResult:
        table = self.tables.group
        value = ensure_bytes(self.encode(result.as_tuple()))
        now = _utc_naive(self.app.now().isoformat())

        def write(conn: sa.Connection) -> None:
            conn.execute(sa.delete(table).where(table.c.taskset_id == group_id))
            conn.execute(sa.insert(table).values(taskset_id=group_id, result=value, date_done=now))

        self._run(write, BackendStoreError, write=True)
        return result

    def restore_group(self, group_id: str) -> GroupResult | None:
        from taskq.result import GroupResult, result_from_tuple

        table = self.tables.group
        payload = self._run(
            lambda conn: conn.execute(
                sa.select(table.c.result).where(table.c.taskset_id == group_id)
            ).scalar(),
            OperationalError,
        )
        if payload is None:
            return None
        where = f"group {group_id} in {self.masked_url}"
        value = self._column(where, "result", payload)
        try:
            restored = result_from_tuple(value, self.app)
        except Exception as exc:
            raise BackendGetMetaError(f"{where} is malformed: {value!r:.200}") from exc
        if not isinstance(restored, GroupResult):
            raise BackendGetMetaError(f"{where} is malformed: {value!r:.200}")
        return restored

    def delete_group(self, group_id: str) -> None:
        table = self.tables.group
        self._run(
            lambda conn: conn.execute(sa.delete(table).where(table.c.taskset_id == group_id)), BackendError
        )

    # -- chords: taskq's protocol (chord.py) over the chord table, one lock per chord ------------
    def set_chord_size(self, group_id: str, size: int) -> None:
        self.prepare()
        with self.chords.locked(group_id), self.chords.atomic():
            super().set_chord_size(group_id, size)

    def add_to_chord(self, group_id: str, result: Any) -> None:
        self.prepare()
        with self.chords.locked(group_id):
            super().add_to_chord(group_id, result)

    def on_chord_part_return(self, request: Any, state: str, result: Any) -> None:
        if getattr(request, "chord", None) and getattr(request, "group", None):
            self.prepare()
            with self.chords.locked(request.group):
                super().on_chord_part_return(request, state, result)

    def _atomic(self) -> AbstractContextManager[Any]:
        return self.chords.atomic()

    def _get(self, key: str) -> bytes | str | None:
        return self.chords.get(key)

    def _set(self, key: str, value: bytes | str, ttl: float | None) -> None:
        self.chords.set(key, value, ttl)

    def _delete(self, key: str) -> None:
        self.chords.delete(key)

    def _incr(self, key: str, ttl: float | None) -> int:
        return self.chords.incr(key, ttl)

    def _add(self, key: str, value: bytes | str, ttl: float | None) -> bool:
        return self.chords.add(key, value, ttl)

    def _expire(self, key: str, ttl: float | None) -> None:
        self.chords.expire(key, ttl)

    def _expire_prefix(self, prefix: str, ttl: float | None) -> None:
        self.chords.expire_prefix(prefix, ttl)

    def _delete_prefix(self, prefix: str) -> None:
        self.chords.delete_prefix(prefix)

    # -- expiry ---------------------------------------------------------------------------------
    def cleanup(self) -> None:
        """``celery.backend_cleanup``: delete results older than ``result_expires``."""
        self.purge_expired()

    def purge_expired(self, expires: float | None = None) -> dict[str, int]:
        """Delete tasks and groups done more than ``expires`` (default ``result_expires``) seconds
        ago, and chord rows whose time is up; how many rows of each went."""
        expires = self.expires if expires is None else expires
        task, group = self.tables.task, self.tables.group

        def purge(conn: sa.Connection) -> dict[str, int]:
            deleted = {"tasks": 0, "groups": 0, "chord": self.chords.purge_expired(conn)}
            if expires:
                before = _utc_naive(self.app.now().isoformat()) - timedelta(seconds=expires)
                rows = conn.execute(sa.delete(task).where(task.c.date_done < before))
                deleted["tasks"] = int(rows.rowcount or 0)
                rows = conn.execute(sa.delete(group).where(group.c.date_done < before))
                deleted["groups"] = int(rows.rowcount or 0)
            return deleted

        return self._run(purge, BackendError, write=True)

    def close(self) -> None:
        self.engines.close()


def _utc_naive(value: str | datetime) -> datetime:
    """UTC without a zone, as Celery's ``DateTime`` columns hold it."""
    when = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    return when


def _callback(value: Any) -> Callable[[Any], Any] | None:
    """``database_engine_callback``: a callable or its dotted name, called with each new engine."""
    if isinstance(value, str):
        value = symbol_by_name(value)
    if value is not None and not callable(value):
        raise ImproperlyConfigured(f"database_engine_callback must be callable, got {value!r}")
    return value


__all__ = ["DatabaseBackend", "sqlalchemy_url"]
