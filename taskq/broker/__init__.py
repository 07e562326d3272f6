"""The broker: one kombu connection (and producer pool) per app, selected by URL.

Everything transport-specific stays inside kombu; this module only knows how to publish a
``message.OutgoingMessage`` to a ``routing.Destination`` and how to hand the worker a
connection of its own. Publishing is thread-safe (pooled producers); a consumer's connection
belongs to the thread that drains it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kombu.transport
from kombu import Connection, Queue
from kombu.exceptions import LimitExceeded
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.pools import ProducerPool
from kombu.resource import Resource
from kombu.utils.url import maybe_sanitize_url

from taskq.broker.deadline import Deadline
from taskq.broker.sqlite import register as _register_sqlite
from taskq.config import Settings
from taskq.exceptions import OperationalError, PublishError
from taskq.message import OutgoingMessage

from .routing import Destination, Queues, Router

__all__ = ["CONNECTION_ERRORS", "Broker", "Destination", "Queues", "Router", "mask_url", "transport_name"]

_register_sqlite()
for _alias in ("sqla", "sqlalchemy"):  # kombu's transport, its options kept out of create_engine
    kombu.transport.TRANSPORT_ALIASES[_alias] = "taskq.broker.sqla:Transport"
# kombu's transport, with messages published whole and never taken half-written (broker/filesystem.py)
kombu.transport.TRANSPORT_ALIASES["filesystem"] = "taskq.broker.filesystem:Transport"

# What a lost or refused broker connection raises, whatever the transport.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    KombuOperationalError,
    ConnectionError,
    socket.error,
    TimeoutError,
)


# Redis socket settings a broker connection gets unless broker_transport_options sets them.
# kombu leaves the socket timeout unset, so a Redis that vanishes without closing the TCP
# connection (host down, failover, NAT or firewall drop) blocks a publish or an ack forever;
# health checks bound how long an idle consumer's BRPOP waits on such a connection
# (about brpop_timeout + 2 x health_check_interval). socket_connect_timeout follows
# broker_connection_timeout, as AMQP's connect timeout does.
REDIS_SCHEMES = frozenset({"redis", "rediss", "sentinel"})
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})  # where broker_confirm_publish applies
#: kombu's Redis transport with per-process leases instead of visibility-timeout redelivery
#: (broker/redis_leases.py); ``lease_timeout: 0`` in broker_transport_options opts out.
LEASED_SCHEMES = frozenset({"redis", "rediss"})
REDIS_SOCKET_DEFAULTS: dict[str, Any] = {
    "socket_timeout": 10.0,
    "socket_keepalive": True,
    "health_check_interval": 10,
}


def transport_name(connection: Connection) -> str:
    """The transport's name as a URL says it (``redis``, ``amqp``...), as Celery reports it.

    taskq hands kombu its own Redis transport as a class (broker/redis_leases.py), which kombu
    would otherwise show as ``<class ...>`` in ``info()``.
    """
    cls = connection.transport_cls
    if isinstance(cls, str) or cls is None:
        return str(cls or "")
    return str(getattr(cls, "driver_type", "") or cls.__name__)


def undeclared(entities: list[Any], connection: Connection | None) -> list[Any]:
    """The entities this connection has not declared yet, by kombu's own per-connection cache.

    kombu looks at that cache only after copying each unbound entity onto the channel (and
    throws the copy away): three object copies per publish, a tenth of its time, for a queue
    declared on the first publish and never again while the connection lives.
    """
    declared = getattr(connection, "declared_entities", None)
    if not entities or not declared:
        return entities
    return [e for e in entities if not (e.can_cache_declaration and hash(e) in declared)]


def mask_url(url: str | None) -> str:
    """The URL with its password replaced by ``**``, for every log line and error."""
    return str(maybe_sanitize_url(url or "", mask="**"))


class PinnedProducerPool(ProducerPool):
    """kombu's producer pool, each producer keeping its connection and channel between sends.

    kombu's pool hands the connection back and drops the channel on every release, so each
    send re-binds the producer to a channel again: a tenth of a publish's time. Here a producer
    stays bound to its own pooled connection (so producers never outnumber connections,
    ``broker_pool_limit``), and only a send that failed unpins it (``unpin_on_error``): the
    next send through it takes its connection again and so reconnects, as kombu's pool would.
    """

    def release(self, resource: Any) -> None:
        if not self.limit:  # an unbounded pool keeps no producer: give its connection back
            super().release(resource)
        else:
            Resource.release(self, resource)  # kombu's ProducerPool.release would unpin it

    @staticmethod
    def unpin(producer: Any) -> None:
        connection, producer.__connection__ = producer.__connection__, None
        producer.channel = None
        if connection is not None:
            connection.release()


@contextmanager
def unpin_on_error(producer: Any) -> Iterator[None]:
    try:
        yield
    except BaseException:
        PinnedProducerPool.unpin(producer)
        raise


class Broker:
    """The app's broker connection, producer pool and queue table."""

    def __init__(self, url: str, conf: Settings) -> None:
        self.url = url
        self.conf = conf
        self.queues = Queues(conf)
        self.router = Router(conf, self.queues)
        self.connection = self.new_connection()
        self._producers: ProducerPool | None = None

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def new_connection(self, url: str | None = None) -> Connection:
        """A fresh kombu connection with the app's broker settings (not yet connected)."""
        conf = self.conf
        url = url or self.url
        options = dict(conf.broker_transport_options or {})
        if url.startswith("memory:"):
            # In-process queues: poll often (tests wait on it) and name a host so kombu is quiet.
            options.setdefault("polling_interval", 0.005)
            url = "memory://localhost/" if url.rstrip("/") == "memory:" else url
        elif url.partition(":")[0].partition("+")[0] in REDIS_SCHEMES:
            for name, value in REDIS_SOCKET_DEFAULTS.items():
                options.setdefault(name, value)
            options.setdefault("socket_connect_timeout", conf.broker_connection_timeout)
        transport: type | None = None
        if url.partition(":")[0] in LEASED_SCHEMES and options.get("lease_timeout", 1):
            from taskq.broker import redis_leases

            transport = redis_leases.Transport
        if conf.broker_confirm_publish and url.partition(":")[0] in AMQP_SCHEMES:
            options.setdefault("confirm_publish", True)
        return Connection(
            url,
            transport=transport,
            ssl=conf.broker_use_ssl,
            heartbeat=conf.broker_heartbeat,
            login_method=conf.broker_login_method,
            transport_options=options,
            connect_timeout=conf.broker_connection_timeout,
        )

    @property
    def producers(self) -> ProducerPool:
        if self._producers is None:
            limit = self.conf.broker_pool_limit or None
            self._producers = PinnedProducerPool(self.connection.Pool(limit=limit), limit=limit)
        return self._producers

    def publish(
        self,
        message: OutgoingMessage,
        destination: Destination,
        *,
        serializer: str,
        compression: str | None = None,
        priority: int | None = None,
        delivery_mode: int | None = None,
        retry: bool = True,
        retry_policy: dict[str, Any] | None = None,
    ) -> None:
        """Send one task message; raise ``OperationalError`` naming the broker when it fails."""
        properties = dict(message.properties)
        expiration = properties.pop("expiration", None)
        if priority is not None:
            properties["priority"] = priority
        timeout = self.conf.publish_timeout
        deadline = Deadline(timeout, self.masked_url) if timeout is not None else None
        bounds: dict[str, Any] = {"retry_policy": retry_policy}
        wait = self.conf.broker_connection_timeout
        try:
            if deadline is not None:
                wait = min(wait or deadline.seconds, deadline.remaining())
            with self.producers.acquire(block=True, timeout=wait) as producer, unpin_on_error(producer):
                if deadline is not None:  # connecting, which kombu would retry without end
                    deadline.connect(
                        producer.connection, (retry_policy or {}) if retry else {"max_retries": 0}
                    )
                    bounds = deadline.publish_options(retry_policy)
                producer.publish(
                    message.body,
                    exchange=destination.exchange,
                    routing_key=destination.routing_key,
                    serializer=serializer,
                    compression=compression,
                    headers=message.headers,
                    delivery_mode=delivery_mode
                    or destination.delivery_mode
                    or self.conf.task_default_delivery_mode,
                    declare=undeclared(destination.declare, producer.connection),
                    retry=retry,
                    expiration=expiration,
                    **bounds,
                    **properties,
                )
        except PublishError:
            raise
        except (*CONNECTION_ERRORS, LimitExceeded) as exc:  # type: ignore[misc]
            if deadline is not None:
                raise deadline.error(exc) from exc
            if isinstance(exc, LimitExceeded):  # no producer free in time: as before, kombu's
                raise
            raise OperationalError(f"cannot publish to {self.masked_url}: {exc}") from exc

    def declare(self, queues: list[Queue]) -> None:
        with self.connection.clone() as conn:
            channel = conn.default_channel
            for queue in queues:
                queue(channel).declare()

    def purge(self, queue_names: list[str]) -> int:
        """Delete every waiting message in these queues; the number removed."""
        removed = 0
        with self.connection.clone() as conn:
            channel = conn.default_channel
            for name in queue_names:
                try:
                    removed += self.queues[name](channel).purge() or 0
                except conn.channel_errors:
                    channel = conn.channel()  # AMQP closes the channel of a missing queue
        return removed

    def close(self) -> None:
        if self._producers is not None:
            self._producers.force_close_all()
            self._producers.connections.force_close_all()  # pinned ones too
            self._producers = None
        self.connection.release()
