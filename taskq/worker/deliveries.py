"""Poison messages: a task whose deliveries keep killing workers goes to a dead-letter queue.

A message that crashes its worker (or prefork child) before it is acked comes back redelivered,
and would otherwise do so forever: every worker that takes it dies. Neither AMQP nor Redis counts
deliveries for us (AMQP's ``redelivered`` is one bit, kombu's Redis restore sets the same flag),
so the count travels in the message: on a redelivery the consumer publishes a copy carrying
``x-taskq-deliveries`` one higher and acks the original; once the count reaches
``task_max_deliveries`` the copy goes to the dead-letter queue instead, and the task is recorded
as failed with ``DeliveryLimitExceeded`` so waiters, errbacks and chords learn what happened.

A first delivery costs nothing: only redelivered messages (and copies, which carry the header)
are looked at. Every redelivery counts, whatever caused it (a crash, a lost connection, a
shutdown returning reserved messages, ``Reject(requeue=True)``): the consumer cannot tell them
apart. A message still waiting for its ETA cannot have crashed anything, so it is not counted.

The dead-letter queue is a plain queue on the same broker, reached through the default exchange
(``<queue>.dlq``, or ``task_dead_letter_queue`` for all queues), so no worker consumes it unless
told to; ``taskq dlq`` lists, replays and purges it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from kombu import Exchange, Producer, Queue

from taskq.exceptions import DeliveryLimitExceeded

if TYPE_CHECKING:
    from kombu import Consumer as KombuConsumer
    from kombu.message import Message

    from taskq.app import App
    from taskq.worker.request import Request

logger = logging.getLogger("taskq.worker")

COUNT = "x-taskq-deliveries"  # deliveries of earlier copies that ended without an ack
REASON = "x-taskq-dead-letter-reason"
ORIGIN = "x-taskq-original-queue"
WHEN = "x-taskq-dead-lettered-at"
#: headers only this module writes; a replay removes them (with kombu's Redis ``redelivered``)
OWN_HEADERS = (COUNT, REASON, ORIGIN, WHEN, "redelivered")


def dead_letter_queue(app: App, queue: str) -> str:
    """Where ``queue``'s dead letters go."""
    return str(app.conf.task_dead_letter_queue or f"{queue}.dlq")


def plain_queue(name: str) -> Queue:
    """A durable queue reached by name through the default exchange (no binding to declare)."""
    return Queue(name, Exchange(""), routing_key=name, durable=True)


def original_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """The headers without the ones this module adds: a replayed message starts afresh."""
    return {k: v for k, v in headers.items() if k not in OWN_HEADERS}


def screen(app: App, request: Request, consumer: KombuConsumer | None) -> bool:
    """Count a redelivered message; True when it was re-queued or dead-lettered (do not run it).

    Anything that goes wrong here leaves the message to run as usual: a poison guard must never
    be the reason a task is lost.
    """
    message = request.message
    limit = int(app.conf.task_max_deliveries or 0)
    headers = message.headers or {}
    earlier = _count(headers.get(COUNT))
    if earlier:  # a copy made here: to the task, a redelivery like any other
        request.req.delivery_info["redelivered"] = True
    if not limit or not (message.delivery_info or {}).get("redelivered"):
        return False
    eta = request.req.eta
    if eta is not None and eta > datetime.now(timezone.utc):
        return False
    failed = earlier + 1  # this copy's earlier delivery ended without an ack
    queue = _source_queue(message, consumer)
    target = dead_letter_queue(app, queue) if failed >= limit else queue
    try:
        if target == queue:
            republish(message, queue, {**original_headers(headers), COUNT: failed})
        else:
            republish(message, target, _dead_letter_headers(headers, queue, failed), declare=True)
    except Exception as exc:
        logger.error("could not count the redelivery of %s (%r); running it as usual", request, exc)
        return False
    # The copy is out: from here on a failure (the ack's connection died) is raised, and the
    # broker's redelivery of the original is at worst one more copy, never a loss.
    request.ack()
    if target == queue:
        logger.warning(
            "%s was delivered again (%d of at most %d deliveries ended without an ack); "
            "re-queued with its count", request, failed, limit,
        )  # fmt: skip
    else:
        logger.error("%s moved to the dead-letter queue %s: %s", request, target, _reason(failed))
        _record_failure(request, DeliveryLimitExceeded(f"{_reason(failed)}; moved to {target}"))
    return True


def _reason(failed: int) -> str:
    return f"delivered {failed} times, each ending without an ack (its worker or pool process was lost)"


def _dead_letter_headers(headers: dict[str, Any], queue: str, failed: int) -> dict[str, Any]:
    return {
        **original_headers(headers),
        COUNT: failed,
        REASON: _reason(failed),
        ORIGIN: queue,
        WHEN: datetime.now(timezone.utc).isoformat(),
    }


def _record_failure(request: Request, exc: DeliveryLimitExceeded) -> None:
    """FAILURE, with the follow-ups a failure has (errbacks, chord, chain), as if it raised."""
    from taskq.worker.execute import fail

    try:
        fail(request.task, request.context(), exc)
    except Exception as error:  # the message is dead-lettered already
        logger.warning("could not record the failure of %s: %r", request, error)


def republish(message: Message, queue: str, headers: dict[str, Any], *, declare: bool = False) -> None:
    """The message's own bytes and properties, with ``headers``, to ``queue`` by its name."""
    channel = message.channel
    props = message.properties or {}
    options = {k: props[k] for k in ("correlation_id", "reply_to", "priority") if props.get(k) is not None}
    Producer(channel).publish(
        message.body,
        exchange="",
        routing_key=queue,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        headers=headers,
        delivery_mode=props.get("delivery_mode") or 2,
        declare=[plain_queue(queue)] if declare else None,
        retry=False,
        **options,
    )


def _source_queue(message: Message, consumer: KombuConsumer | None) -> str:
    """The queue the message came from: by consumer tag (AMQP), else by its routing."""
    info = message.delivery_info or {}
    queues: list[Queue] = list(consumer.queues or []) if consumer is not None else []
    tag = info.get("consumer_tag")
    if tag and consumer is not None:
        for name, active in getattr(consumer, "_active_tags", {}).items():
            if active == tag:
                return str(name)
    exchange, key = info.get("exchange") or "", info.get("routing_key") or ""
    for queue in queues:
        if queue.routing_key == key and (queue.exchange.name if queue.exchange else "") == exchange:
            return str(queue.name)
    if len(queues) == 1:
        return str(queues[0].name)
    return str(key)


def _count(value: Any) -> int:
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError):
        return 0
