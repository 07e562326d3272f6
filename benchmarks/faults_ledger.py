"""The fault suite's app, its execution ledger, and the lost / duplicated / unexpected checker.

Every execution appends two records to a Redis list on a server no fault touches: ``S`` when it
starts and ``E`` when its effect is committed (task id, pid, time), so an execution cut short by
a kill has a start and no end. The harness keeps every id whose publish returned (with
publisher confirms on RabbitMQ) and the time of every fault it injects. The checker then counts,
per task: no completed execution is a *loss*, two or more is a *duplicate*, and an execution of
an id nobody published is *unexpected*. A duplicate is allowed only if a fault fell between the
first execution's start and each later start (the ack died with the process or connection, in
either mode), or the publish itself was retried; a loss only in an at-most-once mode, for a task
running when a fault hit or held (received, acked, not yet started) by a worker that was killed.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

APP = """
import os
import time

import redis

from taskq import Celery

app = Celery("faultsuite", broker={broker!r}, backend={backend!r}, task_default_queue={queue!r},
             **{settings!r})
ledger = redis.Redis.from_url({ledger!r})


def log(kind, task_id):
    ledger.rpush({key!r}, f"{{kind}} {{task_id}} {{os.getpid()}} {{time.time():.6f}}")


def work(request, seconds):
    log("S", request.id)
    time.sleep(seconds)
    log("E", request.id)


@app.task(bind=True, name="faultsuite.late", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def late(self, seconds=0.05):
    work(self.request, seconds)


@app.task(bind=True, name="faultsuite.early", acks_late=False, ignore_result=True)
def early(self, seconds=0.05):
    work(self.request, seconds)


@app.task(bind=True, name="faultsuite.poison", acks_late=True, reject_on_worker_lost=True)
def poison(self):
    log("S", self.request.id)
    os._exit(1)


@app.task(bind=True, name="faultsuite.tick", ignore_result=True)
def tick(self):
    log("T", self.request.id)
"""


@dataclass
class Record:
    kind: str  # S (start), E (end), T (beat tick)
    task_id: str
    pid: int
    at: float


def read(client: Any, key: str) -> list[Record]:
    out = []
    for raw in client.lrange(key, 0, -1):
        kind, task_id, pid, at = raw.decode().split(" ")
        out.append(Record(kind, task_id, int(pid), float(at)))
    return out


def completed(records: list[Record]) -> dict[str, int]:
    runs: dict[str, int] = defaultdict(int)
    for r in records:
        if r.kind == "E":
            runs[r.task_id] += 1
    return runs


@dataclass
class Row:
    """One line of the report: what one fault did to one broker's tasks in one ack mode."""

    scenario: str
    broker: str
    mode: str  # "at-least-once" (acks_late) or "at-most-once" (early ack)
    confirmed: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    faults: int = 0
    unexplained: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.unexplained

    def line(self) -> str:
        verdict = "ok" if self.ok else "FAIL " + "; ".join(self.unexplained[:3])
        return (
            f"{self.scenario:<22} {self.broker:<9} {self.mode:<14} {self.confirmed:>7} {self.faults:>6} "
            f"{self.lost:>5} {self.duplicated:>5} {self.unexpected:>5}  {verdict} {self.note}"
        )


HEADER = (
    f"{'scenario':<22} {'broker':<9} {'mode':<14} {'tasks':>7} {'faults':>6} "
    f"{'lost':>5} {'dup':>5} {'unexp':>5}  verdict"
)


def judge(
    row: Row,
    published: set[str],
    records: list[Record],
    faults: list[float],
    *,
    retried: set[str] | frozenset[str] = frozenset(),
    held: set[str] | frozenset[str] = frozenset(),
) -> Row:
    """Fill ``row``'s counts from the ledger, and list whatever the mode and faults do not explain."""
    runs = completed(records)
    starts: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.kind == "S":
            starts[r.task_id].append(r.at)
    row.confirmed, row.faults = len(published), len(faults)
    lost = sorted(i for i in published if runs.get(i, 0) == 0)
    doubled = sorted(i for i in published if runs.get(i, 0) > 1)
    strangers = sorted(set(runs) - published)
    row.lost, row.duplicated, row.unexpected = len(lost), len(doubled), len(strangers)
    if row.mode == "at-least-once":
        row.unexplained += [f"lost {i}" for i in lost]
    else:  # at most once: only a task running, or held by a killed worker, may be lost
        row.unexplained += [f"lost {i}" for i in lost if i not in held and not _cut_short(starts[i], faults)]
    for task_id in doubled:
        if task_id in retried:
            continue
        if row.mode == "at-least-once" and task_id in held:
            continue  # its killed holder may have left a copy (an ETA task parked, not yet acked)
        if not _fault_between_runs(starts[task_id], faults):
            row.unexplained.append(f"duplicated {task_id} x{runs[task_id]}")
    row.unexplained += [f"unexpected {i}" for i in strangers]
    return row


def _cut_short(starts: list[float], faults: list[float]) -> bool:
    return bool(starts) and any(f >= starts[-1] for f in faults)


def _fault_between_runs(starts: list[float], faults: list[float]) -> bool:
    """Each later run started after a fault that came after the first run started.

    A fault during the first run counts too: a task outlives a lost connection, and its ack
    dies with it.
    """
    first = min(starts)
    later = [s for s in starts if s > first]
    return bool(later) and all(any(first <= f <= s for f in faults) for s in later)


class FaultLog:
    """When each injected fault happened (wall clock, as the ledger's)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def mark(self) -> float:
        now = time.time()
        self.times.append(now)
        return now
