"""Dramatiq 2's side: stock worker (late ack, 8 threads per process), Redis results when asked.

Dramatiq stores results only in Redis or Memcached, so on RabbitMQ its round trip goes through
Redis results (taskq and Celery use rpc:// there); the report says so.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.middleware.asyncio import AsyncIO

from benchmarks import contract, counter

BROKER_URL = contract.get(contract.BROKER)
QUEUE = contract.get(contract.QUEUE, "default")
RESULTS_URL = contract.get(contract.RESULTS)

if BROKER_URL.startswith("amqp"):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker: dramatiq.Broker = RabbitmqBroker(url=BROKER_URL)
else:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=BROKER_URL)
if RESULTS_URL:
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    broker.add_middleware(Results(backend=RedisBackend(url=RESULTS_URL)))
broker.add_middleware(AsyncIO())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop() -> None:
    counter.bump()


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
async def sleepy() -> None:
    await counter.abump_after_sleep(0.05)


if RESULTS_URL:

    @dramatiq.actor(queue_name=QUEUE, max_retries=0, store_results=True)
    def noop_r() -> int:
        counter.bump()
        return 1


def version() -> str:
    return dramatiq.__version__


def settings(broker: str) -> str:
    return (
        "2 processes x 8 threads (default), late ack, max_retries=0; results: redis;"
        " sleep figure: async actors, 2 processes x 250 threads"
    )


def publish(n: int, kind: str) -> None:
    actor = {"noop": noop, "sleep": sleepy}.get(kind) or globals()["noop_r"]
    for _ in range(n):
        actor.send()


def call(timeout: float) -> None:
    globals()["noop_r"].send().get_result(block=True, timeout=int(timeout * 1000))


def worker_argv(bindir: str, kind: str, concurrency: int) -> list[str]:
    threads = concurrency // 2 if kind == "sleep" else 8
    return [os.path.join(bindir, "dramatiq"), __name__, "--processes", "2", "--threads", str(threads)]
