"""The run's own corner of the shared servers: a Redis DB and a RabbitMQ vhost, cleaned after.

The DB is claimed with the test suite's reservation key (tests/conftest.py), so a benchmark
never flushes the DB of a test run going on at the same time, nor the reverse.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

LOCK_KEY = "taskq-test-run"  # the same reservation key as the test suite's
REDIS_HOST = "127.0.0.1:6379"
AMQP_HOST = "guest:guest@127.0.0.1:5672"


@dataclass
class Services:
    redis_url: str
    amqp_url: str
    run_id: str

    def broker_url(self, broker: str) -> str:
        return self.redis_url if broker == "redis" else self.amqp_url

    def results_url(self, broker: str, peer: str) -> str:
        """rpc:// on RabbitMQ where the peer has it (Dramatiq and Huey store results in Redis only)."""
        if broker == "amqp" and peer.partition("-")[0] in ("taskq", "celery"):
            return "rpc://"
        return self.redis_url

    def reset(self) -> None:
        """Empty the run's Redis DB (broker queues, results, counter), keeping the reservation."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            lock = client.get(LOCK_KEY)
            client.flushdb()
            if lock is not None:
                client.set(LOCK_KEY, lock, ex=3600)
        finally:
            client.close()


def _claim_redis(run_id: str) -> tuple[str, Any]:
    for db in range(1, 15):
        client = redis.Redis.from_url(f"redis://{REDIS_HOST}/{db}")
        if client.set(LOCK_KEY, run_id, nx=True, ex=3600):
            return f"redis://{REDIS_HOST}/{db}", client
        client.close()
    raise SystemExit("every Redis DB 1-14 is reserved (key taskq-test-run); pass --redis-url")


def _rabbitmqctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise SystemExit("rabbitmqctl not found: pass --amqp-url with a vhost of your own")
    subprocess.run([ctl, *args], check=True, capture_output=True, timeout=60)


@contextmanager
def claimed(redis_url: str | None, amqp_url: str | None, need_amqp: bool) -> Iterator[Services]:
    """Claim a Redis DB and make a vhost unless given; release and delete them afterwards."""
    run_id = uuid.uuid4().hex[:8]
    owned_client = None
    if redis_url is None:
        redis_url, owned_client = _claim_redis(run_id)
    vhost = None
    if amqp_url is None and need_amqp:
        vhost = f"taskq-bench-{run_id}"
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        amqp_url = f"amqp://{AMQP_HOST}/{vhost}"
    services = Services(redis_url, amqp_url or "", run_id)
    try:
        yield services
    finally:
        services.reset()
        if owned_client is not None:
            owned_client.delete(LOCK_KEY)
            owned_client.close()
        if vhost is not None:
            _rabbitmqctl("delete_vhost", vhost)
