"""Monitoring events between taskq and Celery 5.7 processes, in both directions, on real brokers.

- A ``taskq worker -E`` subprocess runs every task life cycle (success, failure, retry, revoke,
  reject) while two monitors listen: taskq's receiver and **Celery's own**
  ``app.events.Receiver``; Celery's ``events.State``, fed what Celery's receiver decoded, must
  show the worker alive (then gone after ``worker-offline``) and each task in its final state
  with its result or exception.
- A ``celery worker -E`` subprocess (which batches task events as ``task.multi``) is watched by
  taskq's ``app.events.Receiver`` and ``State``.

Redis (fanout ``celeryev``, pub/sub) and RabbitMQ (topic ``celeryev``) both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from taskq import Celery
from taskq.events import EventDispatcher
from taskq.events_receiver import EventReceiver

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WAIT = 30.0

APP_MODULE = """\
from {package} import Celery
from {package}.exceptions import Reject

app = Celery("evapp", broker={broker!r})
app.conf.broker_connection_retry_on_startup = True
app.conf.task_default_queue = {queue!r}
app.conf.task_send_sent_event = True


@app.task(name="evapp.add")
def add(x, y):
    return x + y


@app.task(name="evapp.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="evapp.flaky", bind=True, max_retries=2)
def flaky(self):
    if self.request.retries < 1:
        raise self.retry(exc=KeyError("attempt 0"), countdown=1)  # runs again once this run ended
    return "ok"


@app.task(name="evapp.refuse", acks_late=True)
def refuse():
    raise Reject("not for me", requeue=False)
"""


@pytest.fixture(params=["redis", "amqp"])
def broker(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("redis_url" if request.param == "redis" else "amqp_url"))


class Events:
    """What one monitor received, appended from its thread; ``wait_for`` has a bound."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.items: list[dict[str, Any]] = []

    def add(self, event: dict[str, Any]) -> None:
        self.items.append(event)

    def wait_for(self, what: str, test: Callable[[dict[str, Any]], bool], proc: Any = None) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while True:
            for event in list(self.items):
                if test(event):
                    return event
            if proc is not None and proc.poll() is not None:
                pytest.fail(f"{self.name}: the worker exited before {what}:\n{proc.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name}: no {what} within {WAIT} s; got {[e['type'] for e in self.items]}")
            time.sleep(0.02)

    def types_of(self, task_id: str) -> list[str]:
        return [e["type"] for e in list(self.items) if e.get("uuid") == task_id]

    def real(self) -> list[dict[str, Any]]:
        return [e for e in self.items if not e["type"].startswith("probe-")]


@contextmanager
def taskq_monitor(app: Celery, seen: Events) -> Iterator[EventReceiver]:
    receiver = app.events.Receiver(None, handlers={"*": seen.add})
    thread = threading.Thread(target=receiver.capture, kwargs={"timeout": 300}, daemon=True)
    thread.start()
    try:
        assert receiver.ready.wait(10)
        yield receiver
    finally:
        receiver.should_stop = True
        thread.join(5)


@contextmanager
def celery_monitor(url: str, seen: Events) -> Iterator[Any]:
    import celery

    capp = celery.Celery("monitor", broker=url, set_as_current=False)
    conn = capp.connection_for_read()
    receiver = capp.events.Receiver(conn, handlers={"*": seen.add})
    thread = threading.Thread(target=receiver.capture, kwargs={"wakeup": False}, daemon=True)
    thread.start()
    try:
        yield capp
    finally:
        receiver.should_stop = True
        thread.join(10)
        conn.release()


def until_listening(app: Celery, *monitors: Events) -> None:
    """Send probe events until every monitor got one: from then on none misses an event."""
    probe = EventDispatcher(app, "probe@test")
    deadline = time.monotonic() + WAIT
    try:
        while not all(any(e["type"] == "probe-ping" for e in m.items) for m in monitors):
            assert time.monotonic() < deadline, "the monitors never started listening"
            probe.send("probe-ping")
            time.sleep(0.2)
    finally:
        probe.close()


class Proc:
    """A worker subprocess with its log; SIGTERM, then kill, on the way out."""

    def __init__(self, argv: list[str], cwd: Path, name: str) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(cwd), str(ROOT)]), PYTHONUNBUFFERED="1")
        self.log_path = cwd / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def poll(self) -> int | None:
        return self.proc.poll()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def write_app(tmp_path: Path, package: str, broker: str) -> str:
    queue = f"ev-{uuid.uuid4().hex[:8]}"
    (tmp_path / f"evapp_{package}.py").write_text(
        APP_MODULE.format(package=package, broker=broker, queue=queue)
    )
    return queue


def test_celery_monitors_read_a_taskq_worker(broker: str, tmp_path: Path) -> None:
    import celery.events.state

    queue = write_app(tmp_path, "taskq", broker)
    client = Celery("evapp", broker=broker, set_as_current=False)
    client.conf.task_default_queue = queue
    client.conf.task_send_sent_event = True
    ours, theirs = Events("taskq receiver"), Events("Celery receiver")
    node = f"tq-{uuid.uuid4().hex[:6]}@{os.uname().nodename}"
    pool = ["-P", "threads"] if broker.startswith("redis") else ["-P", "prefork", "-c", "2"]  # both pools
    argv = [str(BIN / "taskq"), "-A", "evapp_taskq", "worker", *pool, "-E", "-l", "INFO", "-n", node]
    with taskq_monitor(client, ours), celery_monitor(broker, theirs):
        until_listening(client, ours, theirs)
        worker = Proc(argv, tmp_path, "taskq-worker")
        try:
            for seen in (ours, theirs):
                seen.wait_for(
                    "worker-online", lambda e: e == {**e, "type": "worker-online", "hostname": node}, worker
                )
            add = client.send_task("evapp.add", (2, 3))
            fail = client.send_task("evapp.fail", ("boom",))
            flaky = client.send_task("evapp.flaky")
            refuse = client.send_task("evapp.refuse")
            held = client.send_task("evapp.add", (1, 1), countdown=60)
            ours.wait_for(
                "held received", lambda e: e == {**e, "type": "task-received", "uuid": held.id}, worker
            )
            client.control.revoke(held.id)
            last = {
                add.id: "task-succeeded", fail.id: "task-failed", flaky.id: "task-succeeded",
                refuse.id: "task-rejected", held.id: "task-revoked",
            }  # fmt: skip
            for seen in (ours, theirs):
                for task_id, kind in last.items():
                    seen.wait_for(
                        f"{kind} of {task_id}", lambda e, k=kind, t=task_id: e == {**e, "type": k, "uuid": t}
                    )
                seen.wait_for(
                    "a heartbeat", lambda e: e == {**e, "type": "worker-heartbeat", "hostname": node}
                )
        finally:
            worker.stop()
        assert worker.proc.returncode == 0, worker.log()
        for seen in (ours, theirs):
            seen.wait_for("worker-offline", lambda e: e == {**e, "type": "worker-offline", "hostname": node})
    client.close()

    # Celery decoded exactly what taskq's receiver decoded.
    def key(e: dict[str, Any]) -> tuple[str, str, str]:
        return (e["type"], e.get("uuid") or "", e["hostname"])

    assert sorted(map(key, theirs.real())) == sorted(map(key, ours.real()))
    assert theirs.types_of(add.id).count("task-sent") == 1
    assert [t for t in theirs.types_of(add.id) if t != "task-sent"] == [
        "task-received", "task-started", "task-succeeded",
    ]  # fmt: skip
    assert [t for t in theirs.types_of(refuse.id) if t != "task-sent"][-2:] == [
        "task-failed",
        "task-rejected",
    ]

    # Celery's State, fed Celery's decoding: the worker lives until its worker-offline.
    state = celery.events.state.State()
    events = theirs.real()
    offline = next(i for i, e in enumerate(events) if e["type"] == "worker-offline" and e["hostname"] == node)
    for event in events[:offline]:
        state.event(event)
    # Celery's Worker.alive compares *now* with the last heartbeat: judged after a slow stop it
    # would say offline. Judge it when the last event before worker-offline arrived instead.
    seen_at = events[offline - 1].get("local_received", time.time())
    assert state.workers[node].heartbeats and seen_at < state.workers[node].heartbeat_expires
    assert state.workers[node].sw_ident == "py-celery" and len(state.workers[node].loadavg) == 3
    tasks = state.tasks
    assert (tasks[add.id].state, tasks[add.id].result, tasks[add.id].name) == ("SUCCESS", "5", "evapp.add")
    assert tasks[add.id].worker.hostname == node and tasks[add.id].runtime >= 0
    assert tasks[add.id].client.startswith("gen") and tasks[add.id].args == "(2, 3)"
    assert (tasks[fail.id].state, tasks[fail.id].exception) == ("FAILURE", "ValueError('boom')")
    assert "raise ValueError(message)" in tasks[fail.id].traceback
    assert (tasks[flaky.id].state, tasks[flaky.id].result) == ("SUCCESS", "'ok'") and tasks[flaky.id].retried
    assert tasks[refuse.id].state == "FAILURE" and tasks[refuse.id].rejected
    assert tasks[held.id].state == "REVOKED"
    for event in events[offline:]:
        state.event(event)
    assert not state.workers[node].alive


def test_taskq_monitors_read_a_celery_worker(broker: str, tmp_path: Path) -> None:
    import celery

    queue = write_app(tmp_path, "celery", broker)
    capp = celery.Celery("evapp", broker=broker, set_as_current=False)
    capp.conf.task_default_queue = queue
    capp.conf.task_send_sent_event = True
    monitor_app = Celery("monitor", broker=broker, set_as_current=False)
    seen = Events("taskq receiver")
    bodies: list[Any] = []

    class Recording(EventReceiver):  # notes each message's shape: one event or a task.multi list
        def _receive(self, body: Any, message: Any) -> None:
            bodies.append(body)
            super()._receive(body, message)

    node = f"cel-{uuid.uuid4().hex[:6]}@{os.uname().nodename}"
    argv = [str(BIN / "celery"), "-A", "evapp_celery", "worker", "-P", "solo", "-E", "-l", "INFO", "-n", node,
            "--without-mingle", "--without-gossip"]  # fmt: skip
    receiver = Recording(monitor_app, {"*": seen.add})
    thread = threading.Thread(target=receiver.capture, kwargs={"timeout": 300, "wakeup": False}, daemon=True)
    thread.start()
    try:
        assert receiver.ready.wait(10)
        until_listening(monitor_app, seen)
        worker = Proc(argv, tmp_path, "celery-worker")
        try:
            seen.wait_for(
                "worker-online", lambda e: e == {**e, "type": "worker-online", "hostname": node}, worker
            )
            add = capp.send_task("evapp.add", (2, 3))
            fail = capp.send_task("evapp.fail", ("boom",))
            seen.wait_for("success", lambda e: e == {**e, "type": "task-succeeded", "uuid": add.id}, worker)
            seen.wait_for("failure", lambda e: e == {**e, "type": "task-failed", "uuid": fail.id}, worker)
            seen.wait_for("a heartbeat", lambda e: e == {**e, "type": "worker-heartbeat", "hostname": node})
        finally:
            worker.stop()
        seen.wait_for("worker-offline", lambda e: e == {**e, "type": "worker-offline", "hostname": node})
    finally:
        receiver.should_stop = True
        thread.join(10)
    monitor_app.close()

    assert any(isinstance(body, list) for body in bodies), "Celery sent no task.multi batch this time"
    state = monitor_app.events.State()
    events = seen.real()
    offline = next(i for i, e in enumerate(events) if e["type"] == "worker-offline")
    for event in events[:offline]:
        state.event(event)
    worker_state = state.workers[node]
    assert worker_state.alive and worker_state.sw_ident == "py-celery" and worker_state.freq == 2.0
    assert state.tasks[add.id].state == "SUCCESS" and state.tasks[add.id].result == "5"
    assert state.tasks[add.id].client is not None and state.tasks[add.id].worker is worker_state
    assert state.tasks[fail.id].state == "FAILURE" and state.tasks[fail.id].exception == "ValueError('boom')"
    assert {add.id, fail.id} <= {u for u, _ in state.tasks_by_time()}
    for event in events[offline:]:
        state.event(event)
    assert not state.workers[node].alive
