"""Execution counter kept in Redis, outside every task library's own bookkeeping.

Each benchmark task bumps one key; the run that takes it to 1 and the one that takes it to the
target stamp the wall clock, so a drain is timed by the tasks themselves, not by a worker's log
or its start-up. Redis keys are shared by every process of the machine, so the clocks compare.
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks import contract

COUNT = "bench:count"
FIRST = "bench:first"  # time of the first execution (or the first start, for sleeping tasks)
LAST = "bench:last"  # time of the execution that reached the target

_clients: dict[int, Any] = {}
_async_clients: dict[int, Any] = {}


def _client() -> Any:
    """One connection per process: a prefork child must not reuse its parent's socket."""
    pid = os.getpid()
    if pid not in _clients:
        import redis

        _clients[pid] = redis.Redis.from_url(contract.get(contract.COUNTER), max_connections=4096)
    return _clients[pid]


def _target() -> int:
    return int(contract.get(contract.TARGET, "0"))


def bump() -> None:
    client = _client()
    n = client.incr(COUNT)
    if n == 1:
        client.setnx(FIRST, repr(time.time()))
    if n == _target():
        client.set(LAST, repr(time.time()))


def mark_start() -> None:
    """For the sleeping tasks: the wall time runs from the first one's start."""
    _client().setnx(FIRST, repr(time.time()))


async def abump_after_sleep(seconds: float) -> None:
    """The asyncio task body: start mark, sleep, count; the client is per event loop."""
    import asyncio

    import redis.asyncio

    loop = asyncio.get_running_loop()
    key = id(loop)
    if key not in _async_clients:
        # every sleeping task holds a connection for its two commands: room for all of them
        _async_clients[key] = redis.asyncio.Redis.from_url(
            contract.get(contract.COUNTER), max_connections=4096
        )
    client = _async_clients[key]
    await client.setnx(FIRST, repr(time.time()))
    await asyncio.sleep(seconds)
    n = await client.incr(COUNT)
    if n == _target():
        await client.set(LAST, repr(time.time()))


def sleep_then_bump(seconds: float) -> None:
    """The green-thread task body (time.sleep is patched by gevent there)."""
    mark_start()
    time.sleep(seconds)
    client = _client()
    n = client.incr(COUNT)
    if n == _target():
        client.set(LAST, repr(time.time()))
