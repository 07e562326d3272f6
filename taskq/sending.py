"""Sending a task: from ``apply_async`` options to a published protocol-2 message.

``App.send_task`` is the one door every send goes through (``delay``, ``apply_async``,
signatures, retries, beat), so options, ETAs, routing and the publish signals are decided here.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from taskq import _state, signals
from taskq.message import build, parse_time
from taskq.result import AsyncResult

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.task import Task

logger = logging.getLogger("taskq.app")

# apply_async/send_task options taskq understands; anything else is warned about once.
SEND_OPTIONS = frozenset(
    {
        "countdown", "eta", "expires", "task_id", "queue", "exchange", "routing_key",
        "priority", "serializer", "compression", "headers", "ignore_result", "link",
        "link_error", "group_id", "group_index", "retries", "chord", "chain", "reply_to",
        "time_limit", "soft_time_limit", "root_id", "parent_id", "shadow", "delivery_mode",
        "retry", "retry_policy", "add_to_parent", "task", "producer", "connection",
        "publisher", "router", "result_cls", "route_name", "task_type", "exchange_type",
        "replaced_task_nesting", "stamped_headers", "stamps", "mandatory", "argsrepr",
        "kwargsrepr", "origin",
    }
)  # fmt: skip
_warned_options: set[str] = set()


def send_task(
    app: App,
    name: str,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    countdown: float | None = None,
    eta: datetime | None = None,
    task_id: str | None = None,
    expires: float | datetime | str | None = None,
    **options: Any,
) -> AsyncResult[Any]:
    """Send a task by name; the task need not be registered in this process."""
    unknown = set(options) - SEND_OPTIONS - _warned_options
    for option in sorted(unknown):
        _warned_options.add(option)
        logger.warning("apply_async option %r is not used by taskq and was ignored", option)
    conf = app.conf
    task: Task[Any, Any] | None = options.get("task") or app.tasks.get(name)
    task_id = task_id or str(uuid.uuid4())
    parent = _state.current_request()
    eta, expires_at, expires_in = _eta_and_expiry(app.now(), countdown, eta, expires)
    ignore_result = options.get("ignore_result")
    if ignore_result is None and task is not None:
        ignore_result = task.ignore_result or conf.task_ignore_result
    message = build(
        name,
        task_id,
        args,
        kwargs,
        eta=eta,
        expires=expires_at,
        expires_in=expires_in,
        group_id=options.get("group_id"),
        group_index=options.get("group_index"),
        retries=options.get("retries") or 0,
        time_limit=options.get("time_limit"),
        soft_time_limit=options.get("soft_time_limit"),
        root_id=options.get("root_id") or (parent.root_id if parent else None),
        parent_id=options.get("parent_id") or (parent.id if parent else None),
        shadow=options.get("shadow"),
        ignore_result=ignore_result,
        reply_to=options.get("reply_to") or app.thread_oid,
        origin=options.get("origin"),
        callbacks=_as_list(options.get("link")),
        errbacks=_as_list(options.get("link_error")),
        chain=options.get("chain"),
        chord=options.get("chord"),
        argsrepr=options.get("argsrepr"),
        kwargsrepr=options.get("kwargsrepr"),
        repr_maxlevels=conf.task_repr_maxlevels,
        replaced_task_nesting=options.get("replaced_task_nesting") or 0,
        stamped_headers=options.get("stamped_headers"),
        stamps=options.get("stamps"),
        extra_headers=options.get("headers"),
    )
    if options.get("origin") is not None:  # Celery hands it on as a property too (retries do)
        message.properties["origin"] = options["origin"]
    broker = app.broker
    route = broker.router.route_options(name, args, kwargs, options, task=task)
    destination = broker.router.destination(route)
    priority = route.get("priority")
    if priority is None:
        priority = conf.task_default_priority
    serializer = route.get("serializer") or (task.serializer if task else None) or conf.task_serializer
    compression = route.get("compression") or (task.compression if task else None) or conf.task_compression
    result: AsyncResult[Any] = AsyncResult(task_id, app=app, task_name=name)
    if not ignore_result and parent is None:
        app.backend.on_task_call(task_id)
    signals.before_task_publish.send(
        sender=name,
        body=message.body,
        exchange=destination.exchange,
        routing_key=destination.routing_key,
        headers=message.headers,
        properties=message.properties,
        declare=destination.declare,
        retry_policy=options.get("retry_policy"),
    )
    retry = options.get("retry")
    broker.publish(
        message,
        destination,
        serializer=serializer,
        compression=compression,
        priority=priority,
        delivery_mode=route.get("delivery_mode"),
        retry=conf.task_publish_retry if retry is None else retry,
        retry_policy=options.get("retry_policy") or conf.task_publish_retry_policy,
    )
    signals.after_task_publish.send(
        sender=name, body=message.body, headers=message.headers,
        exchange=destination.exchange, routing_key=destination.routing_key,
    )  # fmt: skip
    if conf.task_send_sent_event:  # Celery's queue: the routed one's name, None for an exchange
        queue_name = destination.declare[0].name if destination.declare else None
        app.events.task_sent(message.headers, queue_name, destination.exchange, destination.routing_key)
    if parent is not None and options.get("add_to_parent", True):
        parent.children.append(result)
    return result


def _eta_and_expiry(
    now: datetime, countdown: float | None, eta: datetime | None, expires: float | datetime | str | None
) -> tuple[datetime | None, datetime | None, float | None]:
    """ETA and expiry as aware datetimes, plus seconds to expiry (the AMQP ``expiration``).

    Naive datetimes are taken in the app's time zone (``now``'s), as Celery takes them.
    """
    if countdown is not None:
        eta = now + timedelta(seconds=countdown)
    elif eta is not None and eta.tzinfo is None:
        eta = eta.replace(tzinfo=now.tzinfo)
    if expires is None:
        return eta, None, None
    if isinstance(expires, (int, float)):
        return eta, now + timedelta(seconds=expires), float(expires)
    if isinstance(expires, str):
        expires = parse_time(expires, "expires")
        assert expires is not None
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=now.tzinfo)
    return eta, expires, (expires - now).total_seconds()


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    return [dict(item) for item in items]
