"""ETA tasks that wait on Redis, not in a worker's memory.

A worker that holds a task until its ETA holds its message too: memory grows with every
pending ETA, prefetch limits fill up, and (with kombu's visibility timeout) the message is
delivered again if the wait is long. Instead, a worker receiving a task whose ETA is far off
moves its message, as it is, into one sorted set (``taskq.delayed``, scored by the ETA) and
drops it from its unacked records in the same MULTI/EXEC, so the message is always in exactly
one place. Any live taskq worker moves due messages back to the head of their queues, each
under WATCH so two workers never both move one; the worker that then takes it runs it on time.
Celery workers sharing the queues keep their own behaviour; they never see the sorted set.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kombu.utils.json import dumps, loads

from taskq.broker.redis_leases import QoS as LeasedQoS
from taskq.broker.redis_recovery import prefixed_key

logger = logging.getLogger("taskq.broker")

DELAYED_KEY = "taskq.delayed"
#: the sorted set outlives its farthest ETA by this much, then Redis drops it
KEEP_AFTER_LAST_ETA = 7 * 24 * 3600
#: a message moves back this long before its ETA, so the taking worker times it exactly
LEAD = 1.0


def can_park(message: Any) -> bool:
    """Whether ``message`` came through a transport that has the delayed set."""
    channel = getattr(message, "channel", None)
    return isinstance(getattr(channel, "qos", None), LeasedQoS)


def park(message: Any, eta: float) -> None:
    """Move ``message`` (taken, not yet acked) to the delayed set until ``eta`` (epoch seconds)."""
    channel = message.channel
    tag = message.delivery_tag
    info = message.delivery_info
    member = dumps([message._raw, info["exchange"], info["routing_key"]])
    keep_ms = int((max(eta - time.time(), 0) + KEEP_AFTER_LAST_ETA) * 1000)
    with channel.conn_or_acquire() as client, client.pipeline() as pipe:
        pipe.zadd(DELAYED_KEY, {member: eta})
        pipe.pexpire(DELAYED_KEY, keep_ms, nx=True)
        pipe.pexpire(DELAYED_KEY, keep_ms, gt=True)
        channel.qos._remove_from_indices(tag, pipe)
        pipe.execute()
    channel.qos.forget(tag)
    message._state = "ACK"  # settled: nothing else may ack or reject it now


def upkeep(channel: Any) -> int:
    """A consuming worker's share of the broker's housekeeping: recover, then move due ETAs."""
    qos = getattr(channel, "qos", None)
    if not isinstance(qos, LeasedQoS):
        return 0
    qos.recover()
    return move_due(channel)


def move_due(channel: Any, limit: int = 500) -> int:
    """Put messages whose ETA is (nearly) due back at the head of their queues; how many."""
    if not isinstance(getattr(channel, "qos", None), LeasedQoS):
        return 0
    moved = 0
    with channel.conn_or_acquire() as client:
        due = client.zrangebyscore(
            prefixed_key(channel, DELAYED_KEY), "-inf", time.time() + LEAD, start=0, num=limit
        )
        for member in due:
            if _move(channel, client, member):
                moved += 1
    return moved


def _move(channel: Any, client: Any, member: bytes) -> bool:
    try:
        payload, exchange, routing_key = loads(member)
        queues = channel._lookup(exchange, routing_key)
        priority = channel._get_message_priority(payload, reverse=False)
    except Exception as exc:  # not ours to run: keep it out of the way, and say so once
        logger.error("Unreadable entry in %s dropped: %r (%.200r)", DELAYED_KEY, exc, member)
        client.zrem(DELAYED_KEY, member)
        return False
    moved = False

    def transaction(pipe: Any) -> None:
        nonlocal moved
        moved = pipe.zscore(prefixed_key(channel, DELAYED_KEY), member) is not None
        pipe.multi()
        if moved:
            pipe.zrem(DELAYED_KEY, member)
            for queue in queues:
                pipe.rpush(channel._q_for_pri(queue, priority), dumps(payload))

    client.transaction(transaction, DELAYED_KEY)
    return moved
