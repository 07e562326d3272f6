"""SQLite broker: the embedded default, so a worker and a client need no server.

Every taskq process pointing at the same file shares one broker: start a worker in one
terminal and a client in another, nothing to install. Messages, queue names and bindings
(with their exchange's type) live in the file, so they survive restarts, and a publish to a
direct, topic or fanout exchange reaches queues that another process bound.

``sqlite:///abs/x.db`` and ``sqlite:////abs/x.db`` are both ``/abs/x.db`` (unlike SQLAlchemy,
three slashes is already absolute); ``sqlite://rel/x.db`` is relative to the current
directory; bare ``sqlite://`` is ``./taskq.sqlite3``. Keep the file on a local disk: WAL mode
needs shared memory, which network file systems do not give.

Delivery is at least once. A consumer claims a row with a compare-and-set UPDATE, so no two
hold a message at once, and the row stays until acked; reject with requeue puts it at the
front of its queue, closing the channel puts back what it held. A message held by a process
that died (even by SIGKILL) comes back, marked redelivered, once a consumer on the same host
sees the pid gone or reused (start time and boot id from /proc). Liveness, not a timer,
decides there, so a long task is never handed to a second worker while the first lives; only
owners on another host (shared file system) fall back to ``visibility_timeout`` (3600 s).
``synchronous=NORMAL``: a process crash loses nothing, a power cut may lose the last commits.

Priority is that of kombu's Redis transport, which Celery-on-Redis users know: 0..9, the
lower number first, default 0; FIFO within a priority.
"""

from __future__ import annotations

import functools
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any
from urllib.parse import unquote

import kombu.transport
from kombu.transport import virtual
from kombu.utils.json import dumps, loads
from kombu.utils.uuid import uuid

from taskq.exceptions import ImproperlyConfigured

__all__ = ["Channel", "QoS", "Transport", "path_from_url", "register"]

DEFAULT_FILENAME = "taskq.sqlite3"
SCHEMA_VERSION = "1"
BUSY_TIMEOUT = 5.0  # seconds a writer waits for another process's write to finish
_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS taskq_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS taskq_message (
    id INTEGER PRIMARY KEY, queue TEXT NOT NULL, priority INTEGER NOT NULL,
    tag TEXT NOT NULL, payload TEXT NOT NULL, owner TEXT, claimed_at REAL);
CREATE INDEX IF NOT EXISTS taskq_message_ready
    ON taskq_message (queue, priority, id) WHERE owner IS NULL;
CREATE INDEX IF NOT EXISTS taskq_message_owner ON taskq_message (owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS taskq_queue (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS taskq_binding (
    exchange TEXT NOT NULL, type TEXT NOT NULL, routing_key TEXT NOT NULL, pattern TEXT,
    queue TEXT NOT NULL, PRIMARY KEY (exchange, routing_key, queue));
INSERT OR IGNORE INTO taskq_meta VALUES ('schema_version', '1');
"""
_INSERT = "INSERT INTO taskq_message (queue, priority, tag, payload) VALUES (?, ?, ?, ?)"
_NEXT = "SELECT id FROM taskq_message WHERE queue = ? AND owner IS NULL ORDER BY priority, id LIMIT 1"
_TAKE = "UPDATE taskq_message SET owner = ?, claimed_at = ? WHERE id = ? AND owner IS NULL"
_HELD = "SELECT id, payload FROM taskq_message WHERE owner = ? AND "
_UNCLAIM = "UPDATE taskq_message SET id = {}, owner = NULL, claimed_at = NULL, payload = ? WHERE id = ?"


def register() -> None:
    """Make ``sqlite://`` URLs resolve to this transport in kombu."""
    kombu.transport.TRANSPORT_ALIASES.setdefault("sqlite", "taskq.broker.sqlite:Transport")


def path_from_url(url: str, *, mkdir: bool = True) -> str:
    """The absolute file path a ``sqlite://`` URL names; its directory is created if missing."""
    rest = unquote((url.split("://", 1)[1] if "://" in url else url).split("?", 1)[0])
    if rest in ("", "/"):
        rest = DEFAULT_FILENAME
    elif rest.startswith("/"):
        rest = "/" + rest.lstrip("/")
        if rest[2:3] == ":":  # sqlite:///C:/x.db on Windows
            rest = rest[1:]
    if rest == ":memory:":
        raise ImproperlyConfigured(f"{url!r}: an in-memory database cannot be shared by processes")
    path = os.path.abspath(os.path.expanduser(rest))
    if mkdir:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        except OSError as exc:
            raise ImproperlyConfigured(f"cannot create the directory of broker file {path!r}: {exc}") from exc
    return path


def _prepare(db: sqlite3.Connection) -> str:
    """Switch to WAL, create the schema if missing; the file's schema version."""
    db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
    db.execute("PRAGMA journal_mode = WAL").fetchall()
    db.execute("PRAGMA synchronous = NORMAL")
    db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
    return str(db.execute("SELECT value FROM taskq_meta WHERE key = 'schema_version'").fetchall()[0][0])


def _open(path: str) -> sqlite3.Connection:
    deadline = time.monotonic() + BUSY_TIMEOUT
    try:
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise ImproperlyConfigured(f"cannot open SQLite broker file {path!r}: {exc}") from exc
    while True:
        try:
            version = _prepare(db)
            break
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            locked = "locked" in str(exc)  # the WAL switch does not wait for a busy file: retry
            if locked and time.monotonic() < deadline:
                time.sleep(0.01)
                continue
            db.close()
            if locked:
                raise  # a connection error: kombu may retry
            raise ImproperlyConfigured(f"cannot use {path!r} as SQLite broker file: {exc}") from exc
    if version != SCHEMA_VERSION:
        db.close()
        raise ImproperlyConfigured(f"broker file {path!r} has schema {version}, taskq needs {SCHEMA_VERSION}")
    return db


def _proc_info(pid: int) -> tuple[str, str] | None:
    """(state letter, start token) of ``pid`` from /proc; None where /proc is unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        return fields[0].decode(), f"{boot[:8]}.{fields[19].decode()}"
    except (OSError, IndexError):
        return None


@functools.cache
def _host_key() -> str:
    """Host name plus pid namespace: pids are only comparable within both."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}/{namespace}"


@functools.cache
def _owner_of(pid: int) -> str:
    info = _proc_info(pid)
    return f"{_host_key()}|{pid}|{info[1] if info else uuid()}"


def _owner_id() -> str:
    """``host|pid|start token`` of this process (a forked child gets its own)."""
    return _owner_of(os.getpid())


def _owner_dead(owner: str) -> bool | None:
    """Whether a same-host owner process is gone; None for an owner on another host."""
    try:
        host, pid_text, token = owner.rsplit("|", 2)
        pid = int(pid_text)
    except ValueError:
        return None
    if host != _host_key():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, run by another user
    info = _proc_info(pid)
    return info is not None and (info[0] in ("Z", "X") or info[1] != token)


def _redelivered(text: str) -> str:
    payload = loads(text)
    payload["headers"] = {**(payload.get("headers") or {}), "redelivered": True}
    payload.setdefault("properties", {}).setdefault("delivery_info", {})["redelivered"] = True
    return str(dumps(payload))


class QoS(virtual.QoS):
    """Ack deletes the claimed row, reject requeues or deletes it, restore unclaims them all."""

    channel: Channel

    def ack(self, delivery_tag: str) -> None:
        self.channel._settle(delivery_tag, requeue=False)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self.channel._settle(delivery_tag, requeue=requeue)
        super().ack(delivery_tag)  # the base reject would publish a second copy

    def restore_unacked(self) -> list[Any]:
        self._flush()
        self.channel._unclaim_all()
        if self._delivered is not None:
            self._delivered.clear()
        return []


class Channel(virtual.Channel):
    """One sqlite3 connection per channel; other threads may ack, so every call takes a lock."""

    QoS = QoS
    supports_fanout = True

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        url, options = connection.client.hostname or "", connection.client.transport_options
        self.visibility_timeout = float(options.get("visibility_timeout", 3600))
        self.recovery_interval = float(options.get("recovery_interval", 2.0))
        self.path = path_from_url("" if url == "localhost" else url)
        self._db = _open(self.path)
        self._db_open = True
        self._lock = threading.RLock()
        self._claimed: dict[str, int] = {}  # delivery tag -> id of the row this channel holds
        self._noack: set[str] = set()  # queues consumed with no_ack: delete on claim
        self._empty: dict[str, int] = {}  # queue -> data_version when last found empty
        self._types: dict[str, str] = {}
        self._next_recovery = 0.0
        super().__init__(connection, **kwargs)

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        with self._lock:
            self._empty.clear()  # our own commits do not move our data_version
            return self._db.execute(sql, args).rowcount

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._empty.clear()

    # -- messages ---------------------------------------------------------------------------

    def _row(self, queue: str, message: dict[str, Any]) -> tuple[Any, ...]:
        tag = message.get("properties", {}).get("delivery_tag") or uuid()
        return queue, self._get_message_priority(message), tag, dumps(message)

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        self._exec(_INSERT, self._row(queue, message))

    def _put_fanout(self, exchange: str, message: dict[str, Any], routing_key: str, **kwargs: Any) -> None:
        queues = sorted({queue for _, _, queue in self.get_table(exchange)})
        with self._tx() as db:
            db.executemany(_INSERT, [self._row(queue, message) for queue in queues])

    def _claim(self, queue: str) -> tuple[int, str] | None:
        """Take the first waiting row; a read first, so an empty queue never takes the write lock."""
        while True:
            found = self._db.execute(_NEXT, (queue,)).fetchall()
            if not found:
                return None
            args = (_owner_id(), time.time(), found[0][0])
            if _RETURNING:
                rows = self._db.execute(_TAKE + " RETURNING id, payload", args).fetchall()
                if rows:
                    return rows[0][0], rows[0][1]
            elif self._db.execute(_TAKE, args).rowcount == 1:
                return found[0][0], self._q("SELECT payload FROM taskq_message WHERE id = ?", found[0])[0][0]
            # another consumer took that row between our read and our write: next one

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        if time.monotonic() >= self._next_recovery:
            self._next_recovery = time.monotonic() + self.recovery_interval
            self._recover()
        with self._lock:
            version = self._db.execute("PRAGMA data_version").fetchall()[0][0]
            if self._empty.get(queue) == version:
                raise Empty()  # nobody committed anything since we found it empty
            claimed = self._claim(queue)
            if claimed is None:
                self._empty[queue] = version
                raise Empty()
            self._empty.clear()
            row_id, text = claimed
            message: dict[str, Any] = loads(text)
            tag = message["properties"]["delivery_tag"]
            if tag in self._claimed:  # one envelope routed to two queues this channel consumes
                tag = message["properties"]["delivery_tag"] = uuid()
                self._exec(
                    "UPDATE taskq_message SET tag = ?, payload = ? WHERE id = ?",
                    (tag, dumps(message), row_id),
                )
            self._claimed[tag] = row_id
            if queue in self._noack:
                self._settle(tag, requeue=False)
        return message

    def _settle(self, tag: str, requeue: bool) -> None:
        """Delete (ack) or unclaim to the front (reject + requeue) a row this process holds."""
        with self._lock:
            if not self._db_open:
                return
            row_id = self._claimed.pop(tag, None)
            where, key = ("id = ?", row_id) if row_id is not None else ("tag = ?", tag)
            if not requeue:
                self._exec(f"DELETE FROM taskq_message WHERE owner = ? AND {where}", (_owner_id(), key))
                return
            with self._tx() as db:
                self._unclaim(db, db.execute(_HELD + where, (_owner_id(), key)).fetchall(), front=True)

    @staticmethod
    def _unclaim(db: sqlite3.Connection, rows: list[Any], front: bool) -> None:
        sql = _UNCLAIM.format("(SELECT MIN(id) - 1 FROM taskq_message)" if front else "id")
        for row_id, text in rows:
            db.execute(sql, (_redelivered(text), row_id))

    def _unclaim_all(self) -> None:
        """Put back, in place, every message this channel holds (channel or connection close)."""
        with self._lock:
            if not self._db_open or not self._claimed:
                return
            ids, me = list(self._claimed.values()), _owner_id()
            self._claimed.clear()
            with self._tx() as db:
                for row_id in ids:
                    self._unclaim(db, db.execute(_HELD + "id = ?", (me, row_id)).fetchall(), front=False)

    def _recover(self) -> None:
        """Put back messages whose owner died (same host) or is silent too long (other host)."""
        me, deadline = _owner_id(), time.time() - self.visibility_timeout
        owners = self._q("SELECT DISTINCT owner FROM taskq_message WHERE owner IS NOT NULL")
        stale = [(owner, _owner_dead(owner)) for (owner,) in owners if owner != me]
        stale = [(owner, dead) for owner, dead in stale if dead is not False]
        if stale:
            with self._tx() as db:
                for owner, dead in stale:
                    where, args = ("1", (owner,)) if dead else ("claimed_at < ?", (owner, deadline))
                    self._unclaim(db, db.execute(_HELD + where, args).fetchall(), front=False)

    def _size(self, queue: str) -> int:
        return int(
            self._q("SELECT COUNT(*) FROM taskq_message WHERE queue = ? AND owner IS NULL", (queue,))[0][0]
        )

    def _purge(self, queue: str) -> int:
        return self._exec("DELETE FROM taskq_message WHERE queue = ? AND owner IS NULL", (queue,))

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        with self._tx() as db:
            for table, column in (
                ("taskq_message", "queue"),
                ("taskq_binding", "queue"),
                ("taskq_queue", "name"),
            ):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (queue,))

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        if not self._has_queue(queue):
            self._exec("INSERT OR IGNORE INTO taskq_queue VALUES (?)", (queue,))

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return bool(self._q("SELECT 1 FROM taskq_queue WHERE name = ?", (queue,)))

    def queue_delete(
        self, queue: str, if_unused: bool = False, if_empty: bool = False, **kwargs: Any
    ) -> None:
        if not (if_empty and self._size(queue)):
            self._delete(queue)
            self.state.queue_bindings_delete(queue)

    # -- consumers: a no_ack message is deleted when claimed ----------------------------------

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._noack.add(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        result = super().basic_cancel(consumer_tag)
        if queue is not None and queue not in self._tag_to_queue.values():
            self._noack.discard(queue)
        return result

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        message = super().basic_get(queue, no_ack, **kwargs)
        if message is not None and no_ack:
            self._settle(message.delivery_tag, requeue=False)
        return message

    # -- bindings, with their exchange's type, are shared through the file -----------------

    def typeof(self, exchange: str, default: str = "direct") -> Any:
        if not exchange or exchange in self.state.exchanges:
            return super().typeof(exchange, default)
        if exchange not in self._types:  # declared by another process only
            rows = self._q("SELECT type FROM taskq_binding WHERE exchange = ? LIMIT 1", (exchange,))
            if not rows:
                return self.exchange_types[default]
            self._types[exchange] = rows[0][0]
        return self.exchange_types[self._types[exchange]]

    def queue_bind(
        self, queue: str, exchange: str = "", routing_key: str = "", arguments: Any = None, **kwargs: Any
    ) -> None:
        exchange = exchange or "amq.direct"
        self._queue_bind(
            exchange, *self.typeof(exchange).prepare_bind(queue, exchange, routing_key, arguments)
        )

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str | None, queue: str) -> None:
        sql = "INSERT OR REPLACE INTO taskq_binding VALUES (?, ?, ?, ?, ?)"
        self._exec(sql, (exchange, self.typeof(exchange).type, routing_key, pattern, queue))

    def queue_unbind(
        self, queue: str, exchange: str = "", routing_key: str = "", arguments: Any = None, **kwargs: Any
    ) -> None:
        sql = "DELETE FROM taskq_binding WHERE exchange = ? AND routing_key = ? AND queue = ?"
        self._exec(sql, (exchange or "amq.direct", routing_key, queue))

    def exchange_delete(self, exchange: str, if_unused: bool = False, nowait: bool = False) -> None:
        super().exchange_delete(exchange, if_unused, nowait)
        self._exec("DELETE FROM taskq_binding WHERE exchange = ?", (exchange,))
        self._types.pop(exchange, None)

    def get_table(self, exchange: str) -> list[tuple[str, str | None, str]]:
        sql = "SELECT routing_key, pattern, queue FROM taskq_binding WHERE exchange = ?"
        return [(key, pattern, queue) for key, pattern, queue in self._q(sql, (exchange,))]

    def close(self) -> None:
        super().close()
        with self._lock:
            if self._db_open:
                try:
                    self._unclaim_all()
                finally:
                    self._db_open = False
                    self._db.close()


class Transport(virtual.Transport):
    """kombu transport for ``sqlite://`` URLs."""

    Channel = Channel
    can_parse_url = True  # kombu's own URL parsing would make /abs/x.db a relative vhost
    polling_interval = 0.05
    driver_type = "sqlite"
    driver_name = "sqlite3"
    connection_errors = (*virtual.Transport.connection_errors, sqlite3.OperationalError)  # type: ignore[assignment]
    implements = virtual.Transport.implements.extend(exchange_type=frozenset(["direct", "topic", "fanout"]))

    def driver_version(self) -> str:
        return sqlite3.sqlite_version


register()
