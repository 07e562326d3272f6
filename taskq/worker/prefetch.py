"""How much a worker takes from the broker ahead of running it: the transport-specific parts.

The rule itself (``Consumer.fetch_budget``: free slots, times the multiplier) lives with the
consumer's state; these functions make each kind of transport obey it.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from kombu.transport.virtual import QoS as VirtualQoS

if TYPE_CHECKING:
    from kombu import Connection, Queue


def fetch_only_when(channel: Any, budget: Callable[[], int]) -> None:
    """On transports the client polls (Redis, SQLite, ...), fetch only while ``budget()`` > 0.

    Their QoS counts unacked messages only, and an early-acked running task is acked: left
    alone, a worker whose slots are all busy would still reserve ``prefetch_count`` more that
    then wait behind long tasks while other workers idle. (AMQP pushes; there the broker's
    ``basic.qos`` bounds it, see docs/worker.md.) Celery's ``worker_disable_prefetch`` wraps the
    same method. A transport that takes several messages per round trip (redis_fetch.py) takes
    at most ``budget()``.
    """
    qos = getattr(channel, "qos", None)
    if not isinstance(qos, VirtualQoS):
        return
    unacked_ok = qos.can_consume
    if hasattr(qos, "fetch_budget"):
        qos.fetch_budget = budget

    def can_consume(_self: Any) -> bool:
        return budget() > 0 and unacked_ok()

    qos.can_consume = types.MethodType(can_consume, qos)  # type: ignore[method-assign]


def qos_global(connection: Connection | None, queues: Iterable[Queue]) -> bool:
    """Whether prefetch changes must be channel-wide (``global``) to reach a running consumer.

    RabbitMQ >= 3.3 applies a non-global prefetch to consumers created after it only, so
    widening it for held ETA messages needs the global flag, as in Celery; quorum queues refuse
    global QoS and keep the per-consumer form.
    """
    if connection is None or connection.qos_semantics_matches_spec:
        return False
    return not any(
        (getattr(q, "queue_arguments", None) or {}).get("x-queue-type") == "quorum" for q in queues
    )


def keep_orphans(channel: Any, orphans: list[tuple[Any, str, str]]) -> None:
    """Remember a Redis message taken off its queue when its unacked record could not be written.

    kombu's Redis transport takes a message with BRPOP, then records it in the ``unacked`` hash
    in a second round trip. If Redis goes away between the two, the message is in no queue and
    no hash: only this process has it, and the delivery fails before the consumer sees it. Kept
    here, it is put back at the head of its queue as soon as the worker reconnects
    (``restore_orphans``), so a restart under load loses nothing.
    """
    qos = getattr(channel, "qos", None)
    if qos is None or not hasattr(qos, "unacked_key"):  # not kombu's Redis QoS
        return
    record = qos.append

    def append(_self: Any, message: Any, delivery_tag: Any) -> None:
        try:
            record(message, delivery_tag)
        except Exception:
            info = message.delivery_info
            orphans.append((message._raw, info["exchange"], info["routing_key"]))
            raise

    qos.append = types.MethodType(append, qos)


def restore_orphans(channel: Any, orphans: list[tuple[Any, str, str]]) -> int:
    """Put kept messages back at the head of their queues (marked redelivered); how many."""
    restored = 0
    while orphans:
        payload, exchange, routing_key = orphans[0]
        with channel.conn_or_acquire() as client, client.pipeline() as pipe:
            channel._do_restore_message(payload, exchange, routing_key, pipe)  # next in line
            pipe.execute()
        orphans.pop(0)
        restored += 1
    return restored
