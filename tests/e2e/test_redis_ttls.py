"""Every key taskq writes in Redis expires: nothing it leaves behind grows without bound.

A worker (with events and remote control), a beat and a client use a Redis DB of their own for
a few seconds: tasks that succeed, fail and retry, a chord, a saved group, an ETA task that
waits on the broker, an inspect round trip. Then every key in the DB is listed with its TTL.
Keys without one must be kombu's own structures (queues, bindings, the unacked records),
which the broker itself needs while any worker or message exists.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import REDIS_HOST, REDIS_PORT, _claim_db, flush

from taskq import Celery, chord, group

from .helpers import running_worker, wait_for, write_module

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

APP = """
from taskq import Celery

app = Celery("ttls", broker={url!r}, backend={url!r}, task_default_queue={queue!r})
app.conf.worker_eta_broker_threshold = 1.0
app.conf.beat_schedule = {{"tick": {{"task": "ttls.add", "schedule": 0.5, "args": (1, 1)}}}}


@app.task(name="ttls.add")
def add(x, y):
    return x + y


@app.task(name="ttls.tsum")
def tsum(values):
    return sum(values)


@app.task(name="ttls.fail")
def fail():
    raise ValueError("no")


@app.task(name="ttls.flaky", bind=True, max_retries=1, default_retry_delay=0)
def flaky(self):
    if not self.request.retries:
        raise self.retry()
    return "second time"
"""

#: kombu's broker structures: queue lists, exchange bindings, unacked records, its restore mutex
KOMBU_KEYS = ("_kombu.binding", "unacked", "unacked_index", "unacked_mutex")


@pytest.fixture
def own_db() -> Iterator[tuple[str, Any]]:
    client = _claim_db(redis)
    flush(client)
    db = client.connection_pool.connection_kwargs["db"]
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}", client
    client.flushdb()
    client.close()


def test_every_key_taskq_writes_expires(tmp_path: Path, own_db: tuple[str, Any]) -> None:
    url, client = own_db
    queue = f"ttls-{uuid.uuid4().hex[:8]}"
    write_module(tmp_path, "ttls_app", APP.format(url=url, queue=queue))
    app = Celery("ttls", broker=url, backend=url, task_default_queue=queue)
    worker_args = ("-A", "ttls_app", "worker", "-P", "threads", "-c", "2", "-E", "-l", "info")
    with (
        running_worker(tmp_path, *worker_args) as _worker,
        running_worker(tmp_path, "-A", "ttls_app", "beat", "-s", str(tmp_path / "schedule"), ready=False),
    ):
        assert app.send_task("ttls.add", args=(2, 3)).get(timeout=10) == 5
        failing = app.send_task("ttls.fail")
        with pytest.raises(Exception, match="no"):
            failing.get(timeout=10)
        assert app.send_task("ttls.flaky").get(timeout=10) == "second time"
        header = [app.signature("ttls.add", args=(i, i)) for i in range(3)]
        assert chord(header)(app.signature("ttls.tsum")).get(timeout=10) == 6
        saved = group(app.signature("ttls.add", args=(i, 1)) for i in range(2)).apply_async()
        saved.save()
        assert saved.get(timeout=10) == [1, 2]
        late = app.send_task("ttls.add", args=(4, 4), countdown=2.5)
        assert app.control.inspect(timeout=1.0).ping()
        assert late.get(timeout=10) == 8
        wait_for(lambda: client.keys("taskq-beat:*entries"), 10, "beat recording a tick")
        time.sleep(1.5)  # a few more beat ticks, event heartbeats and lease renewals
    forever = []
    for key in client.scan_iter(count=1000):
        name = key.decode(errors="replace")
        if name == "taskq-test-run" or name.startswith(KOMBU_KEYS) or name == queue:
            continue
        if name.startswith(queue):  # priority lists of our queue
            continue
        if client.ttl(key) == -1:
            forever.append((name, client.type(key).decode()))
    assert forever == [], f"keys taskq left without a TTL: {forever}"
