"""Far-off ETA tasks handed to the broker to wait on, and the housekeeping that brings them back.

The broker-specific parts live in ``broker/redis_delayed.py`` and ``broker/amqp_delayed.py``;
this module decides when a task waits there rather than in the worker's memory, and runs the
Redis upkeep (dead workers' messages, due ETA tasks) about once a second from the consume loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskq.broker import amqp_delayed, redis_delayed

if TYPE_CHECKING:
    from kombu import Connection
    from kombu import Consumer as KombuConsumer

    from taskq.worker.request import Request

logger = logging.getLogger("taskq.worker")

#: ETA tasks a worker holds in memory before further ones wait on the broker whatever their ETA
ETA_HELD_MAX = 10_000


class Parking:
    """One consumer's broker-side ETA waiting (``worker_eta_broker_threshold``)."""

    def __init__(self, threshold: float | None) -> None:
        self.threshold = threshold
        self._amqp: amqp_delayed.Parker | None = None
        self._upkeep_at = 0.0

    def park(
        self, request: Request, connection: Connection | None, consumer: KombuConsumer | None, held: int
    ) -> bool:
        """Leave ``request`` waiting on the broker if its ETA is far enough; True if it does.

        ``held`` is how many ETA tasks the worker already holds: past ``ETA_HELD_MAX`` any task
        over a second ahead goes to the broker, so a flood of near ETAs cannot grow memory.
        """
        eta = request.req.eta
        if not self.threshold or eta is None:
            return False
        threshold = 1.0 if held >= ETA_HELD_MAX else self.threshold
        if eta.timestamp() - time.time() <= threshold:
            return False
        # RabbitMQ parks by republishing, then acking: a crash between the two leaves two copies.
        # At-least-once allows that; an early-ack task (at most once) is acked first instead.
        ack_first = None if request.acks_late else request.ack
        try:
            if not self._park(request.message, eta.timestamp(), connection, consumer, ack_first):
                return False
        except Exception as exc:  # the broker said no: waiting here is Celery's way, and safe
            if request.message.acknowledged and ack_first is None:
                return True  # republished and acked: it waits on the broker
            logger.warning("could not leave %s waiting on the broker (%r); holding it here", request, exc)
            return False
        logger.debug("Task %s waits on the broker until %s", request, eta.isoformat())
        return True

    def _park(
        self, message: Any, eta: float, connection: Any, consumer: Any, ack_first: Callable[[], None] | None
    ) -> bool:
        if redis_delayed.can_park(message):
            redis_delayed.park(message, eta)
            return True
        if consumer is None or not amqp_delayed.can_park(connection):
            return False
        if self._amqp is None or self._amqp.connection is not connection:
            if self._amqp is not None:
                self._amqp.close()
            self._amqp = amqp_delayed.Parker(connection, {})
        active = consumer._active_tags  # queue name -> consumer tag
        self._amqp.queue_names = {tag: name for name, tag in active.items()}
        return self._amqp.park(message, eta, ack_first)

    def close(self) -> None:
        """Close the RabbitMQ parker's own connection, if one was opened."""
        if self._amqp is not None:
            self._amqp.close()
            self._amqp = None

    def upkeep(self, consumer: KombuConsumer | None) -> None:
        """About once a second: dead workers' messages back, due ETA tasks back (Redis only)."""
        now = time.monotonic()
        if now < self._upkeep_at or consumer is None:
            return
        self._upkeep_at = now + 1.0
        moved = redis_delayed.upkeep(consumer.channel)
        if moved:
            logger.debug("%d ETA task(s) came due on the broker", moved)
