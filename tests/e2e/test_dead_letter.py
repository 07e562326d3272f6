"""Poison messages end in the dead-letter queue, on Redis and RabbitMQ, and ``taskq dlq`` works.

A task that kills its prefork child (``os._exit``) with ``acks_late`` and
``reject_on_worker_lost`` comes back after every death. After ``task_max_deliveries`` deliveries
it must be moved to ``<queue>.dlq`` and recorded FAILURE (``DeliveryLimitExceeded``), while the
other tasks keep running, each exactly once. ``taskq dlq replay`` puts it back, to run again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from taskq import Celery
from taskq.worker import deliveries

from .helpers import run_taskq, running_worker, wait_for, write_module

pytestmark = pytest.mark.e2e

MAX_DELIVERIES = 3
HEALTHY = 20

APP = """
import os

import redis

from taskq import Celery

app = Celery("dlqapp", broker={broker!r}, backend={backend!r}, task_default_queue={queue!r},
             task_max_deliveries={limit}, worker_lost_wait=0.5)
ledger = redis.Redis.from_url({backend!r})


@app.task(name="dlqapp.poison", acks_late=True, reject_on_worker_lost=True)
def poison():
    ledger.rpush({key!r}, "poison")
    if ledger.get({switch!r}):
        os._exit(1)  # the child dies mid-task: no result, no ack
    return "cured"


@app.task(name="dlqapp.healthy", bind=True, ignore_result=True)
def healthy(self):
    ledger.rpush({key!r}, self.request.id)
"""


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: Any) -> str:
    url: str = request.getfixturevalue("redis_url" if request.param == "redis" else "amqp_url")
    return url


@pytest.fixture
def setup(tmp_path: Path, broker: str, redis_url: str, redis_client: Any) -> Iterator[dict[str, Any]]:
    run = uuid.uuid4().hex[:8]
    names = {"queue": f"dlq-{run}", "key": f"dlq-{run}-runs", "switch": f"dlq-{run}-poisoned"}
    write_module(
        tmp_path, "dlqapp",
        APP.format(broker=broker, backend=redis_url, limit=MAX_DELIVERIES, **names),
    )  # fmt: skip
    client = Celery(
        "dlqclient", broker=broker, backend=redis_url, set_as_current=False, task_default_queue=names["queue"]
    )
    try:
        yield {"dir": tmp_path, "client": client, "redis": redis_client, **names}
    finally:
        with Connection(broker) as conn:  # the queues this test made
            channel = conn.channel()
            for name in (names["queue"], f"{names['queue']}.dlq"):
                deliveries.plain_queue(name)(channel).delete()
        client.close()


def taskq(setup: dict[str, Any], *args: str) -> str:
    proc = run_taskq(setup["dir"], "-A", "dlqapp", "dlq", *args, "-Q", setup["queue"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return str(proc.stdout)


def test_poison_task_is_dead_lettered_then_replayed(setup: dict[str, Any]) -> None:
    client, ledger, key = setup["client"], setup["redis"], setup["key"]
    ledger.set(setup["switch"], 1)
    with running_worker(
        setup["dir"], "-A", "dlqapp", "worker", "-P", "prefork", "-c", "2", "-l", "INFO"
    ) as w:
        bad = client.send_task("dlqapp.poison")
        good = [client.send_task("dlqapp.healthy").id for _ in range(HEALTHY)]
        meta = wait_for(
            lambda: (m := client.backend.get_task_meta(bad.id))["status"] == "FAILURE" and m, 60,
            "the poison task to be recorded FAILURE", 0.2,
        )  # fmt: skip
        assert meta["result"]["exc_type"] == "DeliveryLimitExceeded", meta
        wait_for(lambda: set(good) <= {r.decode() for r in ledger.lrange(key, 0, -1)}, 30, "healthy tasks")
        runs = [r.decode() for r in ledger.lrange(key, 0, -1)]
        assert runs.count("poison") == MAX_DELIVERIES, runs
        assert all(runs.count(i) == 1 for i in good), runs  # nothing lost, nothing doubled
        assert f"moved to the dead-letter queue {setup['queue']}.dlq" in w.output

        listed = taskq(setup, "list")
        assert "1 dead-lettered task" in listed and bad.id in listed, listed
        assert f"deliveries={MAX_DELIVERIES}" in listed and f"from={setup['queue']}" in listed, listed
        assert taskq(setup, "list") == listed  # listing hands every message back

        ledger.delete(setup["switch"])  # cured: the replayed task now succeeds
        replayed = taskq(setup, "replay", "--id", bad.id)
        assert f"{bad.id} -> {setup['queue']}" in replayed, replayed
        assert bad.get(timeout=30) == "cured"
        assert "0 dead-lettered tasks" in taskq(setup, "list")
    assert [r.decode() for r in ledger.lrange(key, 0, -1)].count("poison") == MAX_DELIVERIES + 1


def test_purge_by_id_and_all(setup: dict[str, Any]) -> None:
    """Dead letters put there directly (no worker): purge one by id, then the rest."""
    client = setup["client"]
    dlq = f"{setup['queue']}.dlq"
    ids = [f"dead-{i}" for i in range(3)]
    for task_id in ids:
        client.send_task("dlqapp.healthy", task_id=task_id, queue=dlq)
    assert all(i in taskq(setup, "list") for i in ids)
    assert "Purged 1 task" in taskq(setup, "purge", "-f", "--id", ids[0])
    listed = taskq(setup, "list")
    assert ids[0] not in listed and ids[1] in listed and ids[2] in listed, listed
    assert "Purged 2 tasks" in taskq(setup, "purge", "-f")
    assert "0 dead-lettered tasks" in taskq(setup, "list")
