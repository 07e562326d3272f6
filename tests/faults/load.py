"""Tasks under load and the ledger that proves which of them ran, and how often.

Each task appends ``"<task id> <redelivered 0|1>"`` to a Redis list on the *shared* test Redis
(never the broker being broken), so the count survives any broker fault. A publisher thread
in the test process sends tasks and keeps the ids whose publish returned: for Redis that is a
LPUSH answered by a server that fsyncs every write; for RabbitMQ the client publishes with
confirms, so "returned" means the broker took responsibility for the message.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from e2e.helpers import WorkerProcess, wait_for, write_module

from taskq import Celery

CONCURRENCY = 2
MULTIPLIER = 4  # pinned (not the default) so a full window of unacked messages is at stake
PREFETCH = CONCURRENCY * MULTIPLIER  # the most unacked messages a worker holds

POOLS = ("threads", "prefork")  # each under-load restart runs with both


def worker_args(pool: str = "threads") -> tuple[str, ...]:
    """``taskq`` arguments for the fault app's worker; the pool always named, never defaulted."""
    return ("-A", "faultapp", "worker", "-P", pool, "-c", str(CONCURRENCY), "-l", "INFO")


LOST_LINE = "Connection to broker lost"
CONNECTED_LINE = "Connected to "
# Generous enough to ride out a broker restart (~30 s of retrying), short between attempts.
PUBLISH_RETRY = {"max_retries": 120, "interval_start": 0, "interval_step": 0.25, "interval_max": 0.25}

APP = """
import time

import redis

from taskq import Celery

app = Celery("faultapp", broker={broker!r}, task_default_queue={queue!r}, **{settings!r})
ledger = redis.Redis.from_url({ledger!r})


def record(request):
    time.sleep({work!r})  # the work; its effect is committed at the end, as real tasks do
    redelivered = int(bool((request.delivery_info or {{}}).get("redelivered")))
    ledger.rpush({key!r}, f"{{request.id}} {{redelivered}}")


@app.task(bind=True, name="faultapp.early", acks_late=False, ignore_result=True)
def early(self):
    record(self.request)


@app.task(bind=True, name="faultapp.late", acks_late=True, ignore_result=True)
def late(self):
    record(self.request)
"""


@dataclass
class Scenario:
    """One worker app on ``broker`` and a client for it, both on a queue of their own."""

    directory: Path
    broker: str
    ledger_url: str
    worker_settings: dict[str, Any] = field(
        default_factory=lambda: {"worker_prefetch_multiplier": MULTIPLIER}
    )
    client_settings: dict[str, Any] = field(default_factory=dict)
    work: float = 0.03
    worker_broker: str | None = None  # where the worker connects, if not ``broker`` (a proxy)
    queue: str = field(default_factory=lambda: f"faults-{uuid.uuid4().hex[:8]}")

    @property
    def key(self) -> str:
        return f"{self.queue}-runs"

    def write_app(self) -> None:
        source = APP.format(
            broker=self.worker_broker or self.broker, queue=self.queue, settings=self.worker_settings,
            ledger=self.ledger_url, key=self.key, work=self.work,
        )  # fmt: skip
        write_module(self.directory, "faultapp", source)

    def client(self, broker: str | None = None) -> Celery:
        return Celery(
            "faultclient", broker=broker or self.broker, task_default_queue=self.queue,
            set_as_current=False, task_publish_retry_policy=PUBLISH_RETRY, **self.client_settings,
        )  # fmt: skip


class Publisher(threading.Thread):
    """Sends ``count`` tasks, alternately early- and late-acked, ``pace`` seconds apart."""

    def __init__(self, client: Celery, count: int, pace: float, prefix: str = "") -> None:
        super().__init__(daemon=True)
        self.client, self.count, self.pace, self.prefix = client, count, pace, prefix
        self.confirmed: dict[str, str] = {}  # task id -> "early" | "late"
        self.failed: list[tuple[str, str]] = []
        # Ids whose publish met a connection error and was sent again: if the first copy had
        # reached the broker (its confirm lost with the connection), the task is queued twice.
        self.retried: set[str] = set()
        self.longest_publish = 0.0

    def run(self) -> None:
        for i in range(self.count):
            kind = "early" if i % 2 == 0 else "late"
            task_id = f"{self.prefix}{kind}-{i:04d}-{uuid.uuid4().hex[:6]}"
            started = time.monotonic()
            policy = {**PUBLISH_RETRY, "errback": lambda exc, interval, i=task_id: self.retried.add(i)}
            try:
                self.client.send_task(f"faultapp.{kind}", task_id=task_id, retry_policy=policy)
            except Exception as exc:  # counted, never confirmed: such a task may or may not run
                self.failed.append((task_id, repr(exc)))
            else:
                self.confirmed[task_id] = kind
            self.longest_publish = max(self.longest_publish, time.monotonic() - started)
            time.sleep(self.pace)

    def finish(self, timeout: float = 60) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"publisher still running after {timeout} s"


class Ledger:
    """Reads the runs the tasks recorded."""

    def __init__(self, client: Any, key: str) -> None:
        self.client, self.key = client, key

    def entries(self) -> list[tuple[str, bool]]:
        rows = [raw.decode().split() for raw in self.client.lrange(self.key, 0, -1)]
        return [(task_id, flag == "1") for task_id, flag in rows]

    def runs(self) -> Counter[str]:
        return Counter(task_id for task_id, _ in self.entries())

    def size(self) -> int:
        return int(self.client.llen(self.key))

    def wait_all_ran(self, ids: set[str], timeout: float) -> None:
        """Wait (bounded) until each id ran; return quietly if some never do: the caller judges."""
        try:
            wait_for(lambda: ids <= set(self.runs()), timeout, "every confirmed task to run", 0.2)
        except AssertionError:
            pass

    def settle(self, quiet: float = 1.0, timeout: float = 20) -> None:
        """Wait until no run was recorded for ``quiet`` seconds: late redeliveries show up."""
        last, since = -1, time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            size = self.size()
            if size != last:
                last, since = size, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.1)


@dataclass
class Verdict:
    """What a fault did to the tasks, by ack mode."""

    confirmed: dict[str, str]
    runs: Counter[str]
    redelivered: set[str]
    held_at_loss: set[str]  # ids the worker had received before it logged the loss
    retried: set[str]  # ids whose publish was sent again after a connection error

    def lost(self, kind: str) -> set[str]:
        return {i for i, k in self.confirmed.items() if k == kind and self.runs[i] == 0}

    def duplicated(self, kind: str) -> set[str]:
        return {i for i, k in self.confirmed.items() if k == kind and self.runs[i] > 1}

    def summary(self) -> str:
        return (
            f"confirmed={len(self.confirmed)} lost early/late={len(self.lost('early'))}/"
            f"{len(self.lost('late'))} duplicated early/late={len(self.duplicated('early'))}/"
            f"{len(self.duplicated('late'))} held by the worker at the loss={len(self.held_at_loss)} "
            f"publishes retried={len(self.retried)}"
        )

    def suspects(self) -> set[str]:
        return self.lost("early") | self.lost("late") | self.duplicated("early") | self.duplicated("late")

    def check(self) -> None:
        """At-most-once for early ack, at-least-once for late ack, nothing else lost or doubled.

        The worker holds at most ``PREFETCH`` unacked messages. A late-acked one is acked only
        after it ran, so a loss redelivers it: it may run twice, never zero times. An early-acked
        one is acked before it runs; if that ack died with the connection the broker redelivers
        it (a second run) and if the broker had already dropped it the run is the only one. So
        a task can be lost or doubled only if the worker held it when the connection went, and
        only PREFETCH of those at most. Publishing is at-least-once too: a publish whose confirm
        died with the connection is sent again, so a task whose publish was retried may be
        queued, and run, twice. Anything else (a task the worker never held that did not run,
        a double run that neither a redelivery nor a publish retry explains) is a bug.
        """
        assert not self.lost("late"), f"late-acked tasks lost: {sorted(self.lost('late'))}"
        early_lost = self.lost("early")
        assert early_lost <= self.held_at_loss, f"lost, never held: {sorted(early_lost - self.held_at_loss)}"
        assert len(early_lost) <= PREFETCH, f"more than a prefetch window lost: {sorted(early_lost)}"
        doubled = self.duplicated("early") | self.duplicated("late")
        assert all(self.runs[i] == 2 for i in doubled), {i: self.runs[i] for i in doubled}
        by_worker = doubled - self.retried
        assert by_worker <= self.held_at_loss, f"doubled, never held: {sorted(by_worker - self.held_at_loss)}"
        assert by_worker <= self.redelivered, (
            f"doubled, no redelivery: {sorted(by_worker - self.redelivered)}"
        )
        assert len(by_worker) <= PREFETCH, f"more than a prefetch window doubled: {sorted(by_worker)}"
        strangers = set(self.runs) - set(self.confirmed)
        assert not strangers, f"runs of tasks nobody confirmed: {sorted(strangers)}"


def explain(result: Verdict, output: str) -> str:
    """The worker's log lines about the suspect tasks and about the connection, for a failure."""
    marks = (*result.suspects(), LOST_LINE, CONNECTED_LINE, "Trying again", "WARNING", "ERROR", "Restoring")
    lines = [line for line in output.splitlines() if any(m in line for m in marks)]
    return "\n".join(lines[:200])


def verdict(publisher: Publisher, ledger: Ledger, worker: WorkerProcess) -> Verdict:
    entries = ledger.entries()
    return Verdict(
        confirmed=dict(publisher.confirmed),
        runs=Counter(task_id for task_id, _ in entries),
        redelivered={task_id for task_id, flag in entries if flag},
        held_at_loss=received_before_loss(worker.output),
        retried=set(publisher.retried),
    )


RECEIVED = re.compile(r"Task faultapp\.\w+\[([^\]]+)\] received")
TIMESTAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): ", re.MULTILINE)


def received_before_loss(output: str) -> set[str]:
    cut = output.find(LOST_LINE)
    return set(RECEIVED.findall(output if cut < 0 else output[:cut]))


def logged_at(output: str, text: str, after: float = 0.0) -> float | None:
    """Wall-clock time of the first log line containing ``text`` logged at or after ``after``."""
    for line in output.splitlines():
        if text in line:
            found = TIMESTAMP.match(line)
            if found:
                stamp = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if stamp >= after - 0.002:  # the log's clock has millisecond resolution
                    return stamp
    return None


def report(name: str, **figures: Any) -> None:
    """One greppable line of figures (``pytest -s`` shows it)."""
    shown = " ".join(f"{k}={v:.2f}s" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"\n[faults] {name}: {shown}")
