"""The task matrix of issue 8: every send option and result state across Celery 5.7 and taskq.

Cells: direction (a Celery client sending to a ``taskq worker``; a taskq client sending to a
``celery worker``) x transport (Redis broker + Redis results; RabbitMQ + ``rpc://``; RabbitMQ
+ Redis results). Per transport ONE ``celery worker`` and ONE ``taskq worker`` (threads pool,
4 slots) run for the whole module, each on its own two queues, so both directions, and a retry
that hops from one worker to the other, share two cold starts. The clients live in the test
process (Celery's and taskq's apps coexist there; the vectors tests do the same).

What a task saw in the worker (node name, pid, retries, routing key, priority, wall-clock
start) is appended to a Redis list by the task itself, so "ran on that worker", "ran after
its ETA", "never ran" and "ran exactly twice" are checked from the worker's side, not only
from what the result backend says.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import ModuleType
from typing import Any

import pytest
from interop.sides import (
    MatrixError,
    Proc,
    celery_worker_argv,
    taskq_worker_argv,
    unique,
    wait_until,
    workers,
)

pytestmark = pytest.mark.e2e

WAIT = 30.0  # seconds any single result may take
CLOCK_SLACK = 0.05  # seconds: a worker's wall clock vs. ours (same host), and timer rounding
SIDES = ("celery", "taskq")

APP_MODULE = """\
import json
import os
import time

import redis

from {package} import Celery
from interop.sides import MatrixError

app = Celery("matrix", broker={broker!r}, backend={backend!r})
app.conf.broker_connection_retry_on_startup = True
app.conf.task_default_queue = {queue!r}
records = redis.Redis.from_url({records!r})
PREFIX = {prefix!r}


def note(task, tag):
    \"\"\"What the worker saw of this run: appended to a Redis list (one entry per attempt).\"\"\"
    request = task.request
    delivery = request.delivery_info or {{}}
    info = {{
        "tag": tag,
        "id": request.id,
        "hostname": request.hostname,
        "pid": os.getpid(),
        "retries": request.retries,
        "routing_key": delivery.get("routing_key"),
        "priority": delivery.get("priority"),
        "ran_at": time.time(),
    }}
    records.rpush(PREFIX + request.id, json.dumps(info))
    return info


@app.task(name="matrix.record", bind=True)
def record(self, tag):
    return note(self, tag)


@app.task(name="matrix.greet")
def greet(name, greeting="hello", punct="!"):
    return f"{{greeting}} {{name}}{{punct}}"


@app.task(name="x.y")
def custom_name(value):
    return ["x.y", value]


@app.task(name="matrix.fail_builtin")
def fail_builtin(message):
    raise ValueError(message)


@app.task(name="matrix.fail_custom")
def fail_custom(message, code):
    raise MatrixError(message, code)


@app.task(name="matrix.flaky", bind=True, max_retries=3)
def flaky(self, queue=None, countdown=1.5):
    info = note(self, "flaky")
    if self.request.retries == 0:
        raise self.retry(exc=KeyError("first attempt"), countdown=countdown, queue=queue)
    return info


@app.task(name="matrix.progress", bind=True)
def progress(self, gate, wait=30):
    self.update_state(state="PROGRESS", meta={{"done": 1, "total": 2}})
    deadline = time.monotonic() + wait
    while not records.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "finished" if records.exists(gate) else "the gate never opened"
"""


TASK_NAMES = {
    "record": "matrix.record",
    "greet": "matrix.greet",
    "custom": "x.y",
    "fail_builtin": "matrix.fail_builtin",
    "fail_custom": "matrix.fail_custom",
    "flaky": "matrix.flaky",
    "progress": "matrix.progress",
}


def _must_not_run_here(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a client-side declaration ran: the task must run in the worker")


def declare(app: Any) -> dict[str, Any]:
    """Client-side declarations of the workers' tasks, so ``delay``/``apply_async`` are the API used."""
    return {key: app.task(name=name)(_must_not_run_here) for key, name in TASK_NAMES.items()}


@dataclass
class Fleet:
    """One transport: a Celery worker and a taskq worker, each on two queues of its own."""

    transport: str
    broker: str
    backend: str
    prefix: str
    records: Any  # redis.Redis of this run's DB: what the tasks saw
    procs: dict[str, Proc]  # worker side -> its process
    queues: dict[str, tuple[str, str]]  # worker side -> (default queue, second queue)
    clients: dict[str, Any] = field(default_factory=dict)  # client side -> app aimed at the OTHER side
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # client side -> declarations

    def runs(self, task_id: str) -> list[dict[str, Any]]:
        """Every attempt of ``task_id`` that a worker started, in order."""
        return [json.loads(raw) for raw in self.records.lrange(self.prefix + task_id, 0, -1)]


def other(side: str) -> str:
    return "taskq" if side == "celery" else "celery"


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("amqp-rpc", marks=[pytest.mark.amqp, pytest.mark.redis]),
        pytest.param("amqp-redis", marks=[pytest.mark.amqp, pytest.mark.redis]),
    ],
)
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Fleet]:
    """Both workers of one transport, started together once per module and always stopped."""
    import redis

    transport: str = request.param
    broker = redis_url if transport == "redis" else str(request.getfixturevalue("amqp_url"))
    backend = "rpc://" if transport == "amqp-rpc" else redis_url
    path = tmp_path_factory.mktemp(f"matrix-{transport}")
    run = unique("mx")
    queues = {side: (f"{run}-{side}", f"{run}-{side}-b") for side in SIDES}
    prefix = f"{run}:ran:"
    for side in SIDES:
        text = APP_MODULE.format(
            package=side,
            broker=broker,
            backend=backend,
            queue=queues[side][0],
            records=redis_url,
            prefix=prefix,
        )
        (path / f"matrix_{side}.py").write_text(text)
    specs = [
        ("celery-worker", celery_worker_argv("matrix_celery", f"celery-{run}@%h", queues["celery"], "-P", "threads", "-c", "4")),
        ("taskq-worker", taskq_worker_argv("matrix_taskq", f"taskq-{run}@%h", queues["taskq"], "-P", "threads", "-c", "4")),
    ]  # fmt: skip
    records = redis.Redis.from_url(redis_url)
    libs = {side: importlib.import_module(side) for side in SIDES}
    found = Fleet(transport, broker, backend, prefix, records, {}, queues)
    try:
        for side in SIDES:
            client = libs[side].Celery("matrix", broker=broker, backend=backend, set_as_current=False)
            client.conf.task_default_queue = queues[other(side)][0]
            found.clients[side] = client
            found.tasks[side] = declare(client)
        with workers(specs, path) as (celery_proc, taskq_proc):
            found.procs.update(celery=celery_proc, taskq=taskq_proc)
            yield found
    finally:
        for client in found.clients.values():
            client.close()
        for key in records.scan_iter(match=f"{run}:*"):
            records.delete(key)
        records.close()


@dataclass
class Cell:
    """One direction within a transport: a client of one library, the worker of the other."""

    fleet: Fleet
    client_side: str
    worker_side: str
    tasks: dict[str, Any]
    worker: Proc
    queues: tuple[str, str]
    exceptions: ModuleType  # the client library's exceptions (TaskRevokedError, TimeoutError)

    def get(self, result: Any, timeout: float = WAIT, **options: Any) -> Any:
        """``result.get()``, turning a timeout into a failure that shows the worker's log."""
        try:
            return result.get(timeout=timeout, **options)
        except self.exceptions.TimeoutError:
            raise AssertionError(
                f"{result!r}.get() timed out after {timeout} s ({result.state}); "
                f"{self.worker.name} log:\n{self.worker.log()}"
            ) from None

    def failure(self, result: Any) -> BaseException:
        try:
            value = self.get(result)
        except AssertionError:
            raise
        except Exception as exc:
            return exc
        raise AssertionError(f"{result!r} returned {value!r} instead of raising")

    @contextmanager
    def pollable_tasks(self) -> Iterator[dict[str, Any]]:
        """Declarations whose intermediate states (RETRY, PROGRESS) ``result.state`` can poll.

        Celery 5.7's rpc:// client polls a state with ``basic_get`` on its reply queue; once the
        app's result consumer has started (any earlier ``get()``), the replies are delivered to
        that consumer instead and ``state`` stays PENDING until the next ``get()`` -- against a
        Celery worker just the same. So a Celery client on rpc:// polls from an app that has not
        waited yet; every other client polls with the module's app.
        """
        if self.client_side == "taskq" or self.fleet.backend != "rpc://":
            yield self.tasks
            return
        import celery

        app = celery.Celery(
            "matrix", broker=self.fleet.broker, backend=self.fleet.backend, set_as_current=False
        )
        app.conf.task_default_queue = self.queues[0]
        try:
            yield declare(app)
        finally:
            app.close()

    def ran_on_worker(self, info: dict[str, Any]) -> None:
        assert info["hostname"] == self.worker.node, f"ran on {info['hostname']}, not {self.worker.node}"
        assert info["pid"] == self.worker.pid


@pytest.fixture(params=SIDES, ids=["celery-client-taskq-worker", "taskq-client-celery-worker"])
def cell(request: pytest.FixtureRequest, fleet: Fleet) -> Cell:
    client_side: str = request.param
    worker_side = other(client_side)
    return Cell(
        fleet=fleet,
        client_side=client_side,
        worker_side=worker_side,
        tasks=fleet.tasks[client_side],
        worker=fleet.procs[worker_side],
        queues=fleet.queues[worker_side],
        exceptions=importlib.import_module(f"{client_side}.exceptions"),
    )


# --------------------------------------------------------------------------------------------
# Sending
# --------------------------------------------------------------------------------------------


def test_delay_with_args_and_kwargs(cell: Cell) -> None:
    assert cell.get(cell.tasks["greet"].delay("bob", greeting="hi", punct="?")) == "hi bob?"
    info = cell.get(cell.tasks["record"].delay("delay"))
    cell.ran_on_worker(info)
    assert info["routing_key"] == cell.queues[0]
    assert info["retries"] == 0


def test_apply_async_with_args_and_kwargs(cell: Cell) -> None:
    result = cell.tasks["greet"].apply_async(("ann",), {"punct": "."})
    assert cell.get(result) == "hello ann."
    assert result.state == "SUCCESS"


def test_custom_task_name(cell: Cell) -> None:
    """``@app.task(name="x.y")``: the name on the wire is the declared one, not module.function."""
    assert cell.get(cell.tasks["custom"].delay(7)) == ["x.y", 7]


def test_countdown(cell: Cell) -> None:
    sent = time.time()
    info = cell.get(cell.tasks["record"].apply_async(("countdown",), countdown=1))
    cell.ran_on_worker(info)
    assert info["ran_at"] - sent >= 1 - CLOCK_SLACK, "countdown=1 ran before its ETA"


def test_eta(cell: Cell) -> None:
    eta = datetime.now(timezone.utc) + timedelta(seconds=1.2)
    info = cell.get(cell.tasks["record"].apply_async(("eta",), eta=eta))
    cell.ran_on_worker(info)
    assert info["ran_at"] >= eta.timestamp() - CLOCK_SLACK, "ran before its eta"


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"expires": -10.0}, id="already-expired"),
        pytest.param({"countdown": 1, "expires": 0.3}, id="expires-before-its-countdown"),
    ],
)
def test_expired_task_is_revoked_not_run(cell: Cell, options: dict[str, Any]) -> None:
    """An expired message is not run: the worker stores REVOKED, ``get()`` raises TaskRevokedError.

    ``expires`` is given as an absolute datetime, as clients usually do; the first case is in
    the past when sent (on RabbitMQ that is also ``expiration: 0``), the second passes while
    the task waits for its countdown in the worker.
    """
    options = dict(options)
    options["expires"] = datetime.now(timezone.utc) + timedelta(seconds=options["expires"])
    result = cell.tasks["record"].apply_async(("expired",), **options)
    exc = cell.failure(result)
    assert isinstance(exc, cell.exceptions.TaskRevokedError), repr(exc)
    assert result.state == "REVOKED"
    assert cell.fleet.runs(result.id) == []


def test_priority_is_accepted(cell: Cell) -> None:
    """A priority is carried to the worker (``delivery_info["priority"]``) and the task runs."""
    info = cell.get(cell.tasks["record"].apply_async(("priority",), priority=5))
    cell.ran_on_worker(info)
    assert info["priority"] == 5


def test_routing_to_a_second_queue(cell: Cell) -> None:
    """``queue=`` puts the message on the worker's second ``-Q`` queue, and it runs from there."""
    info = cell.get(cell.tasks["record"].apply_async(("routed",), queue=cell.queues[1]))
    cell.ran_on_worker(info)
    assert info["routing_key"] == cell.queues[1]


# --------------------------------------------------------------------------------------------
# Result states
# --------------------------------------------------------------------------------------------


def test_failure_reraises_a_builtin_exception(cell: Cell) -> None:
    result = cell.tasks["fail_builtin"].delay("boom")
    exc = cell.failure(result)
    assert type(exc) is ValueError
    assert exc.args == ("boom",)
    assert result.state == "FAILURE"
    assert "ValueError: boom" in (result.traceback or "")


def test_failure_reraises_a_custom_exception(cell: Cell) -> None:
    """A class importable on both sides comes back as itself, every argument intact."""
    result = cell.tasks["fail_custom"].delay("custom boom", 42)
    exc = cell.failure(result)
    assert type(exc) is MatrixError
    assert exc.args == ("custom boom", 42)
    assert result.state == "FAILURE"


def test_retry_then_success(cell: Cell) -> None:
    """RETRY (holding the retry's ``exc``) is visible between the attempts, then SUCCESS."""
    with cell.pollable_tasks() as tasks:
        result = tasks["flaky"].delay()
        seen = wait_until(
            lambda: result.state if result.state in ("RETRY", "SUCCESS", "FAILURE") else None,
            "the first attempt's outcome",
            [cell.worker],
            timeout=WAIT,
            interval=0.02,
        )
        assert seen == "RETRY", "the 1.5 s retry countdown passed without the RETRY state being seen"
        assert isinstance(result.info, KeyError) and result.info.args == ("first attempt",)
        info = cell.get(result)
    assert info["retries"] == 1
    assert result.state == "SUCCESS"
    attempts = cell.fleet.runs(result.id)
    assert [a["retries"] for a in attempts] == [0, 1]
    for attempt in attempts:
        cell.ran_on_worker(attempt)
    assert attempts[1]["ran_at"] - attempts[0]["ran_at"] >= 1.5 - CLOCK_SLACK


def test_revoke_a_countdown_task_before_it_runs(cell: Cell) -> None:
    """Revoked while waiting for its ETA: REVOKED, and never run even after the ETA passed.

    A later sentinel proves the worker's clock went past the revoked task's ETA.
    """
    result = cell.tasks["record"].apply_async(("revoked",), countdown=1)
    result.revoke()
    sentinel = cell.tasks["record"].apply_async(("sentinel",), countdown=1.5)
    cell.ran_on_worker(cell.get(sentinel))
    exc = cell.failure(result)
    assert isinstance(exc, cell.exceptions.TaskRevokedError), repr(exc)
    assert result.state == "REVOKED"
    assert cell.fleet.runs(result.id) == []


def test_custom_progress_state_read_while_running(cell: Cell) -> None:
    """``update_state(state="PROGRESS", meta=...)`` is readable by the other side mid-run."""
    gate = f"{cell.fleet.prefix}gate-{time.monotonic_ns()}"
    with cell.pollable_tasks() as tasks:
        result = tasks["progress"].delay(gate)
        try:
            wait_until(lambda: result.state == "PROGRESS", "the PROGRESS state", [cell.worker], timeout=WAIT)
            assert result.info == {"done": 1, "total": 2}
            assert not result.ready()
        finally:
            cell.fleet.records.set(gate, 1, ex=60)
        assert cell.get(result) == "finished"
        assert result.state == "SUCCESS"


def test_progress_reported_to_get_on_message(cell: Cell, request: pytest.FixtureRequest) -> None:
    """``get(on_message=...)``, Celery's documented way to follow progress (and the way an rpc://
    client that already waited must use): each state arrives as it is stored, so the callback can
    open the gate the running task waits on.
    """
    gate = f"{cell.fleet.prefix}gate-{time.monotonic_ns()}"
    seen: list[tuple[str, Any]] = []

    def on_message(meta: dict[str, Any]) -> None:
        seen.append((meta["status"], meta["result"]))
        if meta["status"] == "PROGRESS":
            cell.fleet.records.set(gate, 1, ex=60)

    result = cell.tasks["progress"].delay(gate, wait=3)
    assert cell.get(result, on_message=on_message) == "finished"
    assert seen[0] == ("PROGRESS", {"done": 1, "total": 2})
    assert seen[-1] == ("SUCCESS", "finished")


# --------------------------------------------------------------------------------------------
# A retry that one implementation's worker sends to the other's
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first", SIDES, ids=["celery-worker-retries-to-taskq", "taskq-worker-retries-to-celery"]
)
def test_retry_sent_by_one_worker_runs_on_the_other(fleet: Fleet, first: str) -> None:
    """The first attempt runs on ``first``'s queue and retries with ``queue=<the other's queue>``.

    The client is ``first``'s library, so in the required case the message is Celery's from end
    to end until a taskq worker consumes the retry Celery's worker sent.
    """
    second = other(first)
    flaky = fleet.tasks[first]["flaky"]
    result = flaky.apply_async(
        kwargs={"queue": fleet.queues[second][0], "countdown": 0}, queue=fleet.queues[first][0]
    )
    procs = list(fleet.procs.values())
    lib = importlib.import_module(f"{first}.exceptions")
    try:
        info = result.get(timeout=WAIT)
    except lib.TimeoutError:
        logs = "\n".join(f"--- {p.name} ---\n{p.log()}" for p in procs)
        raise AssertionError(f"no result after {WAIT} s ({result.state})\n{logs}") from None
    assert result.state == "SUCCESS"
    attempts = fleet.runs(result.id)
    assert [(a["hostname"], a["pid"], a["retries"], a["routing_key"]) for a in attempts] == [
        (fleet.procs[first].node, fleet.procs[first].pid, 0, fleet.queues[first][0]),
        (fleet.procs[second].node, fleet.procs[second].pid, 1, fleet.queues[second][0]),
    ]
    assert info == attempts[1]
