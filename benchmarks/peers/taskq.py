"""taskq's side: the app, its tasks and its worker command (Celery's API, imported from taskq).

"taskq" runs the defaults a new user gets (prefetch multiplier 1: a message only for a free
slot); "taskq-tuned" sets what "celery-tuned" sets (multiplier 16, rate limits off), so a
deployment that trades fairness for throughput sees what it buys.
"""

from __future__ import annotations

import os
from typing import Any

from benchmarks import contract, counter
from taskq import Celery

app = Celery("bench", broker=contract.get(contract.BROKER), backend=contract.get(contract.RESULTS) or None)
app.conf.task_default_queue = contract.get(contract.QUEUE, "celery")
TUNED = contract.get(contract.VARIANT) == "tuned"
PREFETCH = 16
if TUNED:
    app.conf.worker_prefetch_multiplier = PREFETCH
    app.conf.worker_disable_rate_limits = True


@app.task(ignore_result=True)
def noop() -> None:
    counter.bump()


@app.task
def noop_r() -> int:
    counter.bump()
    return 1


@app.task(ignore_result=True)
async def sleepy() -> None:
    await counter.abump_after_sleep(0.05)


TASKS: dict[str, Any] = {"noop": noop, "result": noop_r, "sleep": sleepy}


def version() -> str:
    import taskq

    return getattr(taskq, "__version__", "0.1.0")


def settings(broker: str) -> str:
    backend = "rpc://" if broker == "amqp" else "redis"
    multiplier = PREFETCH if TUNED else 1
    tuned = ", rate limits off" if TUNED else ""
    return f"prefork -c 2, prefetch multiplier {multiplier}{tuned}, early ack, --without-heartbeat; results: {backend}"


def publish(n: int, kind: str) -> None:
    task = TASKS[kind]
    for _ in range(n):
        task.delay()


def call(timeout: float) -> None:
    noop_r.delay().get(timeout=timeout)


def worker_argv(bindir: str, kind: str, concurrency: int) -> list[str]:
    argv = [os.path.join(bindir, "taskq"), "-A", __name__, "worker", "-l", "warning"]
    argv += ["--without-heartbeat", "-c", str(concurrency)]
    return [*argv, "-P", "asyncio" if kind == "sleep" else "prefork"]
