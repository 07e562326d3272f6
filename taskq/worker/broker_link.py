"""The consumer's broker connection: connect with back-off, remote control, replace a lost one.

Kept apart from the consume loop (consumer.py) because these steps run rarely and carry the
subtle parts of surviving an outage: what to give back, in which order, and what never to send
on a dead connection. They run in the loop's thread and change the consumer's state directly.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import TYPE_CHECKING

from kombu import Consumer as KombuConsumer

from taskq.broker import CONNECTION_ERRORS
from taskq.exceptions import OperationalError
from taskq.worker import control, prefetch  # control: a module, as it imports this one

if TYPE_CHECKING:
    from kombu import Queue

    from taskq.worker.consumer import Consumer

logger = logging.getLogger("taskq.worker")
#: after remote control could not start (its queue still held by a dead connection): retry after
REMOTE_CONTROL_RETRY = 5.0


def connect(consumer: Consumer, startup: bool = False) -> None:
    """Connect (retrying with back-off, as configured) and start consuming."""
    broker, conf = consumer.app.broker, consumer.app.conf
    connection = consumer.connection = broker.new_connection(conf.broker_read_url or None)
    retry = conf.broker_connection_retry
    if startup and conf.broker_connection_retry_on_startup is not None:
        retry = conf.broker_connection_retry_on_startup
    max_retries = conf.broker_connection_max_retries if retry else 0
    attempts = itertools.count(1)

    def errback(exc: BaseException, interval: float) -> None:
        logger.error(
            "Cannot connect to %s: %s. Trying again in %.1f s... (%d/%s)",
            broker.masked_url, exc, interval, next(attempts), max_retries or "inf",
        )  # fmt: skip

    def interrupt() -> None:  # kombu calls it about once a second while backing off
        if consumer.stopping:
            raise InterruptedError("the worker is stopping")

    try:
        connection.ensure_connection(
            errback=errback, max_retries=max_retries, interval_start=2, interval_step=2, interval_max=30,
            callback=interrupt,
        )  # fmt: skip
    except CONNECTION_ERRORS + tuple(connection.connection_errors) as exc:
        if consumer.stopping and not startup:  # a stop during an outage must not wait it out
            logger.warning("Stopped while reconnecting to %s", broker.masked_url)
            return
        raise OperationalError(f"cannot connect to {broker.masked_url}: {exc}") from exc
    consumer.recoverable_errors = tuple(connection.connection_errors) + CONNECTION_ERRORS
    channel = connection.default_channel
    consumer._qos_extra = 0
    consumer._kombu_consumer = KombuConsumer(
        channel, queues=consumer.queues, on_message=consumer.on_message, accept=consumer.accept
    )
    consumer._apply_qos()
    if consumer.prefetch_multiplier:
        prefetch.fetch_only_when(channel, consumer.fetch_budget)
    if consumer._orphans:
        count = prefetch.restore_orphans(channel, consumer._orphans)
        logger.warning("Returned %d message(s) taken just as the broker went away to their queue", count)
    prefetch.keep_orphans(channel, consumer._orphans)
    consumer._kombu_consumer.consume()
    consumer._pidbox_retry_at = 0.0
    if consumer.remote_control:
        try:
            consumer._pidbox = control.listen(consumer, connection)
        except tuple(connection.channel_errors) as exc:  # the old connection holds it
            consumer._pidbox_retry_at = time.monotonic() + REMOTE_CONTROL_RETRY
            logger.warning(
                "Remote control unavailable: %s. Trying again in %.0f s", exc, REMOTE_CONTROL_RETRY
            )
    logger.info("Connected to %s", broker.masked_url)


def keep_remote_control(consumer: Consumer) -> None:
    """Start remote control again if it could not start with the connection.

    AMQP: after a silent peer the broker keeps the old connection, and its exclusive pidbox
    queue, until it misses our heartbeats; tasks flow meanwhile, commands wait.
    """
    connection = consumer.connection
    if connection is None or consumer._pidbox is not None or time.monotonic() < consumer._pidbox_retry_at:
        return
    try:
        consumer._pidbox = control.listen(consumer, connection)
        logger.info("Remote control available again")
    except tuple(connection.channel_errors) as exc:
        consumer._pidbox_retry_at = time.monotonic() + REMOTE_CONTROL_RETRY
        logger.debug("remote control still unavailable: %s", exc)


def add_queue(consumer: Consumer, queue: Queue) -> None:
    """Consume ``queue`` too, now and after reconnects (remote control's add_consumer)."""
    if all(q.name != queue.name for q in consumer.queues):
        consumer.queues = [*consumer.queues, queue]
        if consumer._kombu_consumer is not None:
            consumer._kombu_consumer.add_queue(queue)
            consumer._kombu_consumer.consume()
        logger.info("Started consuming from %s", queue.name)


def cancel_queue(consumer: Consumer, name: str) -> None:
    """Stop consuming the queue ``name``; messages already received still run."""
    if any(q.name == name for q in consumer.queues):
        logger.info("Canceling queue %s", name)
        consumer.queues = [q for q in consumer.queues if q.name != name]
        if consumer._kombu_consumer is not None:
            consumer._kombu_consumer.cancel_by_queue(name)


def replace_lost(consumer: Consumer, exc: BaseException) -> None:
    """Reconnect first, and only then let go of the dead connection, without a handshake.

    The requests held here unstarted are forgotten: the broker must deliver them again.
    AMQP requeued them when the connection died; Redis keeps them in its unacked index,
    and collecting the old connection restores them, which only works with the server
    back: collected before the reconnect, they would wait for this process's lease to lapse
    (``broker/redis_leases.py``), or for ``visibility_timeout`` on kombu's own transport.
    No cancel or close is sent on the old connection: a silent peer never answers one.
    Running tasks keep running; their acks fail on the dead channel and the broker
    delivers those messages again, as at-least-once allows.
    """
    logger.error("Connection to broker lost: %r. Reconnecting...", exc)
    consumer.ready.clear()
    consumer.eta_heap.clear()
    consumer.rate_limits.clear()
    lost, consumer.connection = consumer.connection, None
    consumer._kombu_consumer = consumer._pidbox = None
    try:
        connect(consumer)
    finally:
        if lost is not None:
            try:
                lost.collect()
            except Exception as error:  # it is dead already; nothing more to do with it
                logger.debug("discarding the lost broker connection: %r", error)


def close(consumer: Consumer) -> None:
    """Cancel remote control and the task consumer, stop parking, release the connection."""
    if consumer._pidbox is not None:
        try:
            consumer._pidbox.cancel()
        except consumer.recoverable_errors:
            pass
        consumer._pidbox = None
    if consumer._kombu_consumer is not None:
        try:
            consumer._kombu_consumer.cancel()
        except consumer.recoverable_errors:
            pass
    consumer.parking.close()
    if consumer.connection is not None:
        consumer.connection.release()
        consumer.connection = None
