"""kombu's Redis transport, with messages held under a lease instead of a visibility timer.

kombu's Redis transport records every message a consumer takes in the ``unacked`` hash and the
``unacked_index`` sorted set (score: when it was taken), and any client puts back whatever has
been there longer than ``visibility_timeout``. A task that runs, or waits for its ETA, longer
than that is delivered a second time while its first worker is alive and well: Celery's
best-known duplicate. Lowering the timeout makes it worse; raising it makes a dead worker's
messages wait hours.

Here a message taken by a process is also recorded, in the same round trip, as owned by that
process (``taskq.unacked_owner``: delivery tag -> lease id), and the process keeps its lease
(``taskq.lease.<id>``, a key with a short TTL) alive from a thread of its own. While the lease
lives, the thread also refreshes the score of every message the process holds, so no client,
taskq's or a Celery worker's in a mixed fleet, ever finds them past the visibility timeout.
When the process dies, the lease expires within ``lease_timeout`` seconds and any live taskq
worker puts that process's messages back on their queues. The queue lists, the ``unacked``
hash and its index stay exactly kombu's, so Celery workers and clients share the broker.
Messages are taken by a script that records them in the same step (redis_fetch.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps
from redis.exceptions import NoScriptError, ResponseError

from taskq.broker import redis_acks, redis_fetch
from taskq.broker.redis_recovery import (
    LEASE_PREFIX,
    OWNERS_KEY,
    reclaim_lost_fetches,
    recover_dead_owners,
)

logger = logging.getLogger("taskq.broker")

OWNERS_KEEP_MS = 7 * 24 * 3600 * 1000
#: seconds a silent process keeps its messages (transport option ``lease_timeout``)
DEFAULT_LEASE_TIMEOUT = 30.0


class _ProcessLease:
    """This process's lease id and the thread that keeps it, shared by all its channels.

    One lease per process, not per channel: a worker that reconnects still runs the tasks it
    took on the old connection, and they must stay its own.
    """

    def __init__(self) -> None:
        self.id = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:12]}"
        self.members: weakref.WeakSet[QoS] = weakref.WeakSet()
        self.lock = threading.Lock()
        self.wakeup = threading.Event()
        self.thread: threading.Thread | None = None
        #: a fetch's reply was lost with its connection: Redis may have recorded messages as
        #: this process's that no channel of it holds (see reclaim_lost_fetches)
        self.fetch_in_doubt = False
        #: acks written whose reply has not been read: tag -> the keys it deletes (redis_acks.py)
        self.unconfirmed: dict[str, list[str]] = {}

    def join(self, qos: QoS) -> None:
        with self.lock:
            self.members.add(qos)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._keep, name="taskq-lease", daemon=True)
                self.thread.start()

    def _keep(self) -> None:
        while True:
            with self.lock:
                members = [qos for qos in self.members if not qos.channel.closed]
            if not members:
                with self.lock:
                    self.thread = None
                return
            interval = min(qos.lease_timeout for qos in members) / 6
            for qos in members:
                try:
                    qos.renew()
                except Exception as exc:  # Redis away: the consumer reconnects; try again soon
                    logger.debug("could not renew the Redis lease %s: %r", self.id, exc)
            self.wakeup.wait(interval)
            self.wakeup.clear()


_lease: _ProcessLease | None = None


def process_lease() -> _ProcessLease:
    global _lease
    if _lease is None:
        _lease = _ProcessLease()
    return _lease


def _forget_lease_after_fork() -> None:
    # A forked child is a new owner: it must not renew (or be mistaken for) its parent.
    global _lease
    _lease = None


os.register_at_fork(after_in_child=_forget_lease_after_fork)


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, recording an owner for each message and renewing its lease."""

    owners_key = OWNERS_KEY
    #: how many messages the consumer would take now (set by worker/prefetch.py); None: any
    fetch_budget: Callable[[], int] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lease = process_lease()
        self.lease_timeout = float(getattr(self.channel, "lease_timeout", DEFAULT_LEASE_TIMEOUT))
        self._renewed_at = 0.0
        self._recover_at = 0.0
        #: tags the fetch script already recorded as unacked and owned (redis_fetch.py)
        self.prerecorded: set[Any] = set()

    def fetch_size(self) -> int:
        """How many messages one fetch may take: what the consumer wants, within prefetch."""
        want = redis_fetch.BATCH_MAX
        if self.prefetch_count:
            want = min(want, self.prefetch_count - (len(self._delivered or ()) - len(self._dirty or ())))
        if self.fetch_budget is not None:
            want = min(want, self.fetch_budget())
        return max(want, 1)

    def recover(self) -> int:
        """Put back dead owners' messages, every few seconds; called by every consuming worker.

        Not from the lease thread: a worker holding nothing has no lease, yet must recover.
        """
        restored = 0
        self.channel.acks.confirm()
        if self.lease.unconfirmed:  # acks whose connection died unanswered: first, written again
            with self.channel.conn_or_acquire() as client:
                redis_acks.confirm_unconfirmed(self, client)
        if self.lease.fetch_in_doubt:
            with self.channel.conn_or_acquire() as client:
                restored += reclaim_lost_fetches(self.lease, client, self.channel)
        now = time.monotonic()
        if now < self._recover_at:
            return restored
        self._recover_at = now + self.lease_timeout / 6
        with self.channel.conn_or_acquire() as client:
            return restored + recover_dead_owners(self.channel, client)

    @property
    def lease_key(self) -> str:
        return LEASE_PREFIX + self.lease.id

    def append(self, message: Any, delivery_tag: Any) -> None:
        prerecorded = delivery_tag in self.prerecorded  # the fetch script wrote it all already
        if prerecorded:
            self._renewed_at = time.monotonic()
        else:
            self._record(message, delivery_tag)
        virtual.QoS.append(self, message, delivery_tag)
        # held before it leaves prerecorded, for reclaim_lost_fetches' snapshot (same order)
        self.prerecorded.discard(delivery_tag)
        if self not in self.lease.members:
            self.lease.join(self)

    def _record(self, message: Any, delivery_tag: Any) -> None:
        info = message.delivery_info
        payload = dumps([message._raw, info["exchange"], info["routing_key"]])
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, payload)
            pipe.hset(OWNERS_KEY, delivery_tag, self.lease.id)
            if time.monotonic() - self._renewed_at > 1.0:  # the lease exists before anyone can look
                pipe.set(self.lease_key, 1, ex=max(int(self.lease_timeout), 1))
                self._renewed_at = time.monotonic()
            pipe.execute()

    def ack(self, delivery_tag: Any) -> None:
        """One script instead of kombu's ``MULTI ZREM HDEL HDEL EXEC`` (redis_acks.py)."""
        if redis_acks.ack(self, delivery_tag, OWNERS_KEY):
            virtual.QoS.ack(self, delivery_tag)
        else:
            super().ack(delivery_tag)

    def _remove_from_indices(self, delivery_tag: Any, pipe: Any = None) -> Any:
        pipe = super()._remove_from_indices(delivery_tag, pipe)
        return pipe.hdel(OWNERS_KEY, delivery_tag)

    def forget(self, delivery_tag: Any) -> None:
        """Drop a message from this process's books once it left Redis' unacked records."""
        virtual.QoS.ack(self, delivery_tag)

    def renew(self) -> None:
        """Keep the lease and refresh the held messages' scores (from the lease thread)."""
        held: list[Any] = list(self._delivered or ())
        now = time.time()
        with self.channel.conn_or_acquire() as client:
            with client.pipeline(transaction=False) as pipe:
                pipe.set(self.lease_key, 1, ex=max(int(self.lease_timeout), 1))
                pipe.pexpire(OWNERS_KEY, OWNERS_KEEP_MS)  # gone a week after the last worker
                if held:
                    # XX: a tag acked meanwhile must not come back as a stray index entry
                    pipe.zadd(self.unacked_index_key, dict.fromkeys(held, now), xx=True)
                pipe.execute()
            self._renewed_at = time.monotonic()


class Channel(kombu_redis.Channel):
    """kombu's Redis channel taking messages with redis_fetch.py's script instead of BRPOP."""

    QoS = QoS
    #: seconds after which a silent process's messages go back (``lease_timeout`` option)
    lease_timeout = DEFAULT_LEASE_TIMEOUT
    _sync_client: Any = None
    _sync_pid = 0
    #: None until known: whether the server has BLMOVE (redis_fetch.py)
    _blmove: bool | None = None
    #: the command in flight on the consuming connection: "fetch", "wait", "brpop" or None
    _sent: str | None = None
    #: the last fetch found the queues empty: block until one has a message
    _idle = False
    #: the script path is off after an error it cannot recover from (kombu's BRPOP then)
    _script_broken = False
    #: acks go through redis_acks.ACK_SCRIPT until the server refuses scripts
    _ack_script_ok = True
    #: the server ran the script once: later acks need not wait for their replies
    _ack_script_checked = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: queues whose consumer takes messages without acking: nothing to record for them
        self._no_ack_queues: set[str] = set()
        self.acks = redis_acks.AckWriter(self, process_lease())

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        no_ack = kwargs["no_ack"] if "no_ack" in kwargs else bool(args and args[0])
        (self._no_ack_queues.add if no_ack else self._no_ack_queues.discard)(queue)
        return super().basic_consume(queue, *args, **kwargs)

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        if self._script_broken:
            self._sent = "brpop"
            return super()._brpop_start(timeout)
        if self._blmove is None:
            with self.conn_or_acquire() as client:
                self._blmove = redis_fetch.server_has_blmove(client)
        timeout = self.brpop_timeout if timeout is None else timeout
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        if not self._idle:
            self._sent = "fetch"
            record = [key.rsplit(self.sep, 1)[0] not in self._no_ack_queues for key in keys]
            want = cast(QoS, self.qos).fetch_size()
            packed = [redis_fetch.packed_fetch(self, keys, record, want, time.time())]
        elif len(queues) == 1 and self._blmove:
            self._sent = "wait"
            packed = self.client.connection.pack_command(
                *redis_fetch.wait_command(self, keys[0], timeout or 0)
            )
        else:
            self._sent = "brpop"
            return super()._brpop_start(timeout)
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]  # kombu's default is None
        try:
            self.client.connection.send_packed_command(packed)
        except self.connection_errors:
            if self._sent == "fetch":  # it may have reached Redis whole
                cast(QoS, self.qos).lease.fetch_in_doubt = True
            self._sent = None
            raise

    def _brpop_read(self, **options: Any) -> bool:
        sent = self._sent
        if sent not in ("fetch", "wait"):
            self._sent = None
            self._idle = False
            return bool(super()._brpop_read(**options))
        try:
            try:
                return self._read_fetched(sent, **options)
            except self.connection_errors:
                if sent == "fetch":  # Redis may have run the script: see reclaim_lost_fetches
                    cast(QoS, self.qos).lease.fetch_in_doubt = True
                self.client.connection.disconnect()
                raise
        finally:
            self._sent = None

    def _read_fetched(self, sent: str, **options: Any) -> bool:
        """Read a fetch's (or wait's) reply and hand the messages taken to the consumers.

        ``_sent`` stays "fetch" until the messages taken are in ``prerecorded``, so a
        reclaim_lost_fetches in another thread never mistakes them for lost.
        """
        try:
            reply = self.client.parse_response(self.client.connection, sent.upper(), **options)
        except NoScriptError:
            with self.conn_or_acquire() as client:
                redis_fetch.load_script(client)
            raise virtual.Empty() from None
        except ResponseError as exc:
            logger.error("Redis refused taskq's fetch script, taking messages with BRPOP: %s", exc)
            self._script_broken = True
            raise virtual.Empty() from None
        finally:
            self._in_poll = None  # type: ignore[assignment]
            if hasattr(self, "_flush_brpop_reauth"):  # kombu >= 5.6
                self._flush_brpop_reauth()
        if sent == "wait" or not reply:
            self._idle = sent == "fetch"  # after a wait, a message is there: fetch it
            raise virtual.Empty()
        taken = redis_fetch.parse_fetched(self, reply)
        qos = cast(QoS, self.qos)
        qos.prerecorded.update(item.message["properties"]["delivery_tag"] for item in taken if item.recorded)
        self._sent = None
        for i, item in enumerate(taken):
            self._queue_cycle.rotate(item.queue)
            try:
                self.connection._deliver(item.message, item.queue)
            except BaseException:
                # the rest of the batch is this process's on Redis, yet no consumer has it
                redis_fetch.put_back(self, taken[i + 1 :])
                raise
        return True

    def _on_connection_disconnect(self, connection: Any) -> None:
        if self._sent == "fetch" and self._in_poll is connection:  # its reply will never come
            self._sent = None
            cast(QoS, self.qos).lease.fetch_in_doubt = True
        super()._on_connection_disconnect(connection)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """kombu builds a new ``redis.Redis`` object for every publish and ack (a tenth of a
        publish's time). One per channel does, pinned to one connection of the channel's pool:
        taking and returning a pooled connection per command cost another eighth (pid checks,
        a stale-data probe). redis-py serialises threads on a pinned connection (the lease
        thread renews through it too); a forked child, which must never write to its parent's
        socket, gets a client of its own.
        """
        if client:
            yield client
            return
        if self._sync_client is None or self._sync_pid != os.getpid():
            self._sync_client = self._pinned_client()
            self._sync_pid = os.getpid()
        yield self._sync_client

    def _pinned_client(self) -> Any:
        kwargs: dict[str, Any] = {"connection_pool": self.pool, "single_connection_client": True}
        credentials = self.pool.connection_kwargs.get("credential_provider")
        if credentials is not None:  # as kombu's _create_client passes it
            kwargs["credential_provider"] = credentials
        return self.Client(**kwargs)

    def close(self) -> None:
        acks = self.__dict__.get("acks")
        if acks is not None and not self.closed:  # while its connection is still up
            acks.close()
        super().close()

    def _close_clients(self) -> None:
        super()._close_clients()
        client, self._sync_client = self._sync_client, None
        if client is not None and self._sync_pid == os.getpid():
            try:
                client.close()  # back to its pool, which kombu has just disconnected
            except Exception as exc:  # a dead connection: nothing left to give back
                logger.debug("closing the pinned Redis client: %r", exc)

    from_transport_options = (*kombu_redis.Channel.from_transport_options, "lease_timeout")  # type: ignore[assignment]


class Transport(kombu_redis.Transport):
    """The transport taskq gives ``redis://`` and ``rediss://`` broker URLs."""

    Channel = Channel
