"""Canvas matrix: Celery 5.7 and taskq clients and workers on one broker, in both directions.

Why: a mixed fleet only works if every workflow primitive survives the trip through the other
implementation -- the message embeds (``chain``, ``chord``, ``callbacks``, ``errbacks``), the
follow-up messages a worker sends, and the Redis chord counting keys that workers of both kinds
update for one chord.

Fleets (one per broker kind, module-scoped: a ``taskq worker`` on queue ``qt`` and a
``celery worker`` on queue ``qc`` run side by side for all tests of that fleet):

| fleet      | broker   | result backend |
|------------|----------|----------------|
| ``redis``  | Redis    | Redis          |
| ``amqp``   | RabbitMQ | Redis          |
| ``rpc``    | RabbitMQ | ``rpc://``     |

Direction cells (``celery->taskq``: a Celery client sends, only the taskq worker runs;
``taskq->celery``: the reverse), one test each: ``chain3``, ``group5``, ``chord5``,
``chord_fail`` (a failing header member: the body stores ``ChordError``), ``link``,
``link_error`` (a new-style errback run inline and an old-style one sent as a message).

On ``rpc://`` both Celery and taskq refuse chords at the client (``NotImplementedError``), a
``link`` callback runs but its result goes to the worker's own reply address (the client cannot
read it; it is checked through its side effect), chains and groups work.

Mixed cells (both workers take part in ONE workflow, client of either kind): a chain whose
steps alternate between ``qc`` and ``qt``, a group split across both, and a chord whose header
members run on both workers: midway the Redis keys are exactly Celery 5.7's (``.s``, ``.j``
scored by group index, ``.d`` dedupe members, no ``.c``), the last member completes it from the
other kind of worker, and afterwards only ``.c = "done"`` (TTL <= 300 s) is left.

Celery 5.3-5.6 chord counting (no ``.d``/``.c``) is covered in ``test_versions.py``. The
single-direction canvas tests of ``tests/canvas/test_canvas_interop.py`` stay as they are.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WAIT = 30.0  # seconds any one result may take
START_TIMEOUT = 30.0  # seconds a worker may take to log "ready"
STOP_TIMEOUT = 10.0  # seconds a worker may take to exit after SIGTERM before it is killed
READY = re.compile(r"(\S+@\S+) ready\.")

WORKER_MODULE = '''\
"""Worker app of the interop matrix; the same text serves both sides, only the import differs."""
import json

import redis

from {kind} import Celery

KIND = {kind!r}
app = Celery("mx", broker={broker!r}, backend={backend!r})
app.conf.broker_connection_retry_on_startup = True
app.conf.task_default_queue = {queue!r}
records = redis.Redis.from_url({records!r})


@app.task(name="mx.part")
def part(n):
    return [n, KIND]


@app.task(name="mx.gate")
def gate(n, key):
    """A header member that ends only when the test pushes ``key``: the chord stays midway."""
    records.blpop(key, timeout=30)
    return [n, KIND]


@app.task(name="mx.collect")
def collect(parts):
    return [parts, KIND]


@app.task(name="mx.tag", bind=True)
def tag(self, acc, label):
    return [*acc, [label, KIND, self.request.delivery_info.get("routing_key")]]


@app.task(name="mx.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="mx.record")
def record(value, key):
    records.rpush(key, json.dumps([value, KIND]))
    return [value, KIND]


@app.task(name="mx.on_error")
def on_error(request, exc, traceback, key):
    """New style (more than one positional argument): called inline by the failing worker."""
    records.rpush(key, json.dumps([request.id, type(exc).__name__, str(exc), KIND]))


@app.task(name="mx.old_errback")
def old_errback(task_id, *, key):
    """Old style (one positional argument): sent as a message with the failed task's id."""
    records.rpush(key, json.dumps([task_id, KIND]))


# Celery's own vector tasks, for the version tests (test_versions.py)
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
def specfail(message):
    raise ValueError(message)


@app.task(name="specapp.xsum")
def xsum(numbers):
    return sum(numbers)


@app.task(name="specapp.beat_probe", bind=True)
def beat_probe(self, *args):
    """What a beat-sent message looks like to the task (Celery 5.7 adds a header)."""
    return [list(args), getattr(self.request, "celery_beat_task", None), KIND]
'''
TASK_NAMES = ("part", "gate", "collect", "tag", "fail", "record", "on_error", "old_errback")


# --------------------------------------------------------------------------------------------
# Processes and fleets (also used by test_versions.py and test_matrix_beat.py)
# --------------------------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def clean_env(cwd: Path) -> dict[str, str]:
    """No inherited CELERY_/TASKQ_ settings; the app directory and the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "TASKQ_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(cwd), str(ROOT)])
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Proc:
    """A subprocess (its own session, so a kill reaches its children) logging to a file."""

    def __init__(self, argv: list[str], cwd: Path, name: str) -> None:
        self.argv, self.name = argv, name
        self.log_path = cwd / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=clean_env(cwd),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self, tail: int = 8000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return "<no log>"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")

    def wait_for_log(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.log(tail=10**6))
            if found:
                return found
            self.check_alive()
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.name} did not log {pattern!r} within {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, grace: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL to the whole session after ``grace`` seconds."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass


def taskq_argv(module: str, node: str, *options: str) -> list[str]:
    return [str(BIN / "taskq"), "-A", module, "worker", "-P", "solo", "-l", "info", "-n", node, *options]


def celery_argv(module: str, node: str, *options: str) -> list[str]:
    return [
        str(BIN / "celery"), "-A", module, "worker", "-P", "solo", "-l", "info", "-n", node,
        "--without-mingle", "--without-gossip", "--without-heartbeat", *options,
    ]  # fmt: skip


@dataclass
class Fleet:
    """A taskq worker on ``qt`` and a Celery worker on ``qc``, one broker, one result backend."""

    kind: str
    broker: str
    backend: str
    records_url: str
    cwd: Path
    qt: str = field(default_factory=lambda: unique("mx-taskq"))
    qc: str = field(default_factory=lambda: unique("mx-celery"))
    procs: dict[str, Proc] = field(default_factory=dict)
    records: Any = None

    def write_module(self, kind: str) -> str:
        module = f"mx_{kind}_{uuid.uuid4().hex[:6]}"
        queue = self.qt if kind == "taskq" else self.qc
        source = WORKER_MODULE.format(
            kind=kind, broker=self.broker, backend=self.backend, queue=queue, records=self.records_url
        )
        (self.cwd / f"{module}.py").write_text(source)
        return module

    def start(self, *kinds: str) -> None:
        """Start the workers together (one cold start), then wait until each is ready."""
        for kind in kinds:
            module = self.write_module(kind)
            node = f"{unique(kind)}@%h"
            argv = taskq_argv(module, node) if kind == "taskq" else celery_argv(module, node)
            self.procs[kind] = Proc(argv, self.cwd, f"{kind}-worker")
        for proc in self.procs.values():
            proc.wait_for_log(READY.pattern)

    def stop(self) -> None:
        for kind, proc in self.procs.items():
            # Celery 5.7's worker takes ~10 s to shut down on RabbitMQ; every result is in by now.
            proc.stop(grace=2.0 if kind == "celery" and self.broker.startswith("amqp") else STOP_TIMEOUT)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ({' '.join(p.argv)}) ---\n{p.log()}" for p in self.procs.values())

    def check_alive(self) -> None:
        for proc in self.procs.values():
            proc.check_alive()

    def queue_of(self, kind: str) -> str:
        return self.qt if kind == "taskq" else self.qc


@dataclass
class Side:
    """A client app of one library whose default queue is one worker's queue."""

    lib: Any
    app: Any
    tasks: dict[str, Any]


def never(*args: Any, **kwargs: Any) -> None:
    """Client-side stand-in for a task body: it must only ever run in a worker."""
    raise AssertionError("runs in a worker")


def make_side(lib_name: str, fleet: Fleet, default_queue: str) -> Side:
    import celery

    import taskq

    lib = celery if lib_name == "celery" else taskq
    app = lib.Celery("mx", broker=fleet.broker, backend=fleet.backend, set_as_current=False)
    app.conf.task_default_queue = default_queue
    tasks = {name: app.task(name=f"mx.{name}")(never) for name in TASK_NAMES}
    return Side(lib, app, tasks)


def wait_until(fetch: Callable[[], Any], what: str, fleet: Fleet, timeout: float = WAIT) -> Any:
    """``fetch()`` until truthy; on timeout fail with every worker's log."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        value = fetch()
        if value:
            return value
        fleet.check_alive()
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{fleet.logs()}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def get(result: Any, fleet: Fleet, propagate: bool = True) -> Any:
    """``result.get()`` of either library, bounded, with the workers' logs on a timeout."""
    try:
        return result.get(timeout=WAIT, propagate=propagate)
    except Exception as exc:
        if type(exc).__name__ == "TimeoutError":
            raise AssertionError(f"{result!r}.get() timed out\n{fleet.logs()}") from exc
        raise


def fleet_urls(request: pytest.FixtureRequest, kind: str) -> tuple[str, str, str]:
    """(broker, backend, records) URLs of a fleet kind; records always live in Redis."""
    redis_url = request.getfixturevalue("redis_url")
    if kind == "redis":
        return redis_url, redis_url, redis_url
    amqp_url = request.getfixturevalue("amqp_url")
    return amqp_url, (redis_url if kind == "amqp" else "rpc://"), redis_url


@pytest.fixture(scope="module", params=["redis", pytest.param("amqp", marks=pytest.mark.amqp), pytest.param("rpc", marks=pytest.mark.amqp)])  # fmt: skip
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Both workers of one fleet kind, started once for all its tests (cold starts are the cost)."""
    import redis

    broker, backend, records = fleet_urls(request, request.param)
    the_fleet = Fleet(
        request.param, broker, backend, records, tmp_path_factory.mktemp(f"fleet-{request.param}")
    )
    the_fleet.records = redis.Redis.from_url(records)
    with ExitStack() as stack:
        stack.callback(the_fleet.records.close)
        stack.callback(the_fleet.stop)
        try:
            the_fleet.start("taskq", "celery")
            yield the_fleet
        except BaseException:
            print(the_fleet.logs())
            raise


def stored(fleet: Fleet) -> bool:
    return fleet.backend != "rpc://"


# --------------------------------------------------------------------------------------------
# Direction cells: one client kind, the other kind's worker runs everything
# --------------------------------------------------------------------------------------------

DIRECTIONS = {"celery->taskq": ("celery", "taskq"), "taskq->celery": ("taskq", "celery")}


def check_chain3(side: Side, fleet: Fleet, ran_by: str) -> None:
    t = side.tasks
    queue = fleet.queue_of(ran_by)
    result = (t["tag"].si([], "a") | t["tag"].s("b") | t["tag"].s("c")).apply_async()
    assert get(result, fleet) == [["a", ran_by, queue], ["b", ran_by, queue], ["c", ran_by, queue]]
    assert get(result.parent, fleet) == [["a", ran_by, queue], ["b", ran_by, queue]]


def check_group5(side: Side, fleet: Fleet, ran_by: str) -> None:
    grouped = side.lib.group(side.tasks["part"].s(i) for i in range(5)).apply_async()
    assert get(grouped, fleet) == [[i, ran_by] for i in range(5)]
    assert len(grouped.results) == 5


def check_chord5(side: Side, fleet: Fleet, ran_by: str) -> None:
    t = side.tasks
    the_chord = side.lib.chord([t["part"].s(i) for i in range(5)], t["collect"].s())
    if not stored(fleet):
        with pytest.raises(NotImplementedError):
            the_chord.apply_async()
        return
    assert get(the_chord.apply_async(), fleet) == [[[i, ran_by] for i in range(5)], ran_by]


def check_chord_fail(side: Side, fleet: Fleet, ran_by: str) -> None:
    t = side.tasks
    header = [t["part"].s(0), t["fail"].s("boom"), t["part"].s(2), t["part"].s(3), t["part"].s(4)]
    the_chord = side.lib.chord(header, t["collect"].s())
    if not stored(fleet):
        with pytest.raises(NotImplementedError):
            the_chord.apply_async()
        return
    result = the_chord.apply_async()
    body = side.app.AsyncResult(result.id)
    wait_until(lambda: body.state == "FAILURE", "the chord body's FAILURE", fleet)
    exc = body.result
    assert result.parent is not None, "a chord's result has the header group as its parent"
    failed_id = result.parent.results[1].id
    assert type(exc).__name__ == "ChordError"
    assert str(exc) == f"Dependency {failed_id} raised ValueError('boom')"
    raw = json.loads(fleet.records.get(f"celery-task-meta-{result.id}"))
    assert raw["status"] == "FAILURE" and raw["result"]["exc_type"] == "ChordError"


def check_link(side: Side, fleet: Fleet, ran_by: str) -> None:
    t = side.tasks
    key, callback_id = unique("link"), str(uuid.uuid4())
    linked = t["part"].apply_async((7,), link=t["record"].s(key=key).set(task_id=callback_id))
    assert get(linked, fleet) == [7, ran_by]
    if stored(fleet):
        assert get(side.app.AsyncResult(callback_id), fleet) == [[7, ran_by], ran_by]
    # rpc://: the callback's result goes to the worker's reply address; its effect shows it ran
    recorded = fleet.records.blpop(key, timeout=WAIT)
    assert recorded is not None, f"the link callback did not run\n{fleet.logs()}"
    assert json.loads(recorded[1]) == [[7, ran_by], ran_by]


def check_link_error(side: Side, fleet: Fleet, ran_by: str) -> None:
    t = side.tasks
    new_key, old_key = unique("errback-new"), unique("errback-old")
    failed = t["fail"].apply_async(
        ("boom",), link_error=[t["on_error"].s(key=new_key), t["old_errback"].s(key=old_key)]
    )
    with pytest.raises(ValueError, match="boom"):
        get(failed, fleet)
    for key, want in ((new_key, [failed.id, "ValueError", "boom", ran_by]), (old_key, [failed.id, ran_by])):
        recorded = fleet.records.blpop(key, timeout=WAIT)
        assert recorded is not None, f"errback {key} did not run\n{fleet.logs()}"
        assert json.loads(recorded[1]) == want


WORKFLOWS: dict[str, Callable[[Side, Fleet, str], None]] = {
    "chain3": check_chain3,
    "group5": check_group5,
    "chord5": check_chord5,
    "chord_fail": check_chord_fail,
    "link": check_link,
    "link_error": check_link_error,
}


@pytest.mark.parametrize("workflow", sorted(WORKFLOWS))
@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
def test_direction(fleet: Fleet, direction: str, workflow: str) -> None:
    """One workflow sent by one library's client, run entirely by the other library's worker."""
    client, worker = DIRECTIONS[direction]
    side = make_side(client, fleet, fleet.queue_of(worker))
    try:
        WORKFLOWS[workflow](side, fleet, worker)
    finally:
        side.app.close()


# --------------------------------------------------------------------------------------------
# Mixed cells: both workers take part in one workflow
# --------------------------------------------------------------------------------------------

CLIENTS = ["celery", "taskq"]


@pytest.mark.parametrize("client", CLIENTS)
def test_mixed_chain_alternates_workers(fleet: Fleet, client: str) -> None:
    """Each step names its queue; results flow Celery -> taskq -> Celery -> taskq and back."""
    side = make_side(client, fleet, fleet.qc)
    tag = side.tasks["tag"]
    kinds = ["celery", "taskq", "celery", "taskq"]
    steps = [tag.si([], "s0").set(queue=fleet.queue_of(kinds[0]))]
    steps += [tag.s(f"s{n}").set(queue=fleet.queue_of(kind)) for n, kind in enumerate(kinds) if n]
    try:
        result = side.lib.chain(*steps).apply_async()
        want = [[f"s{n}", kind, fleet.queue_of(kind)] for n, kind in enumerate(kinds)]
        assert get(result, fleet) == want
    finally:
        side.app.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_mixed_group_across_workers(fleet: Fleet, client: str) -> None:
    """A group of 5 spread over both workers: results in group order, each from its worker."""
    side = make_side(client, fleet, fleet.qc)
    kinds = ["taskq", "celery", "taskq", "celery", "taskq"]
    try:
        grouped = side.lib.group(
            side.tasks["part"].s(n).set(queue=fleet.queue_of(kind)) for n, kind in enumerate(kinds)
        ).apply_async()
        assert get(grouped, fleet) == [[n, kind] for n, kind in enumerate(kinds)]
    finally:
        side.app.close()


def chord_keys(client: Any, gid: str) -> dict[str, Any]:
    """The chord's Redis keys as a reader sees them: type, TTL, content."""
    out: dict[str, Any] = {}
    for suffix in (".s", ".t", ".j", ".d", ".c"):
        key = f"celery-taskset-meta-{gid}{suffix}"
        kind = client.type(key).decode()
        if kind == "none":
            continue
        item: dict[str, Any] = {"type": kind, "ttl": client.ttl(key)}
        if kind == "zset":
            item["members"] = [(m.decode(), s) for m, s in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "set":
            item["members"] = sorted(m.decode() for m in client.smembers(key))
        elif kind == "string":
            item["value"] = client.get(key).decode()
        out[suffix] = item
    return out


# rpc:// cannot run chords: both libraries refuse them (test_direction[rpc-*-chord5/chord_fail])
CHORD_FLEETS = pytest.mark.parametrize(
    "fleet", ["redis", pytest.param("amqp", marks=pytest.mark.amqp)], indirect=True
)


@CHORD_FLEETS
@pytest.mark.parametrize(
    ("client", "completer"),
    [("celery", "taskq"), ("taskq", "celery")],
    ids=["celery-client-taskq-completes", "taskq-client-celery-completes"],
)
def test_mixed_chord_counts_on_celery_57_keys(fleet: Fleet, client: str, completer: str) -> None:
    """Header members on both workers count into one chord with Celery 5.7's keys and script.

    The last member (``gate``) waits on the completer's worker until the keys were checked, so
    the midway state is stable; the other worker runs the body.
    """
    other = "celery" if completer == "taskq" else "taskq"
    side = make_side(client, fleet, fleet.qc)
    t, records = side.tasks, fleet.records
    gate_key = unique("gate")
    kinds = ["taskq", "celery", "taskq", "celery"]
    header = [t["part"].s(n).set(queue=fleet.queue_of(kind)) for n, kind in enumerate(kinds)]
    header.append(t["gate"].s(4, gate_key).set(queue=fleet.queue_of(completer)))
    try:
        result = side.lib.chord(header, t["collect"].s().set(queue=fleet.queue_of(other))).apply_async()
        assert result.parent is not None, "a chord's result has the header group as its parent"
        header_results, gid = result.parent.results, result.parent.id
        assert gid and len(header_results) == 5
        zkey = f"celery-taskset-meta-{gid}.j"
        wait_until(lambda: records.zcard(zkey) == 4, "four counted header members", fleet)

        midway = chord_keys(records, gid)
        assert sorted(midway) == [".d", ".j", ".s"], midway
        assert midway[".s"]["value"] == "5"
        ids = [r.id for r in header_results]
        assert midway[".d"]["members"] == sorted(f"{ids[n]}:{n}" for n in range(4))
        parts = []
        for member, score in midway[".j"]["members"]:
            decoded = json.loads(member)
            assert member == json.dumps(decoded), "parts are encoded as kombu's JSON, whoever wrote them"
            parts.append((score, decoded))
        assert parts == [(float(n), [1, ids[n], "SUCCESS", [n, kinds[n]]]) for n in range(4)]
        for item in midway.values():
            assert 86400 - 60 < item["ttl"] <= 86400

        records.rpush(gate_key, "go")
        want = [[[n, kind] for n, kind in enumerate([*kinds, completer])], other]
        assert get(result, fleet) == want
        after = wait_until(
            lambda: (k := chord_keys(records, gid)) and list(k) == [".c"] and k, "cleanup", fleet
        )
        assert after[".c"]["value"] == "done" and 0 < after[".c"]["ttl"] <= 300
    finally:
        records.rpush(gate_key, "go")  # never leave a worker blocked
        side.app.close()


@CHORD_FLEETS
@pytest.mark.parametrize(
    ("client", "failer"), [("celery", "celery"), ("taskq", "taskq")], ids=["celery-client", "taskq-client"]
)
def test_mixed_chord_with_a_failing_member(fleet: Fleet, client: str, failer: str) -> None:
    """A member failing on one worker fails a body run by the other: ChordError, both ways."""
    other = "celery" if failer == "taskq" else "taskq"
    side = make_side(client, fleet, fleet.qc)
    t = side.tasks
    header = [
        t["part"].s(0).set(queue=fleet.queue_of(other)),
        t["fail"].s("boom").set(queue=fleet.queue_of(failer)),
        t["part"].s(2).set(queue=fleet.queue_of(other)),
    ]
    try:
        result = side.lib.chord(header, t["collect"].s().set(queue=fleet.queue_of(other))).apply_async()
        body = side.app.AsyncResult(result.id)
        wait_until(lambda: body.state == "FAILURE", "the chord body's FAILURE", fleet)
        failed_id = result.parent.results[1].id
        assert type(body.result).__name__ == "ChordError"
        assert str(body.result) == f"Dependency {failed_id} raised ValueError('boom')"
    finally:
        side.app.close()
