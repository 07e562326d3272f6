"""Monitoring events on real brokers: what a taskq worker sends, what taskq's receiver reads.

An in-process worker with task events on runs each life cycle (success, failure, retry,
revoke, expiry, reject) while a receiver captures the events; their fields, order and types
must be those of Celery 5.7's captured events (tests/data/vectors/events). The messages
themselves (exchange, routing key, headers, delivery mode) are checked as the broker stores
them, and the receiver must read Celery's captured messages byte for byte, ``task.multi``
batches included.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from taskq import Celery
from taskq.events import EventDispatcher, event_exchange
from taskq.events_receiver import EventReceiver
from taskq.exceptions import Reject
from taskq.worker.worker import Worker

VECTORS = Path(__file__).resolve().parents[1] / "data" / "vectors"
REDIS_VECTOR = json.loads((VECTORS / "events" / "redis_events.json").read_text())
AMQP_VECTOR = json.loads((VECTORS / "amqp" / "events_and_pidbox_on_rabbitmq.json").read_text())
SAMPLES = {kind: sample["event"] for kind, sample in REDIS_VECTOR["samples_by_type"].items()}
WAIT = 20.0
COMMON = ["hostname", "utcoffset", "pid", "clock"]


class Collector:
    """A receiver capturing on a thread; ``wait_for`` polls what arrived, with a bound."""

    def __init__(self, app: Celery, **options: Any) -> None:
        self.events: list[dict[str, Any]] = []
        self.receiver = EventReceiver(app, {"*": self.events.append}, **options)
        self.thread = threading.Thread(target=self.receiver.capture, kwargs={"timeout": 120}, daemon=True)

    def __enter__(self) -> Collector:
        self.thread.start()
        assert self.receiver.ready.wait(10), "the receiver did not start consuming"
        return self

    def __exit__(self, *exc: Any) -> None:
        self.receiver.should_stop = True
        self.thread.join(5)
        assert not self.thread.is_alive()

    def wait_for(
        self, what: str, test: Callable[[dict[str, Any]], bool], count: int = 1
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + WAIT
        while True:
            found = [e for e in list(self.events) if test(e)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                seen = [(e["type"], e.get("uuid")) for e in self.events]
                pytest.fail(f"no {what} within {WAIT} s; got {seen}")
            time.sleep(0.02)

    def of(self, task_id: str) -> list[str]:
        return [e["type"] for e in list(self.events) if e.get("uuid") == task_id]


@pytest.fixture(params=["redis", "amqp", "sqlite"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Celery]:
    if request.param == "sqlite":
        broker = backend = f"sqlite:///{tmp_path}/broker.sqlite3"
    else:
        backend = request.getfixturevalue("redis_url")
        broker = backend if request.param == "redis" else request.getfixturevalue("amqp_url")
    app = Celery("ev", broker=broker, backend=backend, set_as_current=False)
    app.conf.task_default_queue = f"events-{uuid.uuid4().hex[:8]}"
    app.conf.task_send_sent_event = True

    @app.task(name="ev.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="ev.fail")
    def fail(message: str) -> None:
        raise ValueError(message)

    @app.task(name="ev.flaky", bind=True, max_retries=2)
    def flaky(self: Any) -> str:
        if self.request.retries < 1:
            raise self.retry(exc=KeyError(f"attempt {self.request.retries}"), countdown=0.5)
        return "ok"

    @app.task(name="ev.refuse", acks_late=True)  # an early-acked message cannot be rejected
    def refuse() -> None:
        raise Reject("not for me", requeue=False)

    yield app
    app.close()


@pytest.fixture
def worker(app: Celery) -> Worker:
    node = Worker(
        app, pool="threads", concurrency=2, hostname=f"ev-{uuid.uuid4().hex[:6]}@%h", task_events=True
    )
    node.consumer.idle_wait = 0.05
    return node


def worker_events(seen: Collector, task_id: str) -> list[str]:
    return [kind for kind in seen.of(task_id) if kind != "task-sent"]


def start(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.start, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    return thread


def assert_like_celery(event: dict[str, Any], sample: dict[str, Any]) -> None:
    """Same fields in the same order as Celery's, each of the same JSON type (null: either)."""
    assert list(event) == list(sample), (event["type"], list(event), list(sample))
    for key, value in sample.items():
        if value is not None and event[key] is not None:
            assert type(event[key]) is type(value), (event["type"], key, event[key], value)
    assert event["utcoffset"] == time.timezone / 3600 or event["utcoffset"] == time.altzone / 3600


def test_task_life_cycles_as_celery_sends_them(app: Celery, worker: Worker) -> None:
    with Collector(app, queue_ttl=30) as seen:
        thread = start(worker)
        try:
            online = seen.wait_for("worker-online", lambda e: e["type"] == "worker-online")[0]
            assert online["hostname"] == worker.hostname
            add = app.send_task("ev.add", (2, 3))
            fail = app.send_task("ev.fail", ("boom",))
            flaky = app.send_task("ev.flaky")
            refuse = app.send_task("ev.refuse")
            held = app.send_task("ev.add", (1, 1), countdown=60)
            expiring = app.send_task("ev.add", (1, 2), countdown=1.5, expires=0.5)
            seen.wait_for(
                "task-received of the held task",
                lambda e: e == {**e, "type": "task-received", "uuid": held.id},
            )
            app.control.revoke(held.id)
            ends = {"task-succeeded", "task-failed", "task-revoked", "task-rejected"}
            seen.wait_for("every end", lambda e: e["type"] in ends, count=6)
            seen.wait_for("a heartbeat", lambda e: e["type"] == "worker-heartbeat")
        finally:
            worker.stop()
            thread.join(15)
        seen.wait_for("worker-offline", lambda e: e["type"] == "worker-offline")

    # task-sent comes from the client's connection, so it may arrive after the worker's events
    assert seen.of(add.id).count("task-sent") == 1
    assert worker_events(seen, add.id) == ["task-received", "task-started", "task-succeeded"]
    assert worker_events(seen, fail.id) == ["task-received", "task-started", "task-failed"]
    assert seen.of(flaky.id).count("task-sent") == 2  # the retry is sent again
    # The retry's message is published while the first run is still ending, so the worker may
    # receive it before it reports the retry (Celery's workers race the same way).
    flaky_events = worker_events(seen, flaky.id)
    assert flaky_events[:2] == ["task-received", "task-started"] and flaky_events[-1] == "task-succeeded"
    assert sorted(flaky_events[2:-1]) == ["task-received", "task-retried", "task-started"]
    assert flaky_events.index("task-retried", 2) < len(flaky_events) - 1
    assert worker_events(seen, refuse.id) == ["task-received", "task-started", "task-failed", "task-rejected"]
    assert worker_events(seen, held.id) == ["task-received", "task-revoked"]
    assert worker_events(seen, expiring.id) == ["task-received", "task-revoked"]

    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in seen.events:
        raw = {k: v for k, v in event.items() if k != "local_received"}  # the receiver's own stamp
        by_type.setdefault(event["type"], []).append(raw)
    for kind, sample in SAMPLES.items():
        assert_like_celery(by_type[kind][0], sample)
    succeeded = next(e for e in by_type["task-succeeded"] if e["uuid"] == add.id)
    assert succeeded["result"] == "5" and 0 <= succeeded["runtime"] < 5
    failed = next(e for e in by_type["task-failed"] if e["uuid"] == fail.id)
    assert failed["exception"] == "ValueError('boom')" and "raise ValueError(message)" in failed["traceback"]
    retried = by_type["task-retried"][0]
    assert "KeyError('attempt 0')" in retried["exception"] and "Retry" in retried["traceback"]
    rejected = by_type["task-rejected"][0]
    assert (
        list(rejected) == [*COMMON, "uuid", "requeue", "timestamp", "type"] and rejected["requeue"] is False
    )
    revoked = {e["uuid"]: e for e in by_type["task-revoked"]}
    assert (revoked[held.id]["expired"], revoked[held.id]["terminated"]) == (False, False)
    assert revoked[expiring.id]["expired"] is True and revoked[expiring.id]["signum"] is None
    sent = next(e for e in by_type["task-sent"] if e["uuid"] == add.id)
    assert (sent["name"], sent["args"], sent["queue"]) == ("ev.add", "(2, 3)", app.conf.task_default_queue)
    assert sent["hostname"].startswith("gen") and sent["root_id"] == add.id
    received = next(e for e in by_type["task-received"] if e["uuid"] == held.id)
    assert received["eta"] and received["eta"].startswith(str(time.gmtime().tm_year))

    from_worker = [e for e in seen.events if e["hostname"] == worker.hostname]
    clocks = [e["clock"] for e in from_worker]
    assert clocks == sorted(clocks) and len(set(clocks)) == len(clocks)  # one Lamport clock, in order
    offline = by_type["worker-offline"][-1]
    assert offline["processed"] >= 5 and offline["active"] == 0


def test_without_task_events_only_worker_events_are_sent(app: Celery) -> None:
    node = Worker(app, pool="threads", concurrency=1, hostname=f"quiet-{uuid.uuid4().hex[:6]}@%h")
    assert node.consumer.events.task_events is False
    with Collector(app) as seen:
        thread = start(node)
        try:
            seen.wait_for("worker-online", lambda e: e["type"] == "worker-online")
            assert app.send_task("ev.add", (1, 1)).get(timeout=WAIT) == 2
            deadline = time.monotonic() + WAIT  # the result is stored before the run is settled
            while node.consumer.processed < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            node.consumer.events.task_events = True  # what the enable_events command does
            assert app.send_task("ev.add", (2, 2)).get(timeout=WAIT) == 4
            seen.wait_for("task-succeeded", lambda e: e["type"] == "task-succeeded")
        finally:
            node.stop()
            thread.join(15)
    worker_side = [
        e["type"] for e in seen.events if e["hostname"] == node.hostname and e["type"].startswith("task")
    ]
    assert worker_side == ["task-received", "task-started", "task-succeeded"]


@pytest.mark.parametrize("kind", ["redis", "amqp"])
def test_message_as_the_broker_holds_it(kind: str, request: pytest.FixtureRequest) -> None:
    """Exchange type, routing key, header, delivery mode and content type as Celery's."""
    url = request.getfixturevalue("redis_url" if kind == "redis" else "amqp_url")
    app = Celery("ev", broker=url, set_as_current=False)
    dispatcher = EventDispatcher(app, "probe@host")
    if kind == "redis":
        import redis

        db = int(url.rsplit("/", 1)[1])
        client = redis.Redis.from_url(url)
        pubsub = client.pubsub()
        pubsub.psubscribe(f"/{db}.celeryev/*")
        assert pubsub.get_message(timeout=5)["type"] == "psubscribe"
        dispatcher.send("worker-online", freq=2.0)
        dispatcher.close()
        message = pubsub.get_message(timeout=5)
        assert message is not None and message["channel"] == f"/{db}.celeryev/worker.online".encode()
        envelope = json.loads(message["data"])
        sample = REDIS_VECTOR["samples_by_type"]["worker-online"]["envelope"]
        assert sorted(envelope) == sorted(sample) and sorted(envelope["properties"]) == sorted(
            sample["properties"]
        )
        assert envelope["headers"] == {"hostname": "probe@host"}
        assert envelope["properties"]["delivery_mode"] == 1
        assert envelope["properties"]["delivery_info"] == {
            "exchange": "celeryev",
            "routing_key": "worker.online",
        }
        assert envelope["content-type"] == "application/json"
        body = json.loads(base64.b64decode(envelope["body"]))
        pubsub.close()
        client.close()
    else:
        with Connection(url) as conn:
            queue = Queue(
                f"probe-{uuid.uuid4().hex[:6]}", Exchange("celeryev", "topic"), "#", auto_delete=True
            )
            bound = queue(conn.default_channel)
            bound.declare()
            dispatcher.send("worker-online", freq=2.0)
            dispatcher.close()
            deadline = time.monotonic() + 5
            while (message := bound.get(no_ack=True)) is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert message is not None
            sample = AMQP_VECTOR["events"][0]
            assert message.delivery_info["exchange"] == "celeryev"
            assert message.delivery_info["routing_key"] == "worker.online"
            assert (
                message.properties["delivery_mode"]
                == sample["basic_properties_without_headers"]["delivery_mode"]
            )
            assert message.content_type == sample["content_type"] and message.headers == {
                "hostname": "probe@host"
            }
            body = json.loads(message.body)
    assert list(body) == [*COMMON, "freq", "timestamp", "type"] and body["hostname"] == "probe@host"
    app.close()


def test_receiver_reads_celerys_own_messages_including_batches(redis_url: str) -> None:
    """The captured Celery messages, PUBLISHed byte for byte, come out as Celery's events."""
    import redis

    app = Celery("ev", broker=redis_url, set_as_current=False)
    db = int(redis_url.rsplit("/", 1)[1])
    client = redis.Redis.from_url(redis_url)
    samples = REDIS_VECTOR["samples_by_type"]
    wanted = [samples["worker-online"], samples["task-sent"], REDIS_VECTOR["task_multi_batch_example"]]
    with Collector(app) as seen:
        for sample in wanted:
            channel = sample["channel"].replace("/15.", f"/{db}.")
            assert client.publish(channel, sample["raw"]) == 1
        seen.wait_for("the batch", lambda e: e["type"] == "task-succeeded")
    client.close()
    assert [e["type"] for e in seen.events] == [
        "worker-online", "task-sent", "task-received", "task-started", "task-succeeded",
    ]  # fmt: skip
    batch = REDIS_VECTOR["task_multi_batch_example"]["decoded_body"]
    for got, sent in zip(seen.events[2:], batch, strict=True):
        assert {k: v for k, v in got.items() if k not in ("local_received", "clock")} == {
            k: v for k, v in sent.items() if k != "clock"
        }
    assert seen.events[1]["clock"] <= seen.events[2]["clock"]  # task-sent: client clocks are not trusted
    assert all("local_received" in e for e in seen.events)
    app.close()


def test_a_dead_broker_costs_events_never_an_exception(caplog: pytest.LogCaptureFixture) -> None:
    app = Celery("ev", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.broker_connection_timeout = 1.0
    dispatcher = EventDispatcher(app, "lonely@host", task_events=True)
    started = time.monotonic()
    for i in range(50):
        dispatcher.task("task-started", uuid=str(i))
    assert time.monotonic() - started < 0.5  # the caller never waits for the broker
    assert dispatcher.flush(timeout=15)
    dispatcher.close(timeout=5)
    assert dispatcher.dropped == 50
    assert sum("Events: cannot publish" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("kind", ["redis", "amqp"])
def test_many_threads_share_one_dispatcher(kind: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_url" if kind == "redis" else "amqp_url")
    app = Celery("ev", broker=url, set_as_current=False)
    dispatcher = EventDispatcher(app, "busy@host", task_events=True)

    def send(n: int) -> None:
        for i in range(200):
            dispatcher.task("task-started", uuid=f"{n}-{i}")

    with Collector(app) as seen:
        threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        dispatcher.close()
        seen.wait_for("1600 events", lambda e: e.get("hostname") == "busy@host", count=1600)
    clocks = [e["clock"] for e in seen.events if e["hostname"] == "busy@host"]
    assert len(set(clocks)) == 1600 and clocks == sorted(clocks)
    assert dispatcher.dropped == 0
    app.close()


def test_exchange_type_follows_the_transport() -> None:
    assert event_exchange(Connection("redis://localhost")).type == "fanout"
    assert event_exchange(Connection("amqp://localhost")).type == "topic"
    assert event_exchange(Connection("amqp://localhost"), "custom").name == "custom"


def test_task_events_that_wait_together_go_as_one_batch(redis_url: str) -> None:
    """Under load task events share a ``task.multi`` message, as a Celery worker's do."""
    import redis

    app = Celery("ev", broker=redis_url, set_as_current=False)
    db = int(redis_url.rsplit("/", 1)[1])
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.psubscribe(f"/{db}.celeryev/*")
    assert pubsub.get_message(timeout=5)["type"] == "psubscribe"
    dispatcher = EventDispatcher(app, "batcher@host", task_events=True)
    dispatcher.task("task-started", uuid="alone")
    assert dispatcher.flush(10)
    for i in range(30):
        dispatcher.task("task-started", uuid=str(i))
    dispatcher.heartbeat()
    dispatcher.close()
    messages = []
    while (message := pubsub.get_message(timeout=2)) is not None:
        body = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
        messages.append((message["channel"].decode().rsplit("/", 1)[1], body))
    pubsub.close()
    client.close()
    app.close()
    assert messages[0][0] == "task.started" and messages[0][1]["uuid"] == "alone"
    batches = [body for key, body in messages if key == "task.multi"]
    assert batches and all(isinstance(b, list) for b in batches)
    assert [e["uuid"] for b in batches for e in b] == [str(i) for i in range(30)]
    assert messages[-1][0] == "worker.heartbeat" and isinstance(messages[-1][1], dict)


def test_a_forked_child_sends_with_a_sender_of_its_own(redis_url: str) -> None:
    """A prefork child (or a task that forks) must not reuse the parent's thread, socket or locks."""
    import multiprocessing

    app = Celery("ev", broker=redis_url, set_as_current=False)
    dispatcher = EventDispatcher(app)  # anonymous: gen<pid>@host, so the child renames itself

    def child() -> None:
        dispatcher.send("probe-child")
        dispatcher.close(timeout=10)

    with Collector(app) as seen:
        dispatcher.send("probe-parent")
        assert dispatcher.flush(10)
        with dispatcher._cond:  # held at fork time, as by a sender mid-batch: the child must not hang
            proc = multiprocessing.get_context("fork").Process(target=child)
            proc.start()
        proc.join(20)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
            pytest.fail("the forked child hung")
        assert proc.exitcode == 0
        event = seen.wait_for("the child's event", lambda e: e["type"] == "probe-child")[0]
    assert event["pid"] == proc.pid and event["hostname"].startswith(f"gen{proc.pid}@")
    parent = next(e for e in seen.events if e["type"] == "probe-parent")
    assert parent["hostname"] == dispatcher.hostname != event["hostname"]
    dispatcher.close()
    app.close()
