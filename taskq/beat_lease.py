"""The beat leader lease: several beats may run, exactly one sends.

Celery has no such thing (two ``celery beat`` processes send everything twice; users add
RedBeat). Here every beat of an app competes for one lease in a store all of them reach: the
app's Redis (broker, else result backend), the SQLite file of the embedded default, or the
process itself for ``memory://``. The holder renews it every third of ``beat_lease_seconds``;
if it dies, the lease runs out and another beat takes it within ``beat_lease_seconds`` plus one
retry interval (a third of it). A beat that stops cleanly releases it at once.

Timing alone cannot prevent a double send (a paused leader may wake after its lease ran out),
so the lease also guards every send: before publishing an entry, the leader records the entry's
new ``last_run_at`` in the store with a compare-and-set that succeeds only while it still owns
the lease. A beat that takes over first reads those records, so a tick the old leader claimed is
never sent again. The claim is made before publishing: a leader that dies between the two loses
that one tick (at most once, never twice). Each tenure gets a new fencing token (``term``),
stored with every claim.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskq.beat_store import EntryState
from taskq.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from taskq.app import App

__all__ = ["Lease", "MemoryLease", "RedisLease", "SQLiteLease", "lease_for"]

logger = logging.getLogger("taskq.beat")

# The term counter and the entries outlive the lease by KEEP_MS (a week without any beat), so
# nothing taskq writes in Redis stays forever; after that a new beat starts from scratch.
KEEP_MS = str(7 * 24 * 3600 * 1000)
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
    return tonumber(redis.call('GET', KEYS[2]) or '0')
end
if current then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
local term = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return term
"""
_RECORD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    """Leadership on the local monotonic clock; subclasses do the store's compare-and-sets.

    The local validity is measured from before the request that won the lease, so this process
    believes it leads for no longer than the store keeps the lease for it.
    """

    store = "none"

    def __init__(self, name: str, seconds: float, owner: str | None = None) -> None:
        if seconds <= 0:
            raise ValueError("a lease needs beat_lease_seconds > 0")
        self.name = name
        self.seconds = float(seconds)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.token: int | None = None  # the term of the current tenure, None when not leading
        self._valid_until = 0.0
        self._renew_at = 0.0

    @property
    def retry_interval(self) -> float:
        """How often the leader renews and a follower tries to take over."""
        return self.seconds / 3

    def held(self) -> bool:
        return self.token is not None and time.monotonic() < self._valid_until

    def ensure(self) -> bool:
        """Take or renew the lease when it is time to; True while this process leads."""
        started = time.monotonic()
        if self.held() and started < self._renew_at:
            return True
        try:
            token = self._acquire()
        except Exception as exc:  # the store is unreachable: nobody can be sure to lead, so don't
            logger.error("beat: cannot reach the lease store (%s): %s; not sending", self.store, exc)
            token = None
        if token is None:
            if self.token is not None:
                logger.warning("beat: lost the lease %r to another beat; standing by", self.name)
            self.token = None
            return False
        if token != self.token:
            logger.info(
                "beat: took the lease %r (%s, term %d): this beat sends", self.name, self.store, token
            )
        self.token = token
        self._valid_until = started + self.seconds
        self._renew_at = started + self.retry_interval
        return True

    def next_check(self) -> float:
        """Seconds until ``ensure`` has something to do (renew, or try to take over)."""
        if self.held():
            return max(self._renew_at - time.monotonic(), 0.0)
        return self.retry_interval

    def claim(self, entry: str, state: EntryState) -> bool:
        """Record ``entry``'s new state if this process still leads: the ticket to send it."""
        if not self.held():
            return False
        document = {**state.to_json(), "term": self.token, "owner": self.owner}
        try:
            if self._record(entry, json.dumps(document)):
                return True
            logger.warning("beat: the lease %r passed to another beat; not sending %r", self.name, entry)
        except Exception as exc:
            logger.error(
                "beat: cannot record %r in the lease store (%s): %s; not sending", entry, self.store, exc
            )
        self.token = None
        return False

    def shared_entries(self) -> dict[str, EntryState]:
        """The entries' states as the leaders recorded them (what a new leader starts from)."""
        out = {}
        for name, text in self._load().items():
            try:
                out[name] = EntryState.from_json(json.loads(text))
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("beat: ignoring unreadable lease record for %r: %s", name, exc)
        return out

    def release(self) -> None:
        """Give the lease up now (clean shutdown), so another beat need not wait for it to expire."""
        if self.token is not None:
            self.token = None
            try:
                self._release()
            except Exception as exc:
                logger.warning("beat: could not release the lease %r: %s", self.name, exc)

    def close(self) -> None:
        """Release the store's connection."""

    # -- store primitives -------------------------------------------------------------------
    def _acquire(self) -> int | None:
        raise NotImplementedError

    def _record(self, entry: str, text: str) -> bool:
        raise NotImplementedError

    def _load(self) -> dict[str, str]:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError


class RedisLease(Lease):
    """``SET NX PX`` to take, Lua compare-and-sets to renew, claim and release.

    Keys (one hash tag, so Redis Cluster keeps them in one slot): ``taskq-beat:{name}:lease``
    (the owner, with the lease as TTL), ``...:term`` (fencing counter), ``...:entries`` (hash of
    claims by entry name).
    """

    store = "redis"

    def __init__(self, url: str, name: str, seconds: float, owner: str | None = None) -> None:
        super().__init__(name, seconds, owner)
        import redis

        scheme, _, rest = url.partition("://")
        if scheme.lower() in ("redis+socket", "socket"):
            url = f"unix://{rest}"
        timeout = max(min(self.seconds / 3, 5.0), 0.1)  # a hung call must not outlast the lease
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        prefix = f"taskq-beat:{{{name}}}"
        self.keys = {part: f"{prefix}:{part}" for part in ("lease", "term", "entries")}
        self._acquire_script = self.client.register_script(_ACQUIRE)
        self._record_script = self.client.register_script(_RECORD)
        self._release_script = self.client.register_script(_RELEASE)

    def _acquire(self) -> int | None:
        ttl = str(int(self.seconds * 1000))
        token = int(
            self._acquire_script(
                keys=[self.keys["lease"], self.keys["term"]], args=[self.owner, ttl, KEEP_MS]
            )
        )
        return token if token >= 0 else None

    def _record(self, entry: str, text: str) -> bool:
        keys = [self.keys["lease"], self.keys["entries"]]
        return bool(self._record_script(keys=keys, args=[self.owner, entry, text, KEEP_MS]))

    def _load(self) -> dict[str, str]:
        raw = self.client.hgetall(self.keys["entries"])
        return {k.decode(): v.decode() for k, v in raw.items()}

    def _release(self) -> None:
        self._release_script(keys=[self.keys["lease"]], args=[self.owner])

    def close(self) -> None:
        self.client.close()


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS taskq_beat_lease (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL, term INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS taskq_beat_entry (
    lease TEXT NOT NULL, entry TEXT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (lease, entry));
"""


class SQLiteLease(Lease):
    """A row per lease in the broker's SQLite file, changed only inside ``BEGIN IMMEDIATE``.

    Expiry is on the wall clock (``time.time()``), which the processes sharing one local file
    have in common.
    """

    store = "sqlite"

    def __init__(self, path: str, name: str, seconds: float, owner: str | None = None) -> None:
        super().__init__(name, seconds, owner)
        self.path = path
        self._lock = threading.Lock()
        self.db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout = 5000")
        with self._lock:
            self.db.executescript(_SQLITE_SCHEMA)

    def _transaction(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                result = work(self.db)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            return result

    def _acquire(self) -> int | None:
        def work(db: sqlite3.Connection) -> int | None:
            now, expires = time.time(), time.time() + self.seconds
            row = db.execute(
                "SELECT owner, expires_at, term FROM taskq_beat_lease WHERE name = ?", (self.name,)
            )
            found = row.fetchone()
            if found is None:
                db.execute(
                    "INSERT INTO taskq_beat_lease VALUES (?, ?, ?, 1)", (self.name, self.owner, expires)
                )
                return 1
            owner, expires_at, term = found
            if owner == self.owner and expires_at > now:
                db.execute("UPDATE taskq_beat_lease SET expires_at = ? WHERE name = ?", (expires, self.name))
                return int(term)
            if expires_at > now:
                return None
            db.execute(
                "UPDATE taskq_beat_lease SET owner = ?, expires_at = ?, term = term + 1 WHERE name = ?",
                (self.owner, expires, self.name),
            )
            return int(term) + 1

        result: int | None = self._transaction(work)
        return result

    def _record(self, entry: str, text: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            sql = "SELECT 1 FROM taskq_beat_lease WHERE name = ? AND owner = ? AND expires_at > ?"
            if not db.execute(sql, (self.name, self.owner, time.time())).fetchall():
                return False
            db.execute("INSERT OR REPLACE INTO taskq_beat_entry VALUES (?, ?, ?)", (self.name, entry, text))
            return True

        return bool(self._transaction(work))

    def _load(self) -> dict[str, str]:
        with self._lock:
            rows = self.db.execute("SELECT entry, state FROM taskq_beat_entry WHERE lease = ?", (self.name,))
            return {str(entry): str(state) for entry, state in rows.fetchall()}

    def _release(self) -> None:
        with self._lock:
            sql = "UPDATE taskq_beat_lease SET expires_at = 0 WHERE name = ? AND owner = ?"
            self.db.execute(sql, (self.name, self.owner))

    def close(self) -> None:
        with self._lock:
            self.db.close()


class MemoryLease(Lease):
    """For ``memory://`` apps: the broker lives in this process, so the lease does too."""

    store = "memory"
    _leases: dict[str, dict[str, Any]] = {}
    _guard = threading.Lock()

    def _row(self) -> dict[str, Any]:
        return self._leases.setdefault(self.name, {"owner": None, "expires": 0.0, "term": 0, "entries": {}})

    def _acquire(self) -> int | None:
        with self._guard:
            row, now = self._row(), time.monotonic()
            if row["owner"] != self.owner and row["expires"] > now:
                return None
            if row["owner"] != self.owner or row["expires"] <= now:
                row["term"] += 1
            row["owner"], row["expires"] = self.owner, now + self.seconds
            return int(row["term"])

    def _record(self, entry: str, text: str) -> bool:
        with self._guard:
            row = self._row()
            if row["owner"] != self.owner or row["expires"] <= time.monotonic():
                return False
            row["entries"][entry] = text
            return True

    def _load(self) -> dict[str, str]:
        with self._guard:
            return dict(self._row()["entries"])

    def _release(self) -> None:
        with self._guard:
            row = self._row()
            if row["owner"] == self.owner:
                row["expires"] = 0.0


def lease_for(app: App, seconds: float | None = None, name: str | None = None) -> Lease | None:
    """The lease in the first shared store the app has (broker, then result backend); or None.

    None when the lease is turned off (``beat_lease_seconds = 0``) or the app has no store the
    beats could share (an AMQP broker with an rpc:// or no result backend).
    """
    seconds = float(app.conf.get("beat_lease_seconds", 30) if seconds is None else seconds)
    if seconds <= 0:
        return None
    name = name or app.main or "default"
    broker = (app.conf.broker_write_url or app.broker_url).split(";")[0].strip()
    for url in (broker, app.result_backend_url or ""):
        scheme = url.partition("://")[0].lower()
        if scheme in ("redis", "rediss", "redis+socket", "socket"):
            return RedisLease(url, name, seconds)
        if scheme == "sqlite":
            from taskq.broker.sqlite import path_from_url

            path = path_from_url(url)
            try:
                return SQLiteLease(path, name, seconds)
            except sqlite3.Error as exc:
                raise ImproperlyConfigured(f"cannot keep the beat lease in {path!r}: {exc}") from exc
        if scheme == "memory":
            return MemoryLease(name, seconds)
    return None
