"""A mixed fleet: one ``celery worker`` and one ``taskq worker`` (both prefork) on ONE queue.

2,000 tasks, half published by a Celery client and half by a taskq client (interleaved in
batches), are consumed by both workers at once, on Redis and on RabbitMQ. Each task records
its own id in a Redis SET, INCRs a per-id counter and counts itself under the node that ran it.
Exactly-once is then checked from the tasks' side: every id is in the set, every counter is 1,
and after both workers shut down warmly the queue holds nothing (no unacked message would
come back to run a second time). Both workers must have run a substantial share, or the test
would not be about a mixed fleet at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from interop.sides import celery_worker_argv, taskq_worker_argv, unique, wait_until, workers

pytestmark = pytest.mark.e2e

TASKS = 2000
BATCH = 100  # the publishers alternate every BATCH messages
MIN_SHARE = 0.10  # each worker runs at least this fraction: "a substantial share"
RUN_TIMEOUT = 60.0  # seconds for all 2,000 to run once published

APP_MODULE = """\
import redis

from {package} import Celery

app = Celery("fleet", broker={broker!r})
app.conf.broker_connection_retry_on_startup = True
app.conf.task_default_queue = {queue!r}
app.conf.task_ignore_result = True
records = redis.Redis.from_url({records!r})  # redis-py re-creates its pool in a forked child


@app.task(name="fleet.mark", bind=True)
def mark(self, publisher):
    pipe = records.pipeline()  # MULTI/EXEC: the three records of one run go together
    pipe.sadd({ids!r}, self.request.id)
    pipe.incr({count!r} + self.request.id)
    pipe.hincrby({by_node!r}, self.request.hostname, 1)
    pipe.hincrby({by_publisher!r}, publisher, 1)
    pipe.execute()
"""


def queue_depth(broker: str, queue: str, records: Any) -> int:
    """Messages waiting in ``queue``: on Redis the lengths of its lists (one per priority level,
    ``<queue>`` and ``<queue>\\x06\\x16<n>``: an empty queue has no key at all, so kombu's
    passive declare would say NOT_FOUND), on RabbitMQ a passive declare's message count."""
    if broker.startswith("redis"):
        return sum(int(records.llen(key)) for key in records.scan_iter(match=f"{queue}*"))
    from kombu import Connection

    with Connection(broker) as connection:
        channel = connection.default_channel
        return int(channel.queue_declare(queue=queue, passive=True).message_count)


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("amqp", marks=[pytest.mark.amqp, pytest.mark.redis]),
    ]
)
def broker(request: pytest.FixtureRequest, redis_url: str) -> str:
    return redis_url if request.param == "redis" else str(request.getfixturevalue("amqp_url"))


@pytest.fixture
def records(redis_url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_mixed_fleet_runs_every_task_exactly_once(
    broker: str, redis_url: str, records: Any, tmp_path: Path
) -> None:
    import celery

    import taskq

    run = unique("fleet")
    queue = f"{run}-q"
    keys = {"ids": f"{run}:ids", "count": f"{run}:count:", "by_node": f"{run}:by-node", "by_publisher": f"{run}:by-publisher"}  # fmt: skip
    for side in ("celery", "taskq"):
        text = APP_MODULE.format(package=side, broker=broker, queue=queue, records=redis_url, **keys)
        (tmp_path / f"fleet_{side}.py").write_text(text)
    specs = [
        ("celery-worker", celery_worker_argv("fleet_celery", f"celery-{run}@%h", [queue], "-c", "2")),
        ("taskq-worker", taskq_worker_argv("fleet_taskq", f"taskq-{run}@%h", [queue], "-c", "2")),
    ]
    clients = {side: lib.Celery("fleet", broker=broker, set_as_current=False) for side, lib in (("celery", celery), ("taskq", taskq))}  # fmt: skip
    sent: list[str] = []
    try:
        for client in clients.values():
            client.conf.task_default_queue = queue
            client.conf.task_ignore_result = True
        with workers(specs, tmp_path) as procs:
            nodes = {proc.node for proc in procs}
            started = time.monotonic()
            for batch in range(TASKS // BATCH):
                side = ("celery", "taskq")[batch % 2]
                sent += [clients[side].send_task("fleet.mark", (side,)).id for _ in range(BATCH)]
            published = time.monotonic() - started
            wait_until(
                lambda: records.scard(keys["ids"]) >= TASKS,
                f"{TASKS} distinct task ids recorded (published in {published:.1f} s)",
                procs,
                timeout=RUN_TIMEOUT,
                interval=0.2,
            )
            ran_in = time.monotonic() - started
            print(f"{TASKS} tasks published in {published:.1f} s, all run in {ran_in:.1f} s")
            for proc in procs:
                assert proc.stop() == 0, f"{proc.name} did not shut down cleanly:\n{proc.log()}"
    finally:
        for client in clients.values():
            client.close()
    try:
        assert len(set(sent)) == TASKS
        assert {i.decode() for i in records.smembers(keys["ids"])} == set(sent)
        counts = records.mget([keys["count"] + task_id for task_id in sent])
        ran_twice = {
            task_id: int(n) for task_id, n in zip(sent, counts, strict=True) if n is None or int(n) != 1
        }
        assert not ran_twice, (
            f"{len(ran_twice)} tasks did not run exactly once: {dict(list(ran_twice.items())[:10])}"
        )
        by_node = {k.decode(): int(v) for k, v in records.hgetall(keys["by_node"]).items()}
        print(f"tasks run per node: {by_node}")
        assert set(by_node) == nodes and sum(by_node.values()) == TASKS, by_node
        for node, n in by_node.items():
            assert n >= MIN_SHARE * TASKS, f"{node} ran only {n} of {TASKS}: {by_node}"
        by_publisher = {k.decode(): int(v) for k, v in records.hgetall(keys["by_publisher"]).items()}
        assert by_publisher == {"celery": TASKS // 2, "taskq": TASKS // 2}
        assert queue_depth(broker, queue, records) == 0, "messages left behind would run again"
    finally:
        for key in records.scan_iter(match=f"{run}:*", count=1000):
            records.delete(key)
