"""ETA tasks that wait on RabbitMQ, not in a worker's memory.

RabbitMQ has no scheduled delivery of its own, but queues with a fixed message TTL that
dead-letter into the next one make a timer: kombu's "native delayed delivery" (Celery 5.5+)
declares 28 of them, ``celery_delayed_27`` ... ``celery_delayed_0``, level n holding a message
2^n seconds, and routes a message through the levels whose bit is set in the binary countdown
that prefixes its routing key; the last hop is the topic exchange ``celery_delayed_delivery``.
A fixed TTL per queue keeps each queue in expiry order, so no long wait blocks a short one.

Celery uses it only for topic exchanges and quorum queues. A taskq worker uses the same
chain for any queue: it binds the queue the message came from directly to the delivery
exchange (``#.<routing key>``), republishes the message there with publisher confirms, and
only then acks the original, so the message is never only in memory. A crash in between
leaves two copies (at-least-once), never none. An early-ack task (at most once) is acked
first, so a crash in between loses it instead, as that mode allows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from amqp import Message as AmqpMessage
from kombu import Queue
from kombu.transport import native_delayed_delivery as ndd

logger = logging.getLogger("taskq.broker")

#: a delayed message leaves its last delay queue this early; the worker times the rest
MIN_COUNTDOWN = 1


def can_park(connection: Any) -> bool:
    """Whether ``connection`` (kombu) is RabbitMQ's, where the delay queues exist."""
    transport = getattr(connection, "transport", None)
    return getattr(transport, "driver_type", None) == "amqp"


class Parker:
    """Moves far-off ETA messages of one consumer connection into the delay queues."""

    def __init__(self, connection: Any, queue_names: dict[str, str]) -> None:
        self.connection = connection
        #: consumer tag -> queue name, to know where a message must come back to
        self.queue_names = queue_names
        self._channel: Any = None
        self._bound: set[str] = set()
        #: the parker's own connection (see _ready_channel)
        self._publisher: Any = None

    def park(self, message: Any, eta: float, ack_first: Callable[[], None] | None = None) -> bool:
        """Republish ``message`` to arrive back about ``eta``, confirmed, then ack it; or, with
        ``ack_first`` (an at-most-once task), ack it that way first: a crash between the two
        then loses it rather than leaving two copies."""
        countdown = int(eta - time.time())
        info = message.delivery_info
        queue = self.queue_names.get(info.get("consumer_tag", ""))
        if countdown < MIN_COUNTDOWN or queue is None:
            return False
        channel = self._ready_channel()
        routing_key = f"taskq.{queue}"
        if queue not in self._bound:
            Queue(queue, no_declare=True).bind(channel).bind_to(
                ndd._celery_delayed_delivery_exchange(), routing_key=f"#.{routing_key}"
            )
            self._bound.add(queue)
        properties = {
            k: v for k, v in message.properties.items() if k not in ("application_headers", "delivery_info")
        }
        properties.update(
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            application_headers=dict(message.headers or {}),
            delivery_mode=2,
        )
        if ack_first is not None:
            ack_first()
        try:
            channel.basic_publish_confirm(
                AmqpMessage(message.body, **properties),
                exchange=ndd.level_name(ndd.MAX_LEVEL),
                routing_key=ndd.calculate_routing_key(countdown, routing_key),
            )
        except Exception:
            self.close()  # the next park connects afresh
            raise
        if ack_first is None:
            message.ack()
        return True

    def _ready_channel(self) -> Any:
        """A confirm-mode channel on a connection of the parker's own, the delay queues declared.

        Not the consumer's connection: waiting there for a confirm also reads the consumer's
        deliveries, and handling one parks it and waits for a confirm again, a recursion that
        ended in RecursionError under a flood of ETA tasks (the fault suite's ETA scenario).
        """
        if self._channel is None or not getattr(self._channel, "is_open", True):
            self.close()
            self._publisher = publisher = self.connection.clone()
            try:
                ndd.declare_native_delayed_delivery_exchanges_and_queues(publisher, "classic")
            except publisher.channel_errors as exc:
                # Celery 5.5+ may have declared them as quorum queues first: use those.
                logger.debug("delay queues exist with other arguments (%r); trying quorum", exc)
                ndd.declare_native_delayed_delivery_exchanges_and_queues(publisher, "quorum")
            self._channel = publisher.channel()
            self._bound.clear()
        return self._channel

    def close(self) -> None:
        publisher, self._publisher, self._channel = self._publisher, None, None
        if publisher is not None:
            with suppress(Exception):
                publisher.release()
