"""Redis acks written without waiting for their replies (issue 9), without losing the guarantees.

An early-acked task starts only once its ack has left for Redis, and the worker waited for
Redis' reply before starting it: a round trip per task, the largest single wait on the worker's
main thread. Here the ack (one script: ``ZREM`` + ``HDEL`` + ``HDEL``) is written on a
connection of its own and its reply read later, in order, with the next ones.

What could go wrong, and why it does not:

- **The write fails** (connection lost): the ack raises as before, the task is not started and
  the message goes back as the consumer's other reserved ones do. Nothing is left in doubt.
- **The write succeeded, the connection died before the reply** (Redis killed, network cut):
  the ack may or may not have been applied. Its tag stays in ``lease.unconfirmed`` until the
  ack is written again, on the new connection, by the next ``QoS.recover`` (about once a
  second); deleting a deleted entry changes nothing. Until then the process counts the message
  as held, so ``reclaim_lost_fetches`` never puts a running task's message back, and no other
  process does either while this one keeps its lease.
- **Redis answers with an error** (scripts refused, out of memory): the ack is done again at
  once with kombu's ``MULTI``/``EXEC`` and the channel stops using the script.

The only case still open is the one every at-most-once ack has: a process that loses Redis for
longer than its lease (``lease_timeout``, 30 s) while an ack it wrote was still unapplied.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import Any

from kombu.utils.encoding import bytes_to_str
from redis.exceptions import ResponseError

logger = logging.getLogger("taskq.broker")

#: replies left unread at most; past it a write first reads them all (they are there by then)
UNREAD_MAX = 32

# KEYS: unacked_index, unacked, owners; ARGV: the delivery tag, the acking process' lease id.
# A message another process owns now (put back while this one was cut off, and taken again) is
# left alone: its record is the new owner's. EVAL, not EVALSHA: kombu's key-prefixing client
# rewrites EVALSHA's first key (not all three), and leaves EVAL alone.
ACK_SCRIPT = """
local owner = redis.call('HGET', KEYS[3], ARGV[1])
if owner and owner ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""


def ack(qos: Any, delivery_tag: Any, owners_key: str) -> bool:
    """Delete ``delivery_tag``'s unacked records with ACK_SCRIPT; False: ack it kombu's way.

    The channel's first ack is sent on its pinned connection and waited for: it tells whether
    the server runs scripts. The next ones are written by the channel's AckWriter, unwaited.
    """
    channel = qos.channel
    if not channel._ack_script_ok:
        return False
    prefix = getattr(channel, "global_keyprefix", "") or ""
    keys = [prefix + k for k in (qos.unacked_index_key, qos.unacked_key, owners_key)]
    if channel._ack_script_checked:
        channel.acks.write(bytes_to_str(delivery_tag), keys)
        return True
    try:
        with channel.conn_or_acquire() as client:
            client.execute_command("EVAL", ACK_SCRIPT, 3, *keys, delivery_tag, qos.lease.id)
    except ResponseError as exc:
        logger.warning("Redis refused taskq's ack script, acking with MULTI/EXEC: %s", exc)
        channel._ack_script_ok = False
        return False
    channel._ack_script_checked = True
    return True


class AckWriter:
    """One channel's acks: written on a pooled connection it keeps, replies read in order."""

    def __init__(self, channel: Any, lease: Any) -> None:
        self.channel = channel
        self.lease = lease
        self.lock = threading.Lock()
        self._conn: Any = None
        self._pool: Any = None
        self._pid = 0
        #: tags whose ack was written and not answered yet, oldest first
        self.waiting: deque[str] = deque()

    def write(self, tag: str, keys: list[str]) -> None:
        """Send the ack for ``tag``; raise a connection error if it could not be sent whole."""
        with self.lock:
            if len(self.waiting) >= UNREAD_MAX:
                self._read_all()
            conn = self._connection()
            self.lease.unconfirmed[tag] = keys  # before the write: never counted as lost
            try:
                conn.send_command("EVAL", ACK_SCRIPT, 3, *keys, tag, self.lease.id, check_health=False)
            except BaseException:
                del self.lease.unconfirmed[tag]  # not sent: the message goes back, unacked
                self._lose()
                raise
            self.waiting.append(tag)

    def confirm(self) -> None:
        """Read every reply due (called about once a second, and before the channel closes)."""
        with self.lock:
            if self.waiting:
                try:
                    self._read_all()
                except self.channel.connection_errors as exc:
                    logger.info(
                        "Redis connection lost before %d ack(s) were confirmed: %r", len(self.waiting), exc
                    )

    def close(self) -> None:
        self.confirm()
        with self.lock:
            conn, pool, self._conn, self._pool = self._conn, self._pool, None, None
            if conn is not None and self._pid == os.getpid():
                conn.deregister_connect_callback(self._reconnected)
                pool.release(conn)

    def _connection(self) -> Any:
        if self._conn is None or self._pid != os.getpid():  # a forked child never uses its parent's
            self._pool = self.channel.pool
            self._conn = self._pool.get_connection()
            self._pid = os.getpid()
            self.waiting.clear()
            # kombu disconnects its pools (ours included) when a connection drops, and redis-py
            # reconnects on the next write: the replies owed on the old socket will never come.
            self._conn.register_connect_callback(self._reconnected)
        return self._conn

    def _reconnected(self, conn: Any) -> None:
        self.waiting.clear()  # still in lease.unconfirmed: QoS.recover writes them again

    def _read_all(self) -> None:
        conn = self._conn
        if conn is None or not conn.is_connected:  # disconnected under us: the replies are gone
            self._lose()
            return
        try:
            while self.waiting:
                tag = self.waiting[0]
                try:
                    conn.read_response()
                except ResponseError as exc:
                    self._refused(tag, exc)
                self.waiting.popleft()
                self.lease.unconfirmed.pop(tag, None)
        except BaseException:
            self._lose()
            raise

    def _refused(self, tag: str, exc: ResponseError) -> None:
        logger.warning("Redis refused taskq's ack script, acking with MULTI/EXEC: %s", exc)
        self.channel._ack_script_ok = False
        self.channel.qos._remove_from_indices(tag).execute()

    def _lose(self) -> None:
        """The connection is gone: what it still owed stays in ``lease.unconfirmed``."""
        conn, self._conn = self._conn, None
        self.waiting.clear()
        if conn is not None:
            conn.deregister_connect_callback(self._reconnected)
            try:
                conn.disconnect()
            except Exception as exc:  # already dead
                logger.debug("closing a lost ack connection: %r", exc)
            if self._pool is not None and self._pid == os.getpid():
                self._pool.release(conn)


def confirm_unconfirmed(qos: Any, client: Any) -> int:
    """Write again the acks whose connection died before answering; how many.

    Run after the channel's writer read what it could, so what is left here was owed by a
    dead connection. With the script refused meanwhile, kombu's deletions do it instead.
    """
    lease = qos.lease
    pending = list(lease.unconfirmed.items())
    if not pending:
        return 0
    with client.pipeline(transaction=False) as pipe:
        for tag, keys in pending:
            if qos.channel._ack_script_ok:
                pipe.execute_command("EVAL", ACK_SCRIPT, 3, *keys, tag, lease.id)
            else:
                qos._remove_from_indices(tag, pipe)
        try:
            pipe.execute()
        except ResponseError as exc:
            logger.warning("Redis refused taskq's ack script, acking with MULTI/EXEC: %s", exc)
            qos.channel._ack_script_ok = False
            return confirm_unconfirmed(qos, client)
    for tag, _ in pending:
        lease.unconfirmed.pop(tag, None)
    return len(pending)
