"""taskq and real Celery 5.7 processes on one broker, in both directions.

- Celery's captured messages (``tests/data/vectors/messages``), pushed byte for byte onto the
  Redis ``celery`` list, are run by a ``taskq worker`` subprocess; the result it stores must
  be Celery's meta (key order, JSON layout, TTL) and a Celery client must read it.
- A Celery client sends to a ``taskq worker`` subprocess and gets values and exceptions back.
- A taskq client sends to a ``celery worker`` subprocess and gets values and exceptions back.
- The same client -> worker runs on RabbitMQ with the ``rpc://`` result backend.

Every worker is its own process, started from an app module written into ``tmp_path``; the
same module text serves both sides, only the ``Celery`` import differs.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "data" / "vectors"
BIN = Path(sys.executable).parent
WAIT = 30.0  # seconds any single result may take (worker start-up included)
T = TypeVar("T")

pytestmark = pytest.mark.e2e

APP_MODULE = """\
from {package} import Celery

app = Celery("specapp", broker={broker!r}, backend={backend!r})
app.conf.broker_connection_retry_on_startup = True


@app.task(name="specapp.add")
def add(x, y):
    return x + y


@app.task(name="specapp.mul")
def mul(x, y):
    return x * y


@app.task(name="specapp.greet")
def greet(name, greeting="hello", punct="!"):
    return f"{{greeting}} {{name}}{{punct}}"


@app.task(name="specapp.fail")
def fail(message):
    raise ValueError(message)
"""


def load_vector(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text())


# --------------------------------------------------------------------------------------------
# Worker subprocesses
# --------------------------------------------------------------------------------------------


@dataclass
class Worker:
    """A worker subprocess and its log, for failure messages."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return "<no log>"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.log()}")


def write_app(tmp_path: Path, module: str, package: str, broker: str, backend: str) -> None:
    (tmp_path / f"{module}.py").write_text(APP_MODULE.format(package=package, broker=broker, backend=backend))


@contextmanager
def worker_process(argv: list[str], cwd: Path, name: str) -> Iterator[Worker]:
    """Run ``argv`` in ``cwd`` (importable from there); SIGTERM, then kill, on the way out."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(cwd), str(ROOT)]), PYTHONUNBUFFERED="1")
    log_path = cwd / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    worker = Worker(proc, log_path)
    try:
        yield worker
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def taskq_worker(module: str) -> list[str]:
    node = f"taskq-{uuid.uuid4().hex[:8]}@%h"
    return [str(BIN / "taskq"), "-A", module, "worker", "-P", "solo", "-l", "info", "-n", node]


def celery_worker(module: str) -> list[str]:
    node = f"celery-{uuid.uuid4().hex[:8]}@%h"
    return [
        str(BIN / "celery"), "-A", module, "worker", "-P", "solo", "-l", "info", "-n", node,
        "--without-mingle", "--without-gossip", "--without-heartbeat",
    ]  # fmt: skip


def poll(what: str, fetch: Callable[[], T | None], worker: Worker, timeout: float = WAIT) -> T:
    """``fetch()`` until it returns something, failing with the worker's log at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        value = fetch()
        if value is not None:
            return value
        worker.check_alive()
        if time.monotonic() >= deadline:
            pytest.fail(f"no {what} after {timeout} s; worker log:\n{worker.log()}")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def result_of(result: Any, worker: Worker, timeout: float = WAIT) -> Any:
    """``result.get()`` (Celery's or taskq's), with the worker log when it times out."""
    try:
        return result.get(timeout=timeout)
    except Exception as exc:
        if type(exc).__name__ == "TimeoutError":
            pytest.fail(f"{result!r}.get() timed out after {timeout} s; worker log:\n{worker.log()}")
        raise


def failure_of(result: Any, worker: Worker, timeout: float = WAIT) -> BaseException:
    try:
        value = result_of(result, worker, timeout)
    except Exception as exc:
        return exc
    pytest.fail(f"{result!r} returned {value!r} instead of raising")


# --------------------------------------------------------------------------------------------
# Celery's messages, byte for byte -> taskq worker -> Celery's result format
# --------------------------------------------------------------------------------------------

SUCCESS_META = load_vector("results/redis_result_metas_plain.json")["metas"]["success"]
FAILURE_META = load_vector("results/redis_result_metas_plain.json")["metas"]["failure"]


def as_stored_by_celery(raw: bytes, vector_meta: dict[str, Any]) -> str:
    """Our stored JSON with the volatile values (date_done, task_id) set to the vector's."""
    ours = json.loads(raw)
    text = raw.decode()
    for key in ("date_done", "task_id"):
        text = text.replace(json.dumps(ours[key]), json.dumps(vector_meta["decoded"][key]), 1)
    return text


def runnable_now(raw: str) -> str:
    """The captured raw message, unchanged unless its protocol-1 ETA lies in the future.

    The protocol-1 vector carries the capture's wall-clock ETA (2026-11-21T04:52:07Z); on a
    machine whose clock is earlier the worker would rightly hold it back, so only then it is
    moved to now. Everything else stays byte for byte.
    """
    envelope = json.loads(raw)
    body = json.loads(base64.b64decode(envelope["body"]))
    eta = body.get("eta") if isinstance(body, dict) else None
    if eta is None or datetime.fromisoformat(eta) <= datetime.now(timezone.utc):
        return raw
    body["eta"] = datetime.now(timezone.utc).isoformat()
    envelope["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    return json.dumps(envelope)


@pytest.mark.redis
@pytest.mark.parametrize(
    ("vector", "expected"),
    [
        pytest.param("task_delay_basic.json", 5, id="delay-basic"),
        pytest.param("task_kwargs.json", "hi bob?", id="kwargs"),
        pytest.param("protocol1_message.json", 5, id="protocol1"),
    ],
)
def test_taskq_worker_runs_celery_vector(
    vector: str, expected: Any, tmp_path: Path, redis_url: str, redis_client: Any
) -> None:
    import celery

    message = load_vector(f"messages/{vector}")["messages"][0]
    envelope = json.loads(message["raw"])
    task_id = envelope["properties"]["correlation_id"]
    key = f"celery-task-meta-{task_id}"
    redis_client.lpush(message["redis_key"], runnable_now(message["raw"]))
    write_app(tmp_path, "specapp_taskq", "taskq", redis_url, redis_url)

    with worker_process(taskq_worker("specapp_taskq"), tmp_path, "taskq-worker") as worker:
        raw = poll(f"result at {key}", lambda: redis_client.get(key), worker)

        meta = json.loads(raw)
        assert list(meta) == list(SUCCESS_META["decoded"])
        assert meta["status"] == "SUCCESS"
        assert meta["result"] == expected
        assert meta["task_id"] == task_id
        assert datetime.fromisoformat(meta["date_done"]).utcoffset() == timedelta(0)
        body = json.loads(base64.b64decode(envelope["body"]))
        callbacks = body.get("callbacks") if isinstance(body, dict) else None
        if callbacks:
            # The protocol-1 vector links specapp.mul: like Celery's worker, taskq sends the
            # callback before storing the result, so it is listed as a child.
            assert len(meta["children"]) == len(callbacks)
            raw = raw.replace(json.dumps(meta["children"]).encode(), b"[]", 1)
        if expected == 5:  # same result as the captured run: the stored JSON is Celery's, byte for byte
            assert as_stored_by_celery(raw, SUCCESS_META) == SUCCESS_META["raw"]
        assert SUCCESS_META["ttl"] - 60 < redis_client.ttl(key) <= SUCCESS_META["ttl"]
        assert redis_client.llen(message["redis_key"]) == 0, "the message must be consumed"

        client = celery.Celery("specapp", broker=redis_url, backend=redis_url)
        try:
            assert client.AsyncResult(task_id).get(timeout=WAIT) == expected
        finally:
            client.close()


# --------------------------------------------------------------------------------------------
# Celery client -> taskq worker, and taskq client -> Celery worker (Redis broker and backend)
# --------------------------------------------------------------------------------------------


def client_tasks(app: Any) -> dict[str, Any]:
    """Client-side declarations of the worker's tasks (bodies never run here)."""

    @app.task(name="specapp.add")
    def add(x: Any, y: Any) -> Any:
        raise AssertionError("must run in the worker")

    @app.task(name="specapp.greet")
    def greet(name: str, greeting: str = "hello", punct: str = "!") -> str:
        raise AssertionError("must run in the worker")

    @app.task(name="specapp.fail")
    def fail(message: str) -> None:
        raise AssertionError("must run in the worker")

    return {"add": add, "greet": greet, "fail": fail}


def check_round_trips(tasks: dict[str, Any], worker: Worker) -> None:
    """The four calls of the brief; the same assertions whichever side is Celery."""
    add, greet, fail = tasks["add"], tasks["greet"], tasks["fail"]

    assert result_of(add.delay(2, 3), worker) == 5

    sent = datetime.now(timezone.utc)
    delayed = add.apply_async((4, 5), countdown=1)
    assert result_of(delayed, worker) == 9
    date_done = delayed.date_done
    if isinstance(date_done, str):
        date_done = datetime.fromisoformat(date_done)
    assert date_done - sent >= timedelta(seconds=0.9), "countdown=1 ran before its ETA"

    assert result_of(greet.apply_async(("bob",), {"greeting": "hi", "punct": "?"}), worker) == "hi bob?"

    failing = fail.delay("boom")
    exc = failure_of(failing, worker)
    assert type(exc) is ValueError
    assert exc.args == ("boom",)
    assert failing.state == "FAILURE"
    assert "ValueError: boom" in (failing.traceback or "")


@pytest.mark.redis
def test_celery_client_taskq_worker_redis(tmp_path: Path, redis_url: str, redis_client: Any) -> None:
    import celery

    write_app(tmp_path, "specapp_taskq", "taskq", redis_url, redis_url)
    client = celery.Celery("specapp", broker=redis_url, backend=redis_url)
    try:
        tasks = client_tasks(client)
        with worker_process(taskq_worker("specapp_taskq"), tmp_path, "taskq-worker") as worker:
            check_round_trips(tasks, worker)
            failed_id = tasks["fail"].delay("boom").id
            raw = poll("failure meta", lambda: redis_client.get(f"celery-task-meta-{failed_id}"), worker)
    finally:
        client.close()
    meta = json.loads(raw)
    assert list(meta) == list(FAILURE_META["decoded"])
    assert meta["result"] == FAILURE_META["decoded"]["result"]  # ValueError("boom"), builtins


@pytest.mark.redis
def test_taskq_client_celery_worker_redis(tmp_path: Path, redis_url: str, redis_client: Any) -> None:
    import taskq

    write_app(tmp_path, "specapp_celery", "celery", redis_url, redis_url)
    client = taskq.Celery("specapp", broker=redis_url, backend=redis_url)
    try:
        tasks = client_tasks(client)
        with worker_process(celery_worker("specapp_celery"), tmp_path, "celery-worker") as worker:
            check_round_trips(tasks, worker)
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# RabbitMQ with the rpc:// result backend
# --------------------------------------------------------------------------------------------


@pytest.mark.amqp
def test_celery_client_taskq_worker_rabbitmq_rpc(tmp_path: Path, amqp_url: str) -> None:
    import celery

    write_app(tmp_path, "specapp_taskq", "taskq", amqp_url, "rpc://")
    client = celery.Celery("specapp", broker=amqp_url, backend="rpc://")
    try:
        tasks = client_tasks(client)
        with worker_process(taskq_worker("specapp_taskq"), tmp_path, "taskq-worker") as worker:
            check_round_trips(tasks, worker)
    finally:
        client.close()


@pytest.mark.amqp
def test_taskq_client_celery_worker_rabbitmq_rpc(tmp_path: Path, amqp_url: str) -> None:
    import taskq

    write_app(tmp_path, "specapp_celery", "celery", amqp_url, "rpc://")
    client = taskq.Celery("specapp", broker=amqp_url, backend="rpc://")
    try:
        tasks = client_tasks(client)
        with worker_process(celery_worker("specapp_celery"), tmp_path, "celery-worker") as worker:
            check_round_trips(tasks, worker)
    finally:
        client.close()
