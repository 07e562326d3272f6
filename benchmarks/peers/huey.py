"""Huey 3's side (Redis only): process workers, results with notification for the round trip.

Huey has no asyncio tasks; its sleeping figure runs on ``-k greenlet``, for which the app module
must monkey-patch before anything else is imported, as Huey's docs ask.
"""

from __future__ import annotations

from typing import Any

from benchmarks import contract

if contract.get(contract.GREEN) == "1":
    from gevent import monkey

    monkey.patch_all()

import os

import huey as huey_lib
import redis
from huey import RedisHuey

from benchmarks import counter

huey = RedisHuey(
    contract.get(contract.QUEUE, "bench"),
    # 500 greenlets each hold a connection at times: room for all of them
    connection_pool=redis.ConnectionPool.from_url(contract.get(contract.BROKER), max_connections=4096),
    results=contract.results_on(),
    notify_result=True,
)


@huey.task()
def noop() -> None:
    counter.bump()


@huey.task()
def noop_r() -> int:
    counter.bump()
    return 1


@huey.task()
def sleepy() -> None:
    counter.sleep_then_bump(0.05)


TASKS: dict[str, Any] = {"noop": noop, "result": noop_r, "sleep": sleepy}


def version() -> str:
    return huey_lib.__version__


def settings(broker: str) -> str:
    return "-k process -w 2, ack on dequeue, results in Redis with notify_result; sleep figure: -k greenlet"


def publish(n: int, kind: str) -> None:
    task = TASKS[kind]
    for _ in range(n):
        task()


def call(timeout: float) -> None:
    noop_r().get(blocking=True, timeout=timeout)


def worker_argv(bindir: str, kind: str, concurrency: int) -> list[str]:
    workers = ["-k", "greenlet", "-w", str(concurrency)] if kind == "sleep" else ["-k", "process", "-w", "2"]
    return [os.path.join(bindir, "huey_consumer"), f"{__name__}.huey", *workers]
