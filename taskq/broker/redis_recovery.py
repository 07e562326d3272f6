"""Putting back Redis messages that their taker will never settle (broker/redis_leases.py).

Two ways a message recorded as taken can be stranded: its process died (its lease expired,
and any live worker puts its messages back), or its process lives but never received it (the
connection dropped with the fetch's reply on its way, and the process puts it back itself).
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.utils.encoding import bytes_to_str

logger = logging.getLogger("taskq.broker")

OWNERS_KEY = "taskq.unacked_owner"
LEASE_PREFIX = "taskq.lease."
RECOVERY_MUTEX = "taskq.lease_recovery"


def prefixed_key(channel: Any, name: str) -> str:
    """``name`` with kombu's ``global_keyprefix``, for commands its prefixing client skips."""
    return f"{getattr(channel, 'global_keyprefix', '') or ''}{name}"


def recover_dead_owners(channel: Any, client: Any) -> int:
    """Put back on their queues the messages of every owner whose lease expired; how many.

    One process at a time does it (a short mutex); the others skip the turn.
    """
    # SET and DEL go through kombu's prefixing client as they are; HGETALL and EXISTS do not.
    if not client.set(RECOVERY_MUTEX, 1, nx=True, ex=max(int(channel.qos.lease_timeout), 5)):
        return 0
    try:
        owners = client.hgetall(prefixed_key(channel, OWNERS_KEY))
        by_owner: dict[bytes, list[bytes]] = {}
        for tag, owner in owners.items():
            by_owner.setdefault(owner, []).append(tag)
        if not by_owner:
            return 0
        names = list(by_owner)
        with client.pipeline(transaction=False) as pipe:
            for owner in names:
                pipe.exists(prefixed_key(channel, LEASE_PREFIX + owner.decode()))
            alive = pipe.execute()
        restored = 0
        for owner, lives in zip(names, alive, strict=True):
            if lives:
                continue
            tags = by_owner[owner]
            logger.warning(
                "Redis lease %s expired: putting its %d unacknowledged message(s) back on their queues",
                owner.decode(),
                len(tags),
            )
            for tag in tags:
                channel.qos.restore_by_tag(tag, client)  # removes the owner entry too
                restored += 1
        return restored
    finally:
        client.delete(RECOVERY_MUTEX)


def reclaim_lost_fetches(lease: Any, client: Any, channel: Any) -> int:
    """Put back the messages Redis records as this process's that none of its channels holds.

    When the connection drops while a fetch's reply is on its way (Redis killed just after
    running the script), the messages it took are recorded as this process's, alive and
    renewing its lease, yet never reached it: without this they would wait for the process to
    die. Runs only while no fetch is in flight, so every message Redis records for this process
    is either held by one of its channels or lost; how many were put back.
    """
    with lease.lock:
        members = list(lease.members)
    if any(qos.channel._sent == "fetch" and not qos.channel.closed for qos in members):
        return 0  # its reply is coming: try again at the next upkeep
    lease.fetch_in_doubt = False  # before the snapshot: a loss after it is seen next time
    held: set[str] = set()
    for qos in members:  # what we hold, before reading Redis: a later ack only shrinks Redis
        held.update(bytes_to_str(tag) for tag in list(qos.prerecorded))  # before _delivered
        delivered: list[Any] = list(qos._delivered or ())
        held.update(bytes_to_str(tag) for tag in delivered)
    held.update(lease.unconfirmed)  # acked, ack not yet answered: running, never to be put back
    owned: dict[bytes, bytes] = client.hgetall(prefixed_key(channel, OWNERS_KEY))
    mine = lease.id.encode()
    lost = [tag for tag, owner in owned.items() if owner == mine and bytes_to_str(tag) not in held]
    for tag in lost:
        channel.qos.restore_by_tag(tag, client)  # a no-op for a tag acked meanwhile
    if lost:
        logger.warning(
            "Put back %d message(s) taken from Redis as the connection dropped (their reply was lost)",
            len(lost),
        )
    return len(lost)
