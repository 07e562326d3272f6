"""One broker contract, run on every transport taskq tests: memory, SQLite, Redis, RabbitMQ, and
kombu's SQLAlchemy (on SQLite, PostgreSQL and MariaDB), filesystem, Redis over a unix socket and Redis
Sentinel (servers and stores in ``broker_servers.py``).

Each test drives the real code path (App.send_task -> kombu -> Worker consumer -> pool ->
result backend) with the worker in a thread of the test process.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import broker_servers
import pytest
from broker_servers import mysql_sqla_url, pg_sqla_url, redis_socket_path, sentinel_ports  # noqa: F401 (fixtures)
from kombu import Connection, Exchange, Producer, Queue

from taskq import Celery, states
from taskq.backend.memory import MemoryBackend
from taskq.worker.worker import Worker

BROKERS = ["memory", "sqlite", "redis", "amqp", *broker_servers.MORE_BROKERS]


@pytest.fixture(autouse=True)
def _applies(request: pytest.FixtureRequest) -> None:
    """Skip, with its reason, a contract item that does not apply to this transport."""
    kind = getattr(request.node, "callspec", None) and request.node.callspec.params.get("urls")
    reason = broker_servers.NOT_APPLICABLE.get((str(kind), request.node.originalname))
    if reason:
        pytest.skip(f"{kind}: {reason}")


@pytest.fixture(params=BROKERS)
def urls(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, str]:
    """(broker, backend) URLs; Redis results for the network brokers, the broker's own store else."""
    kind = request.param
    if kind == "memory":
        MemoryBackend.clear()
        return "memory://", "memory://"
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path}/broker.sqlite3"
        return url, url
    if kind in broker_servers.MORE_BROKERS:
        return broker_servers.urls(request, kind, tmp_path)
    redis_url = request.getfixturevalue("redis_url")
    if kind == "redis":
        return redis_url, redis_url
    return request.getfixturevalue("amqp_url"), redis_url


@pytest.fixture
def app(urls: tuple[str, str], tmp_path: Any) -> Iterator[Celery]:
    broker, backend = urls
    # Queue names unique per test, so a leftover message of one test never reaches another.
    prefix = f"t{uuid.uuid4().hex[:8]}"
    app = Celery("contract", broker=broker, backend=backend, set_as_current=False)
    app.conf.task_default_queue = f"{prefix}-default"
    app.conf.broker_transport_options = broker_servers.transport_options(broker, tmp_path)
    app.prefix = prefix  # type: ignore[attr-defined]

    @app.task(name="contract.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="contract.sleep")
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @app.task(name="contract.fail")
    def fail(message: str) -> None:
        raise ValueError(message)

    yield app
    app.close()


class Running:
    """A worker in a background thread, stopped (warm) on exit."""

    def __init__(self, app: Celery, **options: Any) -> None:
        options.setdefault("pool", "threads")
        options.setdefault("concurrency", 2)
        self.worker = Worker(app, **options)
        self.thread = threading.Thread(
            target=self.worker.start, kwargs={"install_signals": False}, daemon=True
        )

    def __enter__(self) -> Worker:
        self.thread.start()
        return self.worker

    def __exit__(self, *exc: Any) -> None:
        self.worker.stop()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "worker did not stop"


def queue_size(app: Celery, name: str) -> int:
    with app.broker.new_connection() as conn:
        return int(app.broker.queues[name](conn.default_channel).queue_declare(passive=True).message_count)


def test_round_trip(app: Celery) -> None:
    with Running(app):
        result = app.tasks["contract.add"].delay(2, 3)
        assert result.get(timeout=15) == 5
        assert result.state == states.SUCCESS


def test_failure_reraises_original_type(app: Celery) -> None:
    with Running(app):
        result = app.tasks["contract.fail"].delay("boom")
        with pytest.raises(ValueError, match="boom"):
            result.get(timeout=15)
        assert result.state == states.FAILURE
        assert "ValueError: boom" in (result.traceback or "")


def test_many_tasks_each_run_once(app: Celery) -> None:
    runs: list[int] = []
    lock = threading.Lock()

    @app.task(name="contract.record")
    def record(i: int) -> int:
        with lock:
            runs.append(i)
        return i

    with Running(app, concurrency=4):
        results = [record.delay(i) for i in range(200)]
        assert [r.get(timeout=30) for r in results] == list(range(200))
    assert sorted(runs) == list(range(200))


def test_routing_to_a_named_queue(app: Celery) -> None:
    other = f"{app.prefix}-q2"  # type: ignore[attr-defined]
    add = app.tasks["contract.add"]
    with Running(app, queues=[other]):
        assert add.apply_async((1, 1), queue=other).get(timeout=15) == 2
    # The worker above consumed only `other`: a task on the default queue waits for someone else.
    pending = add.delay(5, 5)
    time.sleep(0.3)
    assert pending.state == states.PENDING
    with Running(app):
        assert pending.get(timeout=15) == 10


def test_task_routes(app: Celery) -> None:
    routed = f"{app.prefix}-routed"  # type: ignore[attr-defined]
    app.conf.task_routes = {"contract.*": {"queue": routed}}
    app._reset_connections()
    with Running(app, queues=[routed]):
        assert app.tasks["contract.add"].delay(3, 4).get(timeout=15) == 7


def test_countdown_runs_no_earlier_than_eta(app: Celery) -> None:
    with Running(app):
        sent = time.time()
        result = app.tasks["contract.add"].apply_async((1, 2), countdown=1.0)
        assert result.get(timeout=15) == 3
        assert time.time() - sent >= 0.95


def test_purge_counts_waiting_messages(app: Celery) -> None:
    add = app.tasks["contract.add"]
    for i in range(5):
        add.delay(i, i)
    assert app.broker.purge([app.conf.task_default_queue]) == 5
    assert app.broker.purge([app.conf.task_default_queue]) == 0


def test_bad_message_is_dropped_and_next_one_runs(app: Celery) -> None:
    queue = app.broker.queues.default
    with Connection(app.broker.url, transport_options=app.conf.broker_transport_options) as conn:
        producer = Producer(conn.default_channel)
        # Not JSON although it says so.
        producer.publish(b"{not json", exchange="", routing_key=queue.name, declare=[queue],
                         content_type="application/json", content_encoding="utf-8",
                         headers={"task": "contract.add", "id": "bad-1"})  # fmt: skip
        # A protocol-2 body with two elements (crashes a Celery 5.7 worker).
        producer.publish([[1, 2], {}], exchange="", routing_key=queue.name, serializer="json",
                         headers={"task": "contract.add", "id": "bad-2"})  # fmt: skip
    with Running(app):
        assert app.tasks["contract.add"].delay(20, 22).get(timeout=15) == 42


def test_warm_stop_returns_unstarted_messages(app: Celery) -> None:
    add, sleep = app.tasks["contract.add"], app.tasks["contract.sleep"]
    # Multiplier 0 (no bound): a busy worker reserves what arrives, so there is something to give back.
    running = Running(app, concurrency=1, prefetch_multiplier=0)
    with running:
        long = sleep.delay(1.5)
        quick = [add.delay(i, i) for i in range(4)]
        consumer = running.worker.consumer
        deadline = time.time() + 10
        while not (consumer.active and len(consumer.ready) == 4) and time.time() < deadline:
            time.sleep(0.02)
        assert consumer.active and len(consumer.ready) == 4, "long task running, 4 quick ones reserved"
    # Stopped while the long task ran: it finished, and the unstarted ones are back in the queue.
    assert long.get(timeout=10) == 1.5
    assert all(r.state == states.PENDING for r in quick)
    with Running(app):
        assert [r.get(timeout=15) for r in quick] == [0, 2, 4, 6]


def test_named_exchange_binding_reaches_queue(app: Celery) -> None:
    exchange = Exchange(f"{app.prefix}-ex", "direct")  # type: ignore[attr-defined]
    queue = Queue(f"{app.prefix}-bound", exchange, routing_key="rk")  # type: ignore[attr-defined]
    app.broker.queues.add(queue)
    app.broker.declare([queue])
    with Running(app, queues=[queue.name]):
        result = app.tasks["contract.add"].apply_async((2, 2), exchange=exchange.name, routing_key="rk")
        assert result.get(timeout=15) == 4
