"""Celery 5's side: stock settings ("celery") and the flags a tuned deployment sets ("celery-tuned").

Celery has no asyncio pool, so the sleeping figure runs a sync task on ``-P gevent``, which is
how a Celery user gets hundreds of concurrent waits.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from benchmarks import contract, counter

TUNED = contract.get(contract.VARIANT) == "tuned"
PREFETCH = 16

app = Celery("bench", broker=contract.get(contract.BROKER), backend=contract.get(contract.RESULTS) or None)
app.conf.task_default_queue = contract.get(contract.QUEUE, "celery")
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
def sleepy() -> None:
    counter.sleep_then_bump(0.05)


TASKS: dict[str, Any] = {"noop": noop, "result": noop_r, "sleep": sleepy}


def version() -> str:
    import celery

    return celery.__version__


def settings(broker: str) -> str:
    backend = "rpc://" if broker == "amqp" else "redis"
    if TUNED:
        flags = f"prefetch multiplier {PREFETCH}, --without-gossip/mingle/heartbeat, rate limits off"
    else:
        flags = "prefetch multiplier 4 (default), gossip/mingle/heartbeat on"
    return f"prefork -c 2, {flags}, early ack; results: {backend}; sleep figure: -P gevent"


def publish(n: int, kind: str) -> None:
    task = TASKS[kind]
    for _ in range(n):
        task.delay()


def call(timeout: float) -> None:
    noop_r.delay().get(timeout=timeout)


def worker_argv(bindir: str, kind: str, concurrency: int) -> list[str]:
    argv = [os.path.join(bindir, "celery"), "-A", __name__, "worker", "-l", "warning"]
    argv += ["-c", str(concurrency)]
    argv += ["-P", "gevent" if kind == "sleep" else "prefork"]
    if TUNED:
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return argv
