"""From a kombu message to a task request, or a refusal with its reason: nothing here raises.

A worker's queues hold whatever producers put there: content types outside ``accept_content``,
messages unsigned or forged when signing is on, bytes that do not decode, envelopes that are no
task message, tasks this worker does not have. Each is refused here, before the consumer
schedules anything: logged with the reason, acked or rejected (without requeue) so it neither
comes back nor blocks the queue, and reported through Celery's ``task_rejected`` /
``task_unknown`` signals. An unknown task also gets a FAILURE result, as in Celery, so a
client waiting on it is not left waiting.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kombu.exceptions import ContentDisallowed

from taskq import signals, states
from taskq.exceptions import NotRegistered
from taskq.message import TaskRequest, parse
from taskq.security.refusals import message_label, security_cause
from taskq.worker import outcomes

if TYPE_CHECKING:
    from kombu.message import Message

    from taskq.app import App
    from taskq.task import Task

logger = logging.getLogger("taskq.worker")


def receive(
    app: App, message: Message, accept: set[str], sender: Any
) -> tuple[TaskRequest, Task[Any, Any]] | None:
    """The request and its task; None when the message was refused (and settled) instead."""
    try:
        body = message.decode()
    except ContentDisallowed as exc:
        logger.error(
            "Refused message with content type %r: %s (accept_content is %s); message %s",
            message.content_type,
            exc,
            sorted(accept),
            message_label(message),
        )
        message.reject(requeue=False)
        signals.task_rejected.send(sender=sender, message=message, exc=exc)
        return None
    except Exception as exc:  # DecodeError, or whatever a codec raises on bad bytes
        forged = security_cause(exc)
        if forged is not None:  # unsigned, tampered or signed by a stranger: never run
            logger.error("Refused message %s: %s", message_label(message), forged)
            message.reject(requeue=False)
            signals.task_rejected.send(sender=sender, message=message, exc=forged)
            return None
        logger.critical(
            "Cannot decode message body, dropping it: %r (content type %r)", exc, message.content_type
        )
        message.ack()
        signals.task_rejected.send(sender=sender, message=message, exc=exc)
        return None
    try:
        req = parse(message.headers, body, message.properties, message.delivery_info)
    except Exception as exc:  # InvalidTaskError, or a header of a type nobody expected
        logger.error("Invalid task message dropped: %s; headers=%r", exc, dict(message.headers or {}))
        message.ack()
        signals.task_rejected.send(sender=sender, message=message, exc=exc)
        return None
    try:
        return req, app.tasks[req.name]
    except NotRegistered:
        _unknown_task(app, message, req, sender)
        return None


def _unknown_task(app: App, message: Message, req: TaskRequest, sender: Any) -> None:
    logger.error(
        "Received unregistered task of type %r.\nThe message has been ignored and discarded.\n"
        "Did you remember to import the module containing this task (imports/include)?",
        req.name,
    )
    signals.task_unknown.send(
        sender=sender, name=req.name, id=req.id, message=message, exc=NotRegistered(req.name)
    )
    message.reject(requeue=False)
    if not req.ignore_result:
        outcomes.store_quietly(app, req.id, NotRegistered(req.name), states.FAILURE)
