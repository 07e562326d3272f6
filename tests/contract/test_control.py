"""Every remote-control command through the Python API, against real workers on Redis and RabbitMQ.

The workers run in threads of this process (``Worker(app, pool=...)``), so a test can set up the
state a command reports (a task running, one reserved, one waiting for its ETA) and check the
worker itself after a command changed it. Every command names its worker (``destination``) so
nothing else listening on the broker can answer in its place.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from taskq import Celery, signals, states
from taskq.exceptions import SoftTimeLimitExceeded
from taskq.worker.worker import Worker

WAIT = 15.0  # seconds any single wait may take


def wait_for(fetch: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(params=["redis", "amqp"])
def app(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Celery]:
    broker = redis_url if request.param == "redis" else request.getfixturevalue("amqp_url")
    app = Celery("ctl", broker=broker, backend=redis_url, set_as_current=False)
    app.conf.task_default_queue = f"ctl-{uuid.uuid4().hex[:8]}"
    gate = threading.Event()
    app.gate = gate  # type: ignore[attr-defined]

    @app.task(name="ctl.block")
    def block(value: Any) -> Any:
        deadline = time.monotonic() + WAIT
        while not gate.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)  # short sleeps: a soft limit or a terminate lands between them
        return value

    @app.task(name="ctl.nap")
    async def nap(value: Any) -> Any:
        deadline = time.monotonic() + WAIT
        while not gate.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return value

    @app.task(name="ctl.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="ctl.limited", rate_limit="10/s")
    def limited() -> None:
        return None

    yield app
    gate.set()
    app.close()


@contextmanager
def running(app: Celery, **options: Any) -> Iterator[Worker]:
    """A worker in a thread, answering pings; stopped (and checked stopped) on the way out."""
    options.setdefault("pool", "threads")
    options.setdefault("concurrency", 1)
    node = Worker(app, hostname=f"ctl-{uuid.uuid4().hex[:6]}@%h", **options)
    node.consumer.idle_wait = 0.05
    thread = threading.Thread(target=node.start, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    node.thread = thread  # type: ignore[attr-defined]
    try:
        wait_for(
            lambda: app.control.ping(destination=[node.hostname], timeout=0.5), f"{node.hostname} to answer"
        )
        yield node
    finally:
        app.gate.set()  # type: ignore[attr-defined]
        node.stop()
        thread.join(WAIT)
        assert not thread.is_alive(), "the worker did not stop"


def one(replies: list[dict[str, Any]] | None, node: Worker) -> Any:
    """The only reply, which must come from ``node``."""
    assert replies is not None and len(replies) == 1, replies
    assert list(replies[0]) == [node.hostname], replies
    return replies[0][node.hostname]


def test_inspect_shows_running_reserved_scheduled_and_revoked(app: Celery) -> None:
    with running(app, prefetch_multiplier=4) as node:
        inspect = app.control.inspect(destination=[node.hostname], timeout=2)
        started = time.time()
        run = app.tasks["ctl.block"].delay("x")
        wait_for(lambda: (inspect.active() or {}).get(node.hostname), "the task to run")
        waiting = app.tasks["ctl.add"].delay(1, 2)
        later = app.tasks["ctl.add"].apply_async((2, 3), countdown=60)
        wait_for(lambda: (inspect.reserved() or {}).get(node.hostname), "a reserved task")
        wait_for(lambda: (inspect.scheduled() or {}).get(node.hostname), "a scheduled task")

        [info] = inspect.active()[node.hostname]
        assert info["id"] == run.id and info["name"] == info["type"] == "ctl.block"
        assert info["args"] == ["x"] and info["kwargs"] == {}
        assert info["worker_pid"] == os.getpid()  # threads run in the worker's own process
        assert info["acknowledged"] is True and info["hostname"] == node.hostname
        assert started - 1 <= info["time_start"] <= time.time()
        assert info["delivery_info"]["routing_key"] == app.conf.task_default_queue
        assert set(info["delivery_info"]) == {"exchange", "routing_key", "priority", "redelivered"}
        assert inspect.active(safe=True)[node.hostname][0]["args"] == "('x',)"

        [reserved] = inspect.reserved()[node.hostname]
        assert reserved["id"] == waiting.id and reserved["args"] == [1, 2]
        assert reserved["worker_pid"] is None and reserved["time_start"] is None
        [scheduled] = inspect.scheduled()[node.hostname]
        assert scheduled["request"]["id"] == later.id and scheduled["priority"] == 6
        assert abs(time.time() + 60 - _epoch(scheduled["eta"])) < 10

        unknown = str(uuid.uuid4())
        assert inspect.query_task(run.id, waiting.id, later.id, unknown) == {
            node.hostname: {
                run.id: ["active", info],
                waiting.id: ["reserved", reserved],
                later.id: ["scheduled", scheduled["request"]],
            }
        }
        assert inspect.query_task([later.id]) == {
            node.hostname: {later.id: ["scheduled", scheduled["request"]]}
        }

        reply = one(app.control.revoke(later.id, destination=[node.hostname], reply=True), node)
        assert reply == {"ok": f"tasks { {later.id} } flagged as revoked"}
        assert later.id in inspect.revoked()[node.hostname]
        assert inspect.scheduled()[node.hostname] == []
        assert later.state == states.REVOKED
        app.gate.set()  # type: ignore[attr-defined]
        assert run.get(timeout=WAIT) == "x" and waiting.get(timeout=WAIT) == 3
        assert wait_for(lambda: inspect.active() == {node.hostname: []}, "nothing running")


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_stats_registered_conf_report_and_queues(app: Celery) -> None:
    app.conf.security_key = "hunter2-private-key"  # a KEY setting: must never leave the worker
    with running(app, concurrency=2) as node:
        assert app.tasks["ctl.add"].delay(2, 2).get(timeout=WAIT) == 4
        assert app.tasks["ctl.add"].delay(3, 3).get(timeout=WAIT) == 6
        inspect = app.control.inspect(destination=[node.hostname], timeout=2)

        stats = inspect.stats()[node.hostname]
        assert {"total", "pid", "clock", "uptime", "pool", "broker", "prefetch_count", "rusage"} <= set(stats)
        assert stats["total"] == {"ctl.add": 2}
        assert stats["pid"] == os.getpid() and int(stats["clock"]) > 0 and stats["uptime"] >= 0
        assert stats["pool"]["max-concurrency"] == 2 and stats["pool"]["processes"] == [os.getpid()]
        assert stats["pool"]["implementation"] == "taskq.worker.pools:ThreadPool"
        assert stats["prefetch_count"] == 2
        # the URL's name, as Celery reports it, also for taskq's own Redis transport class
        assert stats["broker"]["transport"] == app.conf.broker_url.partition(":")[0]
        assert "password" not in stats["broker"]
        assert stats["rusage"]["maxrss"] > 0

        # Tasks of apps made earlier in this process (shared, as in Celery) may be listed too.
        assert [t for t in inspect.registered()[node.hostname] if t.startswith("ctl.")] == [
            "ctl.add",
            "ctl.block",
            "ctl.limited [rate_limit=10/s]",
            "ctl.nap",
        ]
        assert inspect.registered("name")[node.hostname][0] == "ctl.add [name=ctl.add]"
        assert (
            "celery.chord_unlock"
            in app.control.broadcast(
                "registered", {"builtins": True}, destination=[node.hostname], reply=True, timeout=2
            )[0][node.hostname]
        )

        conf = inspect.conf()[node.hostname]
        assert conf["task_default_queue"] == app.conf.task_default_queue
        assert conf["security_key"] == "********"
        assert "worker_concurrency" not in conf  # defaults only when asked for
        assert inspect.conf(with_defaults=True)[node.hostname]["worker_prefetch_multiplier"] == 1
        report = inspect.report()[node.hostname]["ok"]
        assert "software -> taskq:" in report and "task_default_queue" in report
        assert "hunter2" not in report and "hunter2" not in str(inspect.conf(with_defaults=True))
        assert ":********@" in conf["broker_url"]  # Celery's masked form, password or not

        [queue] = inspect.active_queues()[node.hostname]
        assert queue["name"] == queue["routing_key"] == app.conf.task_default_queue
        assert queue["exchange"]["type"] == "direct" and queue["durable"] is True
        assert inspect.clock()[node.hostname]["clock"] > 0
        assert inspect.memsample()[node.hostname].endswith("B")
        assert inspect.ping() == {node.hostname: {"ok": "pong"}}
        assert app.control.ping(destination=[node.hostname]) == [{node.hostname: {"ok": "pong"}}]


def test_time_limit_rate_limit_and_errors(app: Celery) -> None:
    with running(app) as node:
        to = {"destination": [node.hostname], "reply": True, "timeout": 2}
        assert one(app.control.time_limit("ctl.block", soft=0.3, hard=10, **to), node) == {
            "ok": "time limits set successfully"
        }
        result = app.tasks["ctl.block"].delay("slow")
        with pytest.raises(SoftTimeLimitExceeded):
            result.get(timeout=WAIT)
        assert one(app.control.time_limit("ctl.nope", soft=1, **to), node) == {"error": "unknown task"}

        assert one(app.control.rate_limit("ctl.limited", "100/m", **to), node) == {
            "ok": "new rate limit set successfully"
        }
        assert app.tasks["ctl.limited"].rate_limit == "100/m"
        assert one(app.control.rate_limit("ctl.limited", None, **to), node) == {
            "ok": "rate limit disabled successfully"
        }
        assert one(app.control.rate_limit("ctl.limited", "fast", **to), node)["error"].startswith(
            "Invalid rate limit string"
        )
        assert one(app.control.rate_limit("ctl.nope", "1/s", **to), node) == {"error": "unknown task"}

        # A fixed-size pool says so; unknown commands and bad arguments get Celery's error replies.
        assert "fixed size" in one(app.control.pool_grow(1, **to), node)["error"]
        assert one(app.control.autoscale(4, 1, **to), node) == {
            "error": "ValueError('Autoscale not enabled')"
        }
        assert one(app.control.broadcast("no_such_command", **to), node) == {
            "error": "KeyError('no_such_command')"
        }
        assert "TypeError" in one(app.control.broadcast("cancel_consumer", {"bogus": 1}, **to), node)["error"]
        assert (
            "ValueError"
            in one(app.control.terminate(str(uuid.uuid4()), signal="SIGNOPE", **to), node)["error"]
        )
        assert app.tasks["ctl.add"].delay(1, 1).get(timeout=WAIT) == 2  # none of it hurt the worker


def test_terminate_and_revoke_by_stamped_headers(app: Celery) -> None:
    # asyncio: a coroutine is cancelled cleanly (a thread gets Terminated raised inside the task)
    with running(app, pool="asyncio", concurrency=2) as node:
        to = {"destination": [node.hostname], "reply": True, "timeout": 2}
        inspect = app.control.inspect(destination=[node.hostname], timeout=2)
        run = app.tasks["ctl.nap"].delay(1)
        wait_for(lambda: (inspect.active() or {}).get(node.hostname), "the task to run")
        assert one(app.control.terminate(run.id, **to), node) == {"ok": f"terminate: {run.id}"}
        wait_for(lambda: inspect.active() == {node.hostname: []}, "the terminated task to end")
        assert run.state == states.REVOKED
        assert one(app.control.terminate(str(uuid.uuid4()), **to), node) == {"ok": "terminate: tasks unknown"}

        reply = one(app.control.revoke_by_stamped_headers({"batch": "b1"}, **to), node)
        assert reply == {"ok": "headers {'batch': 'b1'} flagged as revoked, but not terminated"}
        stamped = {"stamped_headers": ["batch"]}
        dropped = app.tasks["ctl.add"].apply_async((1, 1), stamps={"batch": "b1"}, **stamped)
        kept = app.tasks["ctl.add"].apply_async((2, 2), stamps={"batch": "b2"}, **stamped)
        assert kept.get(timeout=WAIT) == 4
        wait_for(lambda: dropped.state == states.REVOKED, "the stamped task discarded")

        running_one = app.tasks["ctl.nap"].apply_async((3,), stamps={"batch": ["b3", "x"]}, **stamped)
        wait_for(lambda: (inspect.active() or {}).get(node.hostname), "the stamped task to run")
        reply = one(app.control.revoke_by_stamped_headers({"batch": ["b3"]}, terminate=True, **to), node)
        assert reply == {"ok": "headers {'batch': {'b3'}} revoked"}
        wait_for(lambda: running_one.state == states.REVOKED, "the stamped running task terminated")


def test_add_and_cancel_consumer(app: Celery) -> None:
    extra = f"extra-{uuid.uuid4().hex[:8]}"
    with running(app) as node:
        to = {"destination": [node.hostname], "reply": True, "timeout": 2}
        early = app.tasks["ctl.add"].apply_async((1, 1), queue=extra)
        time.sleep(1.0)
        assert early.state == states.PENDING  # nobody consumes that queue yet
        assert one(app.control.add_consumer(extra, **to), node) == {"ok": f"add consumer {extra}"}
        assert early.get(timeout=WAIT) == 2
        queues = app.control.inspect(destination=[node.hostname], timeout=2).active_queues()[node.hostname]
        assert [q["name"] for q in queues] == [app.conf.task_default_queue, extra]
        assert queues[1]["exchange"]["name"] == queues[1]["routing_key"] == extra

        assert one(app.control.cancel_consumer(extra, **to), node) == {
            "ok": f"no longer consuming from {extra}"
        }
        assert [q.name for q in node.consumer.queues] == [app.conf.task_default_queue]
        time.sleep(1.2)  # a Redis BRPOP already waiting on the old queue list times out first
        late = app.tasks["ctl.add"].apply_async((5, 5), queue=extra)
        time.sleep(1.5)
        assert late.state == states.PENDING
        assert app.tasks["ctl.add"].delay(2, 2).get(timeout=WAIT) == 4  # the default queue still runs
    assert app.control.purge() == 1  # the late message is still waiting in the cancelled queue


def test_pool_grow_shrink_and_autoscale(app: Celery) -> None:
    with running(app, pool="asyncio", concurrency=2, prefetch_multiplier=2) as node:
        to = {"destination": [node.hostname], "reply": True, "timeout": 2}
        inspect = app.control.inspect(destination=[node.hostname], timeout=2)
        assert one(app.control.pool_grow(2, **to), node) == {"ok": "pool will grow"}
        stats = inspect.stats()[node.hostname]
        assert stats["pool"]["max-concurrency"] == 4 and stats["prefetch_count"] == 8
        assert one(app.control.pool_shrink(**to), node) == {"ok": "pool will shrink"}
        assert inspect.stats()[node.hostname]["pool"]["max-concurrency"] == 3
        assert node.consumer.prefetch_count == 6
        assert "cannot shrink" in one(app.control.pool_shrink(5, **to), node)["error"]

    with running(app, pool="asyncio", autoscale=(4, 1)) as node:
        to = {"destination": [node.hostname], "reply": True, "timeout": 2}
        assert one(app.control.autoscale(6, 2, **to), node) == {"ok": "autoscale now max=6 min=2"}
        stats = app.control.inspect(destination=[node.hostname], timeout=2).stats()[node.hostname]
        assert stats["autoscaler"]["max"] == 6 and stats["autoscaler"]["min"] == 2
        assert stats["pool"]["max-concurrency"] == 2  # grown to the new minimum at once
        assert "not supported with autoscale" in one(app.control.pool_grow(1, **to), node)["error"]


def test_event_commands(app: Celery) -> None:
    with running(app) as node:
        to = {"destination": [node.hostname], "reply": True, "timeout": 2}
        dispatcher = getattr(node.consumer, "events", None)
        if dispatcher is None:  # taskq.events not there: Celery's error reply, no crash
            assert one(app.control.enable_events(**to), node) == {"error": "event dispatcher unavailable"}
            return
        dispatcher.task_events = False
        assert one(app.control.enable_events(**to), node) == {"ok": "task events enabled"}
        assert dispatcher.task_events is True
        assert one(app.control.enable_events(**to), node) == {"ok": "task events already enabled"}
        assert one(app.control.disable_events(**to), node) == {"ok": "task events disabled"}
        assert dispatcher.task_events is False
        beats: list[Any] = []

        def on_beat(sender: Any, **kwargs: Any) -> None:
            beats.append(sender)

        signals.heartbeat_sent.connect(on_beat, sender=dispatcher)
        try:
            assert one(app.control.heartbeat(**to), node) is None  # Celery's reply: nothing
            assert beats == [dispatcher]
        finally:
            signals.heartbeat_sent.disconnect(on_beat, sender=dispatcher)


def test_destination_and_shutdown(app: Celery) -> None:
    with running(app) as first, running(app) as second:
        both = app.control.inspect(timeout=1).ping() or {}
        assert {first.hostname, second.hostname} <= set(both)
        assert app.control.inspect(destination=[first.hostname]).ping() == {first.hostname: {"ok": "pong"}}
        assert app.control.inspect(destination=second.hostname).ping() == {
            "ok": "pong"
        }  # one name: its reply
        assert app.control.inspect(destination=["nobody@nowhere"], timeout=0.5).ping() is None

        reply = app.control.shutdown(destination=[first.hostname], reply=True, timeout=2)
        assert one(reply, first)["ok"].startswith("shutdown")
        first.thread.join(WAIT)  # type: ignore[attr-defined]
        assert not first.thread.is_alive()  # type: ignore[attr-defined]
        assert app.control.ping(timeout=1) == [{second.hostname: {"ok": "pong"}}]
        assert app.tasks["ctl.add"].delay(4, 4).get(timeout=WAIT) == 8
