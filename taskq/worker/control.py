"""Remote control, worker side: the pidbox node, and the control commands (they change the worker).

Commands arrive on the consumer's connection (another channel) and are handled in the consume
loop's thread, like task messages, so a handler may touch the consumer's state without locks.
Names, arguments and replies are Celery's (``celery.worker.control``); the inspect commands live
in ``taskq.worker.inspect``. Control commands answer ``{"ok": text}`` or ``{"error": text}``.
"""

from __future__ import annotations

import heapq
import logging
import signal as signal_module
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kombu import Queue as KombuQueue

from taskq import states
from taskq.control import mailbox_for
from taskq.worker import broker_link, outcomes
from taskq.worker.inspect import INSPECT_HANDLERS, nok, ok, reserved_requests, scheduled_requests
from taskq.worker.ratelimit import parse_rate
from taskq.worker.revoked import Revoked

if TYPE_CHECKING:
    from kombu import Connection
    from kombu import Consumer as KombuConsumer

    from taskq.worker.consumer import Consumer

logger = logging.getLogger("taskq.worker")
# States a revoke may overwrite in the result backend (Celery 5.7): not started, or waiting to retry.
REVOCABLE_STATES = frozenset({states.PENDING, states.RECEIVED, states.RETRY, states.REJECTED})
__all__ = ["HANDLERS", "Revoked", "listen", "signal_number"]  # Revoked: its old home


# -- control commands (they change this worker) -------------------------------------------------
def _ids(task_id: str | Iterable[str] | None) -> list[str]:
    """Celery's ``maybe_list``, without duplicates, order kept."""
    if task_id is None:
        return []
    return list(dict.fromkeys([task_id] if isinstance(task_id, str) else task_id))


def revoke(
    consumer: Consumer,
    task_id: str | Iterable[str],
    terminate: bool = False,
    signal: str | int | None = None,
    **kwargs: Any,
) -> dict[str, str]:
    """Remember the ids, store REVOKED, drop held messages; ``terminate`` stops running ones."""
    ids = _ids(task_id)
    known = {r.id for r in (*consumer.active, *reserved_requests(consumer), *scheduled_requests(consumer))}
    _revoke_here(consumer, ids, terminate, signal)
    consumer.revoked.changed()
    if terminate:
        hit = [i for i in ids if i in known]
        return ok(f"terminate: {', '.join(hit)}" if hit else "terminate: tasks unknown")
    logger.info("Tasks flagged as revoked: %s", ", ".join(ids))
    return ok(f"tasks {set(ids)} flagged as revoked")


def _revoke_here(consumer: Consumer, task_ids: list[str], terminate: bool, signal: str | int | None) -> None:
    """Remember the ids, mark still-pending ones REVOKED, drop the ones held here unstarted."""
    # rpc:// keeps no state to look at or overwrite (a reply needs the message's reply_to):
    # its REVOKED is sent when the message itself is discarded.
    keeps_state = consumer.app.backend.keeps_state
    for task_id in task_ids:
        consumer.revoked.add(task_id)
        if not keeps_state:
            continue
        try:
            if consumer.app.backend.get_task_meta(task_id)["status"] in REVOCABLE_STATES:
                consumer.app.backend.mark_as_revoked(task_id, "revoked")
        except Exception as exc:  # results may be disabled or down; the revoke still holds here
            logger.debug("could not mark %s REVOKED: %r", task_id, exc)
    held = [r for r in consumer.ready if r.id in consumer.revoked]
    held += [r for _, _, r in consumer.eta_heap if r.id in consumer.revoked]
    held += consumer.rate_limits.remove(lambda r: r.id not in consumer.revoked)
    for request in held:
        outcomes.discard(consumer.app, request, "revoked", events=consumer.events)
    if held:
        consumer.ready = deque(r for r in consumer.ready if r not in held)
        consumer.eta_heap = [e for e in consumer.eta_heap if e[2] not in held]
        heapq.heapify(consumer.eta_heap)
        consumer._sync_qos()
    if terminate:
        signum = signal_number(signal)
        for request in [r for r in consumer.active if r.id in consumer.revoked and r.job is not None]:
            assert request.job is not None
            if consumer.pool.terminate(request.job, signum):
                logger.info("Terminating %s (%s)", request, signal_module.Signals(signum).name)
            else:
                logger.warning(
                    "revoke(terminate=True): the %s pool cannot stop %s",
                    type(consumer.pool).__name__,
                    request,
                )


def terminate(
    consumer: Consumer, signal: str | int, task_id: str | Iterable[str], **kwargs: Any
) -> dict[str, str]:
    return revoke(consumer, task_id, terminate=True, signal=signal)


def revoke_by_stamped_headers(
    consumer: Consumer,
    headers: Mapping[str, Any] | list[str],
    terminate: bool = False,
    signal: str | int | None = None,
    **kwargs: Any,
) -> dict[str, str]:
    """Revoke by stamp (``{"stamp": value or [values]}``): future messages, and running ones too."""
    signum = signal_number(signal)
    if isinstance(headers, list):  # the CLI's key=value words
        headers = dict(h.split("=", 1) for h in headers)
    consumer.revoked.add_stamps(headers)
    if not terminate:
        return ok(f"headers {headers} flagged as revoked, but not terminated")
    terminated: dict[str, set[Any]] = {}
    for request in list(consumer.active):
        hits = Revoked.stamp_hits(headers, request.req.headers)
        if hits and request.job is not None:
            for name, value in hits:
                terminated.setdefault(name, set()).add(value)
            consumer.pool.terminate(request.job, signum)
    if not terminated:
        return ok(f"headers {headers} were not terminated")
    return ok(f"headers {terminated} revoked")


def rate_limit(
    consumer: Consumer, task_name: str, rate_limit: str | float | None, **kwargs: Any
) -> dict[str, str]:
    """Change a task's rate limit in this worker, now (waiting requests are re-timed)."""
    try:
        parse_rate(rate_limit)
    except ValueError as exc:
        return nok(f"Invalid rate limit string: {exc!r}")
    if task_name not in consumer.app.tasks:
        logger.error("Rate limit attempt for unknown task %s", task_name)
        return nok("unknown task")
    consumer.rate_limits.set(task_name, rate_limit)
    consumer.app.tasks[task_name].rate_limit = rate_limit
    if not rate_limit:
        logger.info("Rate limits disabled for tasks of type %s", task_name)
        return ok("rate limit disabled successfully")
    logger.info("New rate limit for tasks of type %s: %s.", task_name, rate_limit)
    return ok("new rate limit set successfully")


def time_limit(
    consumer: Consumer,
    task_name: str | None = None,
    hard: float | None = None,
    soft: float | None = None,
    **kwargs: Any,
) -> dict[str, str]:
    """Set a task's limits in this worker; runs started from now on get them."""
    task = consumer.app.tasks.get(task_name or "")
    if task is None:
        logger.error("Change time limit attempt for unknown task %s", task_name)
        return nok("unknown task")
    task.soft_time_limit = soft
    task.time_limit = hard
    logger.info("New time limits for tasks of type %s: soft=%s hard=%s", task_name, soft, hard)
    return ok("time limits set successfully")


def shutdown(consumer: Consumer, msg: str = "Got shutdown from remote", **kwargs: Any) -> dict[str, str]:
    """A warm stop, as SIGTERM. The reply leaves before the loop sees the flag and stops."""
    logger.warning(msg)
    consumer.stopping = True
    return ok("shutdown requested: finishing running tasks")


def _resize_prefetch(consumer: Consumer, slots: int) -> None:
    """The prefetch window follows the pool's size (Celery's ``_update_prefetch_count``)."""
    consumer.prefetch_count = max(slots, 1) * consumer.prefetch_multiplier
    consumer._apply_qos()


def pool_grow(consumer: Consumer, n: int = 1, **kwargs: Any) -> dict[str, str]:
    if consumer.autoscaler is not None:
        return nok("pool_grow is not supported with autoscale. Adjust autoscale range instead.")
    try:
        consumer.pool.grow(int(n))
    except (ValueError, NotImplementedError) as exc:  # a pool of fixed size says why
        return nok(str(exc))
    _resize_prefetch(consumer, consumer.pool.limit)
    return ok("pool will grow")


def pool_shrink(consumer: Consumer, n: int = 1, **kwargs: Any) -> dict[str, str]:
    if consumer.autoscaler is not None:
        return nok("pool_shrink is not supported with autoscale. Adjust autoscale range instead.")
    try:
        consumer.pool.shrink(int(n))
    except (ValueError, NotImplementedError) as exc:
        return nok(str(exc))
    _resize_prefetch(consumer, consumer.pool.limit)
    return ok("pool will shrink")


def autoscale(consumer: Consumer, **bounds: Any) -> dict[str, str]:
    """New ``--autoscale`` bounds ``max`` and ``min``; the pool is resized into them where it can be."""
    scaler = consumer.autoscaler
    if scaler is None:
        raise ValueError("Autoscale not enabled")  # Celery's error reply, word for word
    pool, high, low = consumer.pool, bounds.get("max"), bounds.get("min")
    if high is not None:
        if int(high) < pool.limit:
            try:
                pool.shrink(pool.limit - int(high))
            except ValueError as exc:  # children busy: the autoscaler shrinks after its keepalive
                logger.info("autoscale: cannot shrink now: %s", exc)
        scaler.max_size = int(high)
        _resize_prefetch(consumer, scaler.max_size)
    if low is not None:
        if int(low) > pool.limit:
            pool.grow(int(low) - pool.limit)
        scaler.min_size = max(int(low), 1)
    return ok(f"autoscale now max={scaler.max_size} min={scaler.min_size}")


def pool_restart(consumer: Consumer, **kwargs: Any) -> dict[str, str]:
    if not consumer.app.conf.worker_pool_restarts:
        raise ValueError("Pool restarts not enabled")  # Celery's error reply
    return nok("pool_restart is not supported by taskq: restart the worker (SIGHUP) instead")


def add_consumer(
    consumer: Consumer,
    queue: str,
    exchange: str | None = None,
    exchange_type: str | None = None,
    routing_key: str | None = None,
    **options: Any,
) -> dict[str, str]:
    """Consume ``queue`` too: a known queue as declared, else a new one named after it."""
    queues = consumer.app.broker.queues
    if queue in queues:
        declared = queues[queue]
    else:
        options = {k: v for k, v in options.items() if v is not None}
        declared = queues.add(
            KombuQueue.from_dict(
                queue,
                exchange=queue if exchange is None else exchange,
                exchange_type=exchange_type or "direct",
                routing_key=routing_key or options.pop("binding_key", None) or queue,
                **options,
            )
        )
    broker_link.add_queue(consumer, declared)
    return ok(f"add consumer {queue}")


def cancel_consumer(consumer: Consumer, queue: str, **kwargs: Any) -> dict[str, str]:
    broker_link.cancel_queue(consumer, queue)
    return ok(f"no longer consuming from {queue}")


def _events(consumer: Consumer) -> Any:
    return getattr(consumer, "events", None)


def enable_events(consumer: Consumer, **kwargs: Any) -> dict[str, str]:
    dispatcher = _events(consumer)
    if dispatcher is None:
        return nok("event dispatcher unavailable")
    if dispatcher.task_events:
        return ok("task events already enabled")
    dispatcher.task_events = True
    logger.info("Events of group {task} enabled by remote.")
    return ok("task events enabled")


def disable_events(consumer: Consumer, **kwargs: Any) -> dict[str, str]:
    dispatcher = _events(consumer)
    if dispatcher is None:
        return nok("event dispatcher unavailable")
    if not dispatcher.task_events:
        return ok("task events already disabled")
    dispatcher.task_events = False
    logger.info("Events of group {task} disabled by remote.")
    return ok("task events disabled")


def heartbeat(consumer: Consumer, **kwargs: Any) -> dict[str, str] | None:
    """Send a worker-heartbeat event now; the reply is None, as Celery's, once it is sent."""
    dispatcher = _events(consumer)
    if dispatcher is None:
        return nok("event dispatcher unavailable")
    logger.debug("Heartbeat requested by remote.")
    dispatcher.heartbeat()
    return None


def election(consumer: Consumer, id: str, topic: str, action: Any = None, **kwargs: Any) -> None:  # noqa: A002
    """Celery's gossip elections; taskq has no gossip, like a Celery worker ``--without-gossip``."""
    return None


CONTROL_HANDLERS: dict[str, Callable[..., Any]] = {
    "revoke": revoke,
    "terminate": terminate,
    "revoke_by_stamped_headers": revoke_by_stamped_headers,
    "rate_limit": rate_limit,
    "time_limit": time_limit,
    "shutdown": shutdown,
    "pool_grow": pool_grow,
    "pool_shrink": pool_shrink,
    "autoscale": autoscale,
    "pool_restart": pool_restart,
    "add_consumer": add_consumer,
    "cancel_consumer": cancel_consumer,
    "enable_events": enable_events,
    "disable_events": disable_events,
    "heartbeat": heartbeat,
    "election": election,
}
HANDLERS: dict[str, Callable[..., Any]] = {**INSPECT_HANDLERS, **CONTROL_HANDLERS}


def listen(consumer: Consumer, connection: Connection) -> KombuConsumer:
    """Start consuming this worker's pidbox queue (``<node>.celery.pidbox``) on ``connection``.

    kombu answers a failing or unknown command with ``{"error": repr(exc)}``; what it lets
    through (a reply that cannot be sent, a malformed request) is logged here, so no command
    can stop the consume loop. A lost connection still propagates: the loop must reconnect.
    """
    mailbox = mailbox_for(consumer.app)
    node = mailbox.Node(consumer.hostname, state=consumer, channel=connection.channel(), handlers=HANDLERS)

    def on_message(body: Any, message: Any) -> None:
        mailbox.clock.forward()  # clients rarely carry a useful clock (as Celery's Pidbox)
        try:
            node.handle_message(body, message)
        except consumer.recoverable_errors:
            raise
        except Exception as exc:
            logger.error("Control command error: %r", exc, exc_info=True)

    kombu_consumer: KombuConsumer = node.listen(callback=on_message)
    return kombu_consumer


def signal_number(value: str | int | None) -> int:
    """Celery's ways to name a signal: ``15``, ``'SIGKILL'``, ``'KILL'``, ``'kill'``; default TERM."""
    if value is None or value == "":
        return int(signal_module.SIGTERM)
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    name = str(value).upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return int(getattr(signal_module, name))
    except AttributeError:
        raise ValueError(f"unknown signal {value!r}") from None
