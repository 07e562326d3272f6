"""Helpers for the database result backend's tests: URLs of this run's tables, raw rows."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from kombu.utils.encoding import ensure_bytes

DB_KINDS = ("db+sqlite", "db+postgresql", "db+mysql")


def db_url(request: pytest.FixtureRequest, kind: str) -> str:
    """The URL for ``kind``: a SQLite file of the test, or the local PostgreSQL / MariaDB."""
    if kind == "db+sqlite":
        return "db+" + request.getfixturevalue("sqlite_url")
    return str(request.getfixturevalue("postgresql_url" if kind == "db+postgresql" else "mysql_url"))


def db_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {"database_table_names": request.getfixturevalue("db_table_names")}


def write_row(backend: Any, task_id: str, **columns: Any) -> None:
    """Replace the task's row by one with exactly ``columns``, as another writer could leave it."""
    table = backend.tables.task
    with backend.engines.engine().begin() as conn:
        conn.execute(sa.delete(table).where(table.c.task_id == task_id))
        conn.execute(sa.insert(table).values(task_id=task_id, **columns))


def inject_row(backend: Any, task_id: str, raw: bytes) -> None:
    """A meta in JSON goes into its columns (encoded as a writer would); anything else into
    the ``result`` column of a SUCCESS row, where a reader has to decode it."""
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = None
    if isinstance(meta, dict) and "status" in meta:
        write_row(
            backend,
            task_id,
            status=meta["status"],
            result=ensure_bytes(backend.encode(meta.get("result"))),
            traceback=meta.get("traceback"),
        )
    else:
        write_row(backend, task_id, status="SUCCESS", result=raw)
