"""Celery's result tables, column for column, so Celery and taskq workers share one database.

The names, types and sequences are those of Celery 5.7's ``celery.backends.database.models``:
a Celery worker inserting into a table taskq created (or the reverse) takes ids from the same
sequence and finds every column where it expects it. Two differences, neither visible to Celery:
binary columns are LONGBLOB on MySQL/MariaDB (Celery's BLOB stops at 64 KiB), and taskq adds a
table of its own for chord counting (``taskq_chordmeta``), which Celery never reads.

The chord table's ``expires`` (a Unix time) is DOUBLE on MySQL/MariaDB: there a bare FLOAT is
single precision, 128-second steps at today's times, so a chord's claim (a few seconds) could be
stored as already expired and every copy of the last part claimed the chord and sent its body.
A table made that way by an older taskq is widened when the backend prepares its tables.

Tables live in a :class:`~sqlalchemy.MetaData` per backend, not module-wide as in Celery, so two
apps with different ``database_table_names`` in one process do not rename each other's tables.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

logger = logging.getLogger("taskq.backend.database")

PREPARE_ATTEMPTS = 4  # a lost creation race resolves at once; a dead server must fail fast
TASK_TABLE = "celery_taskmeta"
GROUP_TABLE = "celery_tasksetmeta"
CHORD_TABLE = "taskq_chordmeta"
#: the extended columns (``result_extended``), as Celery's ``TaskExtended`` adds them
EXTENDED_COLUMNS = ("name", "args", "kwargs", "worker", "retries", "queue", "stamps")

_ID = sa.Integer().with_variant(sa.BigInteger(), "mssql")
_BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
#: a Unix time to the microsecond: a plain FLOAT is single precision on MySQL/MariaDB
_TIME = sa.Float().with_variant(mysql.DOUBLE(asdecimal=False), "mysql", "mariadb")
_KEY = sa.String(255).with_variant(  # chord keys hold task ids: compared case-sensitively
    mysql.VARCHAR(255, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
)


@dataclass
class Tables:
    """The three tables of one backend and the columns the task table should have."""

    metadata: sa.MetaData
    task: sa.Table
    group: sa.Table
    chord: sa.Table


def make_tables(names: Mapping[str, str] | None, schemas: Mapping[str, str] | None, extended: bool) -> Tables:
    """Tables named by ``database_table_names`` / ``database_table_schemas`` (keys ``task``, ``group``).

    ``chord`` names taskq's own table the same way (schema: the group table's).
    """
    names, schemas = names or {}, schemas or {}
    metadata = sa.MetaData()
    task_schema, group_schema = schemas.get("task"), schemas.get("group")
    columns: list[sa.Column[object]] = [
        sa.Column(
            "id",
            _ID,
            sa.Sequence("task_id_sequence", schema=task_schema),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("task_id", sa.String(155), unique=True),
        sa.Column("status", sa.String(50)),
        sa.Column("result", _BLOB, nullable=True),
        sa.Column("date_done", sa.DateTime, nullable=True, index=True),
        sa.Column("traceback", sa.Text, nullable=True),
        sa.Column("children", _BLOB, nullable=True),
    ]
    if extended:
        columns += [
            sa.Column("name", sa.String(155), nullable=True),
            sa.Column("args", _BLOB, nullable=True),
            sa.Column("kwargs", _BLOB, nullable=True),
            sa.Column("worker", sa.String(155), nullable=True),
            sa.Column("retries", sa.Integer, nullable=True),
            sa.Column("queue", sa.String(155), nullable=True),
            sa.Column("stamps", _BLOB, nullable=True),
        ]
    task = sa.Table(
        names.get("task") or TASK_TABLE, metadata, *columns, schema=task_schema, sqlite_autoincrement=True
    )
    group = sa.Table(
        names.get("group") or GROUP_TABLE,
        metadata,
        sa.Column(
            "id",
            _ID,
            sa.Sequence("taskset_id_sequence", schema=group_schema),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("taskset_id", sa.String(155), unique=True),
        sa.Column("result", _BLOB, nullable=True),
        sa.Column("date_done", sa.DateTime, nullable=True, index=True),
        schema=group_schema,
        sqlite_autoincrement=True,
    )
    chord = sa.Table(
        names.get("chord") or CHORD_TABLE,
        metadata,
        sa.Column("chord_key", _KEY, primary_key=True),
        sa.Column("value", _BLOB, nullable=False),
        sa.Column("expires", _TIME, nullable=True, index=True),
        schema=group_schema,
    )
    return Tables(metadata, task, group, chord)


def prepare(engine: sa.Engine, tables: Tables) -> set[str]:
    """Create what is missing (as Celery: ``create_all``), add missing columns; the task table's columns.

    Several processes starting at once race to create the same tables; a loser sees an error
    from its CREATE and finds the tables there on the next attempt.
    """
    for attempt in range(PREPARE_ATTEMPTS):
        try:
            tables.metadata.create_all(engine, checkfirst=True)
            break
        except sa.exc.DBAPIError:
            if attempt == PREPARE_ATTEMPTS - 1:
                raise
            time.sleep(0.01 * 2**attempt)
    widen_expires(engine, tables.chord)
    return add_missing_columns(engine, tables.task)


def widen_expires(engine: sa.Engine, table: sa.Table) -> None:
    """Make an older chord table's single-precision ``expires`` (MySQL/MariaDB FLOAT) a DOUBLE."""
    if engine.dialect.name not in ("mysql", "mariadb"):
        return
    with engine.connect() as conn:
        columns = sa.inspect(conn).get_columns(table.name, schema=table.schema)
    kind = next((c["type"] for c in columns if c["name"] == "expires"), None)
    if not isinstance(kind, sa.Float) or isinstance(kind, sa.Double):
        return
    preparer = engine.dialect.identifier_preparer
    ddl = f"ALTER TABLE {preparer.format_table(table)} MODIFY {preparer.quote('expires')} DOUBLE NULL"
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(ddl)
    except sa.exc.DBAPIError as exc:
        logger.warning(
            "cannot widen %s.expires to DOUBLE (%s): short chord claims may expire early", table.name, exc
        )


def add_missing_columns(engine: sa.Engine, table: sa.Table) -> set[str]:
    """Add the nullable columns an older table lacks (as Celery 5.7 does); the columns it has after.

    A table made by an older Celery has no ``children``, a plain one no extended columns; where
    ALTER is not allowed the missing columns are simply not written or read.
    """
    with engine.connect() as conn:
        present = {c["name"] for c in sa.inspect(conn).get_columns(table.name, schema=table.schema)}
    preparer = engine.dialect.identifier_preparer
    for column in table.columns:
        if column.name in present or not column.nullable:
            continue
        ddl = (
            f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN "
            f"{preparer.quote(column.name)} {column.type.compile(engine.dialect)}"
        )
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(ddl)
            present.add(column.name)
        except sa.exc.DBAPIError as exc:
            logger.warning("cannot add column %s to %s (%s); it is left out", column.name, table.name, exc)
    return present
