"""One result backend contract, run on every backend: memory, SQLite, Redis and rpc (RabbitMQ).

Each test plays both sides the way the real code does: the client announces a task
(``backend.on_task_call``, as ``App.send_task`` does before publishing), a "worker" stores states
with a request carrying the client's ``reply_to``, and the client reads them through
``AsyncResult``. Backend-specific wire checks (Redis commands, keys, TTLs, rpc message
properties, Celery 5.7 clients on both ends) follow in their own classes.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import ssl
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from database_support import DB_KINDS, db_settings, db_url, inject_row
from kombu import Connection, Queue
from kombu.exceptions import DecodeError

from taskq import states
from taskq.app import App
from taskq.backend.base import ResultBackend
from taskq.backend.memory import MemoryBackend
from taskq.exceptions import (
    BackendGetMetaError,
    BackendStoreError,
    NotRegistered,
    OperationalError,
    SecurityError,
    TaskRevokedError,
)
from taskq.exceptions import TimeoutError as ResultTimeout
from taskq.message import TaskRequest

VECTORS = Path(__file__).resolve().parents[1] / "data" / "vectors"
BACKENDS = [
    "memory",
    "sqlite",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("rpc", marks=pytest.mark.amqp),
    *DB_KINDS,  # db+sqlite, db+postgresql, db+mysql (MariaDB): tables of this run, dropped after
]
NATIVE_WAIT = {"memory", "redis", "rpc"}  # SQLite polls (capped back-off)


class CustomError(Exception):
    """An application exception: must come back as this very class."""


class Unpicklable:
    """Counts how often it was unpickled (it must never be)."""

    loaded = 0

    def __reduce__(self) -> tuple[Any, ...]:
        return (_record_unpickle, ())


def _record_unpickle() -> None:
    Unpicklable.loaded += 1


def load_vector(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return data


def key_order(raw: bytes | str) -> list[str]:
    return [k for k, _ in json.loads(raw, object_pairs_hook=lambda pairs: pairs)]


class Env:
    """An app on one backend, with the client and worker moves the tests need."""

    def __init__(self, kind: str, broker: str, backend: str, **settings: Any) -> None:
        self.kind = kind
        self.app = App("contract", broker=broker, backend=backend, **settings)
        self.backend: ResultBackend = self.app.backend

    def send(self, task_id: str | None = None) -> TaskRequest:
        """Client side of ``send_task``: announce the task; the request a worker would get."""
        task_id = task_id or str(uuid.uuid4())
        self.backend.on_task_call(task_id)
        properties = {"correlation_id": task_id, "reply_to": self.app.thread_oid}
        return TaskRequest(
            name="contract.t", id=task_id, args=[], kwargs={}, headers={}, properties=properties
        )

    def store(self, request: TaskRequest, result: Any, state: str, traceback: str | None = None) -> None:
        self.backend.store_result(request.id, result, state, traceback, request)

    def inject(self, request: TaskRequest, raw: bytes) -> None:
        """Put raw bytes where a reader of this task looks (the store, or the reply queue)."""
        if self.kind == "rpc":
            with self.app.broker.producers.acquire(block=True) as producer:
                producer.publish(
                    raw,
                    exchange="",
                    routing_key=request.reply_to,
                    correlation_id=request.id,
                    content_type="application/json",
                    content_encoding="utf-8",
                )
        elif self.kind in DB_KINDS:
            inject_row(self.backend, request.id, raw)
        else:
            self.backend._set(self.backend.key_for(request.id), raw, None)

    def result(self, request: TaskRequest) -> Any:
        return self.app.AsyncResult(request.id)

    def eventually(self, request: TaskRequest, state: str, timeout: float = 5.0) -> Any:
        """A fresh AsyncResult once it reads ``state`` (rpc replies arrive asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.result(request)
            if result.state == state or time.monotonic() > deadline:
                assert result.state == state
                return result
            time.sleep(0.005)


def make_env(request: pytest.FixtureRequest, kind: str, **settings: Any) -> Env:
    if kind == "memory":
        MemoryBackend.clear()
        return Env(kind, "memory://", "memory://", **settings)
    if kind == "sqlite":
        return Env(kind, "memory://", request.getfixturevalue("sqlite_url"), **settings)
    if kind == "redis":
        return Env(kind, "memory://", request.getfixturevalue("redis_url"), **settings)
    if kind in DB_KINDS:
        return Env(kind, "memory://", db_url(request, kind), **db_settings(request), **settings)
    return Env(kind, request.getfixturevalue("amqp_url"), "rpc://", **settings)


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    environment = make_env(request, request.param)
    yield environment
    environment.app.close()


def in_thread(fun: Callable[[], Any], delay: float = 0.0) -> tuple[threading.Thread, list[float]]:
    """Run ``fun`` after ``delay`` in a thread; the list gets the time it returned."""
    done: list[float] = []

    def run() -> None:
        time.sleep(delay)
        fun()
        done.append(time.perf_counter())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


class TestContract:
    def test_success_round_trip(self, env: Env) -> None:
        req = env.send()
        env.store(req, {"answer": 42}, states.SUCCESS)
        result = env.result(req)
        assert result.get(timeout=5) == {"answer": 42}
        assert result.state == states.SUCCESS and result.successful() and result.ready()
        assert result.date_done is not None

    def test_failure_reraises_builtin_exception_with_traceback(self, env: Env) -> None:
        req = env.send()
        env.store(
            req, ValueError("boom"), states.FAILURE, "Traceback (most recent call last):\nValueError: boom\n"
        )
        result = env.result(req)
        with pytest.raises(ValueError) as info:
            result.get(timeout=5)
        assert info.value.args == ("boom",)
        assert result.state == states.FAILURE and result.failed()
        assert result.traceback == "Traceback (most recent call last):\nValueError: boom\n"
        assert isinstance(env.result(req).get(timeout=5, propagate=False), ValueError)

    def test_failure_reraises_custom_exception_class(self, env: Env) -> None:
        req = env.send()
        env.store(req, CustomError(1, "two"), states.FAILURE)
        with pytest.raises(CustomError) as info:
            env.result(req).get(timeout=5)
        assert type(info.value) is CustomError and info.value.args == (1, "two")

    def test_revoked_raises_task_revoked(self, env: Env) -> None:
        req = env.send()
        env.backend.mark_as_revoked(req.id, "terminated", request=req)
        with pytest.raises(TaskRevokedError):
            env.result(req).get(timeout=5)

    def test_unknown_id_is_pending(self, env: Env) -> None:
        result = env.app.AsyncResult(str(uuid.uuid4()))
        assert result.state == states.PENDING
        assert result.result is None and not result.ready()

    def test_started_and_custom_states(self, env: Env) -> None:
        req = env.send()
        env.store(req, {"pid": 1234, "hostname": "w1@host"}, states.STARTED)
        assert env.eventually(req, states.STARTED).info == {"pid": 1234, "hostname": "w1@host"}
        env.store(req, {"current": 3, "total": 10}, "PROGRESS")
        progress = env.eventually(req, "PROGRESS")
        assert progress.info == {"current": 3, "total": 10} and not progress.ready()
        env.store(req, 7, states.SUCCESS)
        assert env.result(req).get(timeout=5) == 7

    def test_success_is_never_overwritten(self, env: Env) -> None:
        req = env.send()
        env.store(req, 1, states.SUCCESS)
        env.store(req, RuntimeError("late duplicate"), states.FAILURE)
        env.store(req, {"pid": 1, "hostname": "x"}, states.STARTED)
        assert env.result(req).get(timeout=5) == 1
        assert env.eventually(req, states.SUCCESS).result == 1

    def test_forget(self, env: Env) -> None:
        req = env.send()
        env.store(req, "x", states.SUCCESS)
        assert env.eventually(req, states.SUCCESS).result == "x"
        env.result(req).forget()
        assert env.result(req).state == states.PENDING

    def test_get_timeout(self, env: Env) -> None:
        req = env.send()
        start = time.monotonic()
        with pytest.raises(ResultTimeout):
            env.result(req).get(timeout=0.2)
        assert 0.19 <= time.monotonic() - start < 0.7

    def test_on_interval_called_while_waiting(self, env: Env) -> None:
        req = env.send()
        calls: list[float] = []
        with pytest.raises(ResultTimeout):
            env.result(req).get(timeout=0.35, interval=0.1, on_interval=lambda: calls.append(1))
        assert len(calls) >= 2

    def test_wait_wakes_up_when_another_thread_stores(self, env: Env) -> None:
        req = env.send()
        thread, stored = in_thread(lambda: env.store(req, "late", states.SUCCESS), delay=0.2)
        start = time.monotonic()
        assert env.result(req).get(timeout=5) == "late"
        returned = time.perf_counter()
        thread.join(5)
        assert time.monotonic() - start >= 0.19
        latency = returned - stored[0] if stored else 0.0
        print(f"\n{env.kind}: get() returned {latency * 1000:.2f} ms after store_result returned")
        assert latency < (0.1 if env.kind in NATIVE_WAIT else 0.3)

    def test_many_threads_waiting_on_different_ids(self, env: Env) -> None:
        count = 16
        requests: list[TaskRequest | None] = [None] * count
        results: dict[int, Any] = {}
        announced = threading.Barrier(count + 1)

        def client(i: int) -> None:
            request = requests[i] = env.send()  # in this thread: rpc replies go to its queue
            announced.wait(5)
            results[i] = env.result(request).get(timeout=10)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(count)]
        for thread in threads:
            thread.start()
        announced.wait(5)
        time.sleep(0.05)  # let them block in get()
        for i in reversed(range(count)):
            request = requests[i]
            assert request is not None
            env.store(request, {"n": i}, states.SUCCESS)
        for thread in threads:
            thread.join(10)
        assert results == {i: {"n": i} for i in range(count)}

    def test_close_then_use_again(self, env: Env) -> None:
        req = env.send()
        env.store(req, "before", states.SUCCESS)
        assert env.result(req).get(timeout=5) == "before"
        env.backend.close()
        req = env.send()
        env.store(req, "after", states.SUCCESS)
        assert env.result(req).get(timeout=5) == "after"

    def test_malformed_data_is_a_clear_error(self, env: Env) -> None:
        req = env.send()
        env.inject(req, b"not json")
        expected: Any = (
            BackendGetMetaError
            if env.kind in ("redis", "rpc", *DB_KINDS)
            else (BackendGetMetaError, DecodeError)
        )
        start = time.monotonic()
        with pytest.raises(expected):
            env.result(req).get(timeout=3)
        assert time.monotonic() - start < 2
        if env.kind in DB_KINDS:
            return  # a row has no "whole meta" to be a list; bad columns: test_database_backend.py
        other = env.send()
        env.inject(other, b"[1, 2]")
        with pytest.raises(BackendGetMetaError):
            env.result(other).get(timeout=3)

    def test_non_exception_class_is_refused_and_never_called(
        self, env: Env, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        called: list[Any] = []
        monkeypatch.setattr(os, "system", lambda *a: called.append(a))
        req = env.send()
        meta: dict[str, Any] = {
            "status": "FAILURE",
            "result": {"exc_type": "system", "exc_message": ["echo pwned"], "exc_module": "os"},
            "traceback": None,
            "children": [],
            "date_done": "2026-11-21T04:52:28.894189+00:00",
            "task_id": req.id,
        }
        env.inject(req, json.dumps(meta).encode())
        with pytest.raises(SecurityError):
            env.result(req).get(timeout=5)
        assert called == []

    @pytest.mark.parametrize("name", ["redis_result_metas_plain.json", "redis_result_metas_extended.json"])
    def test_celery_metas_decode(self, env: Env, name: str) -> None:
        for case, item in load_vector(f"results/{name}")["metas"].items():
            meta = env.backend.decode(item["raw"])
            assert meta == item["decoded"], case
            if meta.get("status") in states.EXCEPTION_STATES:
                exc = env.backend.exception_from_meta(meta)
                assert isinstance(exc, BaseException), case
                assert type(exc).__name__ == meta["result"]["exc_type"], case
                if case == "unknown_task":
                    assert isinstance(exc, NotRegistered)
                if case == "revoked":
                    assert isinstance(exc, TaskRevokedError)


# -- Redis ------------------------------------------------------------------------------------


@pytest.fixture
def redis_env(request: pytest.FixtureRequest) -> Iterator[Env]:
    environment = make_env(request, "redis")
    yield environment
    environment.app.close()


def monitor(client: Any, key: str, action: Callable[[], None]) -> list[dict[str, Any]]:
    """What Redis received while ``action`` wrote ``key``, up to the PUBLISH on its channel."""
    seen: list[dict[str, Any]] = []
    ready = threading.Event()

    def watch() -> None:
        with client.monitor() as mon:
            ready.set()
            end = time.monotonic() + 5
            while time.monotonic() < end:
                command = mon.next_command()
                seen.append(command)
                if command["command"].startswith(f"PUBLISH {key} "):
                    return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait(5)
    time.sleep(0.1)
    action()
    thread.join(5)
    return [c for c in seen if key in c["command"]]


@pytest.mark.redis
class TestRedis:
    def test_celery_setex_and_publish_in_one_round_trip(self, redis_env: Env, redis_client: Any) -> None:
        """Celery sends GET, then MULTI SETEX PUBLISH EXEC; taskq's script runs the same commands
        on the server (a stored SUCCESS is kept) after one EVALSHA from the worker."""
        req = redis_env.send()
        key = f"celery-task-meta-{req.id}"
        commands = monitor(redis_client, key, lambda: redis_env.store(req, 5, states.SUCCESS))
        raw = redis_client.get(key).decode()
        from_client = [c["command"].split()[0] for c in commands if c.get("client_type") != "lua"]
        in_script = [c["command"] for c in commands if c.get("client_type") == "lua"]
        assert from_client == ["EVALSHA"]
        assert in_script == [f"GET {key}", f"SETEX {key} 86400 {raw}", f"PUBLISH {key} {raw}"]
        assert redis_client.ttl(key) in range(86390, 86401)

    def test_publish_payload_is_the_stored_value(self, redis_env: Env, redis_client: Any) -> None:
        req = redis_env.send()
        key = f"celery-task-meta-{req.id}"
        pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(key)
        pubsub.get_message(timeout=1)
        redis_env.store(req, {"pid": 1, "hostname": "h"}, states.STARTED)
        message = pubsub.get_message(timeout=2)
        assert message is not None and message["channel"].decode() == key
        assert message["data"] == redis_client.get(key)
        pubsub.close()

    @pytest.mark.parametrize("case", ["success", "failure"])
    def test_stored_bytes_match_celery(self, redis_env: Env, redis_client: Any, case: str) -> None:
        vector = load_vector("results/redis_result_metas_plain.json")["metas"][case]
        task_id = vector["decoded"]["task_id"]
        req = redis_env.send(task_id)
        if case == "success":
            redis_env.store(req, 5, states.SUCCESS)
        else:
            redis_env.store(req, ValueError("boom"), states.FAILURE, vector["decoded"]["traceback"])
        raw = redis_client.get(vector["key"])
        assert key_order(raw) == key_order(vector["raw"])
        ours = json.loads(raw)
        ours["date_done"] = vector["decoded"]["date_done"]  # wall clock: the only volatile field
        assert json.dumps(ours) == vector["raw"]
        assert redis_client.ttl(vector["key"]) <= vector["ttl"]

    @pytest.mark.parametrize(("expires", "ttl"), [(60, 60), (None, -1)])
    def test_result_expires(
        self, request: pytest.FixtureRequest, redis_client: Any, expires: Any, ttl: int
    ) -> None:
        env = make_env(request, "redis", result_expires=expires)
        req = env.send()
        env.store(req, 1, states.SUCCESS)
        assert redis_client.ttl(f"celery-task-meta-{req.id}") in (ttl, ttl - 1)
        env.app.close()

    @pytest.mark.parametrize(("prefix", "key_prefix"), [("tq", "tq_"), ("tq:", "tq:"), ("tq.", "tq.")])
    def test_global_keyprefix(
        self, request: pytest.FixtureRequest, redis_client: Any, prefix: str, key_prefix: str
    ) -> None:
        env = make_env(request, "redis", result_backend_transport_options={"global_keyprefix": prefix})
        req = env.send()
        thread, _ = in_thread(lambda: env.store(req, "p", states.SUCCESS), delay=0.1)
        assert env.result(req).get(timeout=5) == "p"
        thread.join(5)
        assert redis_client.exists(f"{key_prefix}celery-task-meta-{req.id}")
        env.app.close()

    def test_get_latency_after_store(self, redis_env: Env) -> None:
        """get() must return within ~1-2 ms of the worker storing the result."""
        from_start, from_end = [], []
        for _ in range(30):
            req = redis_env.send()
            times: list[float] = []

            def worker(req: TaskRequest = req, times: list[float] = times) -> None:
                times.append(time.perf_counter())
                redis_env.store(req, 1, states.SUCCESS)  # GET, then MULTI SETEX PUBLISH EXEC
                times.append(time.perf_counter())

            thread, _ = in_thread(worker, delay=0.02)
            redis_env.result(req).get(timeout=5)
            returned = time.perf_counter()
            thread.join(5)
            from_start.append((returned - times[0]) * 1000)
            from_end.append((returned - times[1]) * 1000)
        print(
            f"\nredis get() latency: {statistics.median(from_start):.2f} ms median "
            f"(max {max(from_start):.2f}) after store_result was called, "
            f"{statistics.median(from_end):.2f} ms median (max {max(from_end):.2f}) after it returned"
        )
        assert statistics.median(from_start) < 5

    def test_every_waiter_is_woken_promptly(self, redis_env: Env, redis_client: Any) -> None:
        """Metas read by one waiting thread reach the others at once, not at their next poll."""
        count = 20
        requests = [redis_env.send() for _ in range(count)]
        returned: dict[int, float] = {}
        threads = []
        for i, request in enumerate(requests):

            def wait(i: int = i, request: TaskRequest = request) -> None:
                redis_env.result(request).get(timeout=10)
                returned[i] = time.perf_counter()

            threads.append(threading.Thread(target=wait, daemon=True))
            threads[-1].start()
        time.sleep(0.1)
        stored = {}
        for i in random.sample(range(count), count):
            redis_env.store(requests[i], i, states.SUCCESS)
            stored[i] = time.perf_counter()
            time.sleep(0.01)
        for thread in threads:
            thread.join(10)
        delays = [returned[i] - stored[i] for i in range(count)]
        print(f"\nredis: {count} waiters, slowest woken {max(delays) * 1000:.2f} ms after its store")
        assert max(delays) < 0.1
        subscriber = redis_env.backend._subscriber  # type: ignore[attr-defined]
        assert not subscriber.waiters and not subscriber.ready and not subscriber.errors
        assert not subscriber.subscribed  # UNSUBSCRIBEd as each became ready
        time.sleep(0.05)
        channels = [f"celery-task-meta-{r.id}" for r in requests]
        assert all(n == 0 for _, n in redis_client.pubsub_numsub(*channels))

    def test_many_threads_many_results(self, redis_env: Env) -> None:
        requests = [redis_env.send() for _ in range(400)]
        results: dict[str, Any] = {}

        def reader(chunk: list[TaskRequest]) -> None:
            for request in chunk:
                results[request.id] = redis_env.result(request).get(timeout=20)

        def writer(chunk: list[TaskRequest]) -> None:
            for request in chunk:
                redis_env.store(request, request.id, states.SUCCESS)

        shuffled = random.sample(requests, len(requests))
        threads = [threading.Thread(target=reader, args=(requests[i::20],), daemon=True) for i in range(20)]
        threads += [threading.Thread(target=writer, args=(shuffled[i::4],), daemon=True) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert results == {r.id: r.id for r in requests}

    def test_malformed_publish_while_waiting(self, redis_env: Env, redis_client: Any) -> None:
        req = redis_env.send()
        key = f"celery-task-meta-{req.id}"
        thread, _ = in_thread(lambda: redis_client.publish(key, b"not json"), delay=0.2)
        start = time.monotonic()
        with pytest.raises(BackendGetMetaError, match=req.id):
            redis_env.result(req).get(timeout=5)
        assert time.monotonic() - start < 1
        thread.join(5)

    def test_reconnects_and_misses_nothing(self, redis_env: Env, redis_client: Any) -> None:
        req = redis_env.send()
        subscriber = redis_env.backend._subscriber  # type: ignore[attr-defined]

        def kill_and_store() -> None:
            with subscriber.cond:
                port = subscriber.pubsub.connection._sock.getsockname()[1]
            clients = redis_client.client_list()
            ident = next(c["id"] for c in clients if c["addr"].endswith(f":{port}"))
            redis_client.client_kill_filter(_id=ident)
            redis_env.store(req, "after reconnect", states.SUCCESS)  # published while nobody listens

        thread, _ = in_thread(kill_and_store, delay=0.2)
        assert redis_env.result(req).get(timeout=10) == "after reconnect"
        thread.join(5)

    def test_subscriptions_are_bounded(self, redis_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr("taskq.backend.redis.MAX_SUBSCRIPTIONS", 50)
        requests = [redis_env.send() for _ in range(200)]
        subscriber = redis_env.backend._subscriber  # type: ignore[attr-defined]
        assert len(subscriber.subscribed) == 50
        redis_env.store(requests[0], "evicted but stored", states.SUCCESS)
        assert redis_env.result(requests[0]).get(timeout=5) == "evicted but stored"
        assert len(subscriber.subscribed) <= 50 and not subscriber.ready and not subscriber.waiters

    def test_unreachable_server_names_the_masked_url(self, request: pytest.FixtureRequest) -> None:
        env = Env("redis", "memory://", "redis://:s3cret@127.0.0.1:1/3")
        req = TaskRequest(name="t", id="x", args=[], kwargs={}, headers={})
        with pytest.raises((BackendStoreError, OperationalError)) as stored:  # reads current, then writes
            env.store(req, 1, states.SUCCESS)
        with pytest.raises(OperationalError) as read:
            env.result(req).get(timeout=1)
        for error in (stored.value, read.value):
            assert "redis://:**@127.0.0.1:1/3" in str(error) and "s3cret" not in str(error)
        env.app.close()

    def test_celery_metas_published_decode(self, redis_env: Env) -> None:
        notifications = load_vector("results/redis_pubsub_state_notifications_extended.json")["notifications"]
        tasks = [n for n in notifications if n["channel"].startswith("celery-task-meta-")]
        assert len(tasks) > 40
        for item in tasks:
            task_id = item["channel"].removeprefix("celery-task-meta-")
            meta = redis_env.backend.decode_meta(task_id, item["data"])  # type: ignore[attr-defined]
            assert meta["task_id"] == task_id

    @pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")  # Celery's own call
    def test_celery_client_reads_taskq_results_and_back(self, redis_env: Env, redis_url: str) -> None:
        celery = pytest.importorskip("celery")
        capp = celery.Celery("interop", broker="memory://", backend=redis_url, set_as_current=False)
        try:
            req = redis_env.send()
            redis_env.store(req, ValueError("from taskq"), states.FAILURE)
            with pytest.raises(ValueError, match="from taskq"):
                capp.AsyncResult(req.id).get(timeout=5)
            other = redis_env.send()
            thread, _ = in_thread(
                lambda: capp.backend.store_result(other.id, [1, "two"], states.SUCCESS), delay=0.1
            )
            assert redis_env.result(other).get(timeout=5) == [1, "two"]
            thread.join(5)
        finally:
            capp.close()


# -- rpc --------------------------------------------------------------------------------------


@pytest.fixture
def rpc_env(request: pytest.FixtureRequest) -> Iterator[Env]:
    environment = make_env(request, "rpc")
    yield environment
    environment.app.close()


@pytest.mark.amqp
class TestRPC:
    def test_result_message_matches_celery(self, rpc_env: Env, amqp_url: str) -> None:
        vector = load_vector("amqp/rpc_backend_result_messages.json")["messages"][1]
        name = f"taskq-test-reply-{uuid.uuid4().hex[:8]}"
        with Connection(amqp_url) as conn:
            queue = Queue(name, routing_key=name, auto_delete=True, durable=False)(conn.default_channel)
            queue.declare()
            task_id = str(uuid.uuid4())
            request = TaskRequest(
                name="t", id=task_id, args=[], kwargs={}, headers={}, properties={"reply_to": name}
            )
            rpc_env.store(request, 5, states.SUCCESS)
            message = None
            for _ in range(100):
                message = queue.get(no_ack=True, accept=["json"])
                if message is not None:
                    break
                time.sleep(0.02)
            assert message is not None
            expected = dict(vector["basic_properties_without_headers"], correlation_id=task_id)
            properties = {k: message.properties.get(k) for k in expected}
            assert properties == expected
            assert message.headers in ({}, None)
            assert message.delivery_info["exchange"] == "" and message.delivery_info["routing_key"] == name
            assert key_order(message.body) == key_order(vector["body_utf8"])
            assert message.payload["result"] == 5 and message.payload["task_id"] == task_id

    def test_reply_queue_declared_as_celery_declares_it(self, rpc_env: Env, amqp_url: str) -> None:
        rpc_env.send()
        oid = rpc_env.app.thread_oid
        with Connection(amqp_url) as conn:
            channel = conn.default_channel
            channel.queue_declare(queue=oid, passive=True)  # exists
            # a different declaration would fail with PRECONDITION_FAILED
            channel.queue_declare(
                queue=oid, durable=True, auto_delete=True, arguments={"x-expires": 86400000}
            )

    def test_results_only_in_the_sending_thread(self, rpc_env: Env) -> None:
        req = rpc_env.send()
        rpc_env.store(req, "mine", states.SUCCESS)
        assert rpc_env.result(req).get(timeout=5) == "mine"
        seen: list[str] = []
        thread = threading.Thread(target=lambda: seen.append(rpc_env.result(req).state))
        thread.start()
        thread.join(5)
        assert seen == [states.PENDING]

    def test_published_without_reply_to_is_skipped(self, rpc_env: Env) -> None:
        request = TaskRequest(name="t", id=str(uuid.uuid4()), args=[], kwargs={}, headers={})
        meta = rpc_env.backend.store_result(request.id, 1, states.SUCCESS, request=request)
        assert meta["status"] == states.SUCCESS

    def test_reconnects_after_the_connection_drops(self, rpc_env: Env) -> None:
        req = rpc_env.send()
        reader = rpc_env.backend._reader()  # type: ignore[attr-defined]
        reader.connection.connection.sock.shutdown(2)  # as if the broker went away
        thread, _ = in_thread(lambda: rpc_env.store(req, "again", states.SUCCESS), delay=0.3)
        with pytest.raises(ResultTimeout):  # the drop is noticed, the queue declared again
            rpc_env.result(req).get(timeout=0.2)
        thread.join(5)
        assert rpc_env.result(req).get(timeout=5) == "again"

    def test_refused_content_type_is_never_decoded(self, rpc_env: Env) -> None:
        req = rpc_env.send()
        with rpc_env.app.broker.producers.acquire(block=True) as producer:
            producer.publish(
                pickle.dumps(Unpicklable()),
                exchange="",
                routing_key=req.reply_to,
                correlation_id=req.id,
                content_type="application/x-python-serialize",
                content_encoding="binary",
            )
        with pytest.raises(BackendGetMetaError, match="ContentDisallowed"):
            rpc_env.result(req).get(timeout=5)
        assert Unpicklable.loaded == 0

    def test_unreachable_broker_names_the_masked_url(self) -> None:
        env = Env("rpc", "amqp://guest:s3cret@127.0.0.1:1//", "rpc://")
        request = TaskRequest(name="t", id="x", args=[], kwargs={}, headers={}, properties={"reply_to": "q"})
        with pytest.raises(OperationalError) as read:
            env.send()
        with pytest.raises(BackendStoreError) as stored:
            env.store(request, 1, states.SUCCESS)
        for error in (read.value, stored.value):
            assert "amqp://guest:**@127.0.0.1:1//" in str(error) and "s3cret" not in str(error)
        env.app.close()

    def test_buffer_is_bounded(self, rpc_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr("taskq.backend.rpc.MAX_BUFFERED", 20)
        requests = [rpc_env.send() for _ in range(50)]
        for request in requests:
            rpc_env.store(request, request.id, states.SUCCESS)
        assert rpc_env.result(requests[-1]).get(timeout=5) == requests[-1].id
        reader = rpc_env.backend._reader()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5
        while len(reader.metas) < 20 and time.monotonic() < deadline:
            reader.drain(0.05)
        assert len(reader.metas) == 20

    def test_celery_client_reads_taskq_results_and_back(self, rpc_env: Env, amqp_url: str) -> None:
        celery = pytest.importorskip("celery")
        capp = celery.Celery("interop", broker=amqp_url, backend="rpc://", set_as_current=False)
        try:
            # Celery client -> taskq worker side: reply_to/correlation_id from Celery's own message
            queue = f"taskq-test-interop-{uuid.uuid4().hex[:8]}"
            sent = capp.send_task("interop.add", args=(2, 3), queue=queue)
            with Connection(amqp_url) as conn:
                message = None
                for _ in range(100):
                    message = Queue(queue)(conn.default_channel).get(no_ack=True, accept=["json"])
                    if message is not None:
                        break
                    time.sleep(0.02)
                assert message is not None
                Queue(queue)(conn.default_channel).delete()
            request = TaskRequest(
                name="interop.add", id=sent.id, args=[], kwargs={}, headers={}, properties=message.properties
            )
            rpc_env.store(request, 5, states.SUCCESS)
            assert sent.get(timeout=5) == 5
            # taskq client -> Celery worker side
            req = rpc_env.send()
            creq = type("Req", (), {"reply_to": req.reply_to, "correlation_id": req.id, "children": []})()
            capp.backend.store_result(req.id, "from celery", states.SUCCESS, request=creq)
            assert rpc_env.result(req).get(timeout=5) == "from celery"
        finally:
            capp.close()


# -- Redis URLs (no server needed) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost", {"host": "localhost", "password": None}),
        ("redis://:p%40ss@h:6380/4", {"host": "h", "port": 6380, "db": 4, "password": "p@ss"}),
        (
            "redis://u:pw@h/2?socket_timeout=5",
            {"username": "u", "password": "pw", "db": 2, "socket_timeout": 5.0},
        ),
        (
            "rediss://h/1?ssl_cert_reqs=none",
            {"ssl_cert_reqs": ssl.CERT_NONE, "connection_class": redis.SSLConnection},
        ),
        ("rediss://h/1?ssl_cert_reqs=CERT_OPTIONAL", {"ssl_cert_reqs": ssl.CERT_OPTIONAL}),
        ("rediss://h/1", {"ssl_cert_reqs": ssl.CERT_REQUIRED}),
        ("redis+socket:///tmp/r.sock?virtual_host=3", {"path": "/tmp/r.sock", "db": 3}),
        ("socket:///tmp/r.sock", {"path": "/tmp/r.sock", "db": 0}),
    ],
)
def test_redis_url_forms(url: str, expected: dict[str, Any]) -> None:
    from taskq.backend.redis import connparams_from_url

    params = connparams_from_url(url, App("urls").conf)
    assert {k: params.get(k) for k in expected} == expected
    assert params["socket_timeout"] == expected.get("socket_timeout", 120.0)


@pytest.mark.parametrize(
    "url",
    [
        "redis://h/1?ssl_cert_reqs=none",
        "redis://h/1?bogus=1",
        "rediss://h?ssl_cert_reqs=maybe",
        "redis://h/x",
    ],
)
def test_bad_redis_urls_are_refused_clearly(url: str) -> None:
    from taskq.backend.redis import connparams_from_url
    from taskq.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured):
        connparams_from_url(url, App("urls").conf)
