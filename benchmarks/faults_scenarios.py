"""The faults, one function each: run real ``taskq`` workers (and beats), break something, judge.

Each scenario gets a broker (``Env``) and a size, runs its own app on its own queue, and returns
report rows (``faults_ledger.Row``), one per ack mode it exercises. Tasks alternate between the
two modes: ``late`` (acks_late + reject_on_worker_lost: at-least-once) and ``early`` (Celery's
default: at-most-once). Brokers are broken with the fault tests' own tools (``tests/faults``).
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from e2e.helpers import WorkerProcess, wait_for, write_module
from faults.proxy import TcpProxy

from benchmarks.faults_ledger import APP, FaultLog, Record, Row, completed, judge, read
from taskq import Celery

RECEIVED = re.compile(r"Task faultsuite\.\w+\[([^\]]+)\] received")
# Generous enough to ride out a broker restart, short between attempts (as tests/faults/load.py).
PUBLISH_RETRY = {"max_retries": 120, "interval_start": 0, "interval_step": 0.25, "interval_max": 0.25}
MODES = {"late": "at-least-once", "early": "at-most-once"}


@dataclass
class Size:
    tasks: int = 60  # per kill scenario
    child_kills: int = 20
    worker_kills: int = 5
    sigterms: int = 2
    restart_tasks: int = 300
    silent_for: float = 30.0
    healthy: int = 20  # tasks beside the poison one
    beat_seconds: float = 12.0
    recycle_tasks: int = 0  # memory recycling runs only when set (--long)
    eta_tasks: int = 200  # ETA tasks due over the next eta_spread seconds
    eta_spread: float = 20.0
    eta_restarts: int = 2  # worker stops, alternately warm (SIGTERM) and kill -9


SMALL = Size()
LONG = Size(
    tasks=2000, child_kills=200, worker_kills=30, sigterms=10, restart_tasks=5000, silent_for=30.0,
    healthy=500, beat_seconds=120.0, recycle_tasks=50_000, eta_tasks=2000, eta_spread=120.0,
    eta_restarts=6,
)  # fmt: skip


@dataclass
class Env:
    """One broker to run scenarios on, and the ledger Redis (which no fault touches)."""

    name: str  # "redis" or "rabbitmq"
    url: str
    ledger_url: str
    ledger: Any  # redis.Redis
    workdir: Path
    restart: Callable[[], None]  # a broker restart under load
    port: int  # where a proxy forwards to
    proxied_url: Callable[[TcpProxy], str]
    worker_settings: dict[str, Any] = field(default_factory=dict)  # e.g. short redelivery on Redis
    silent_settings: dict[str, Any] = field(default_factory=dict)  # timeouts that notice silence


class Run:
    """One scenario's app, queue, client and ledger."""

    def __init__(self, env: Env, label: str, worker_broker: str | None = None, **settings: Any) -> None:
        self.env = env
        self.queue = f"faults-{label}-{uuid.uuid4().hex[:6]}"
        self.key = f"{self.queue}-ledger"
        self.dir = env.workdir / self.queue
        self.dir.mkdir(parents=True)
        settings = {"worker_prefetch_multiplier": 1, **env.worker_settings, **settings}
        source = APP.format(
            broker=worker_broker or env.url, backend=env.ledger_url, queue=self.queue, settings=settings,
            ledger=env.ledger_url, key=self.key,
        )  # fmt: skip
        write_module(self.dir, "faultsuite", source)
        self.client = Celery(
            "faultclient", broker=env.url, backend=env.ledger_url, set_as_current=False,
            task_default_queue=self.queue, task_publish_retry_policy=PUBLISH_RETRY,
            broker_confirm_publish=True,
        )  # fmt: skip
        self.published: dict[str, str] = {}  # task id -> task kind
        self.etas: dict[str, float] = {}  # task id -> its ETA (epoch seconds), for ETA tasks
        self.retried: set[str] = set()
        self.faults = FaultLog()
        self.workers: list[WorkerProcess] = []
        self.held: set[str] = set()  # ids received by a worker that was then killed

    def worker(self, *extra: str, pool: str = "prefork") -> WorkerProcess:
        args = ("-A", "faultsuite", "worker", "-P", pool, "-c", "2", "-l", "INFO", *extra)
        worker = WorkerProcess(args, self.dir)
        self.workers.append(worker)
        worker.wait_ready()
        return worker

    def publish(
        self,
        count: int,
        seconds: float,
        pace: float = 0.0,
        kinds: tuple[str, ...] = ("late", "early"),
        countdown: Callable[[int], float] | None = None,
    ) -> None:
        for i in range(count):
            kind = kinds[i % len(kinds)]
            task_id = f"{kind}-{i:05d}-{uuid.uuid4().hex[:6]}"
            policy = {**PUBLISH_RETRY, "errback": lambda exc, interval, t=task_id: self.retried.add(t)}
            eta = None if countdown is None else time.time() + countdown(i)
            try:
                self.client.send_task(
                    f"faultsuite.{kind}", args=[seconds], task_id=task_id, retry_policy=policy,
                    eta=None if eta is None else datetime.fromtimestamp(eta, timezone.utc),
                )  # fmt: skip
            except Exception:  # never confirmed: may or may not run, so it is left out of the count
                continue
            self.published[task_id] = kind
            if eta is not None:
                self.etas[task_id] = eta
            if pace:
                time.sleep(pace)

    def records(self) -> list[Record]:
        return read(self.env.ledger, self.key)

    def running(self, exclude: set[int]) -> list[Record]:
        """Executions started and not ended, newest first, by a process still alive."""
        records = self.records()
        ended = {(r.task_id, r.pid) for r in records if r.kind == "E"}
        open_ = [
            r for r in records if r.kind == "S" and (r.task_id, r.pid) not in ended and r.pid not in exclude
        ]
        return [r for r in reversed(open_) if _alive(r.pid)]

    def wait_done(self, timeout: float) -> None:
        """Until every at-least-once task completed, then until the ledger is quiet for 2 s.

        At-most-once tasks cut short by a fault never complete, so they are not waited for;
        the others still queued keep the ledger busy until they ran.
        """
        deadline = time.monotonic() + timeout
        ids = {i for i, kind in self.published.items() if kind != "early"}
        try:
            wait_for(lambda: ids <= set(completed(self.records())), timeout, "every task to complete", 0.2)
        except AssertionError:
            pass  # the judge reports what is missing
        last, since = -1, time.monotonic()
        while time.monotonic() - since < 2.0 and time.monotonic() < deadline:
            size = int(self.env.ledger.llen(self.key))
            if size != last:
                last, since = size, time.monotonic()
            time.sleep(0.1)

    def rows(self, scenario: str, note: str = "") -> list[Row]:
        records = self.records()
        out = []
        for kind in sorted({k for k in self.published.values()}, reverse=True):
            ids = {i for i, k in self.published.items() if k == kind}
            mine = [r for r in records if r.task_id in ids or r.task_id not in self.published]
            row = Row(scenario, self.env.name, MODES.get(kind, kind), note=note)
            out.append(judge(row, ids, mine, self.faults.times, retried=self.retried & ids, held=self.held))
        return out

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.client.close()
        self.env.ledger.delete(self.key)


@contextmanager
def run(env: Env, label: str, **kwargs: Any) -> Iterator[Run]:
    current = Run(env, label, **kwargs)
    try:
        yield current
    finally:
        current.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _kill_a_running_task(r: Run, exclude: set[int], timeout: float = 20.0) -> None:
    record = wait_for(lambda: r.running(exclude)[:1], timeout, "a task to be running")[0]
    os.kill(record.pid, signal.SIGKILL)
    r.faults.mark()


# -- scenarios ----------------------------------------------------------------------------------
def child_kill(env: Env, size: Size) -> list[Row]:
    """kill -9 the prefork child running a task, ``child_kills`` times, while tasks flow."""
    with run(env, "child", worker_lost_wait=0.5) as r:
        worker = r.worker()
        r.publish(size.tasks, 0.3)
        for _ in range(size.child_kills):
            _kill_a_running_task(r, {worker.pid})
            time.sleep(0.2)
        r.wait_done(60 + size.tasks * 0.2)
        return r.rows("kill -9 child", f"{size.child_kills} children killed")


def worker_kill(env: Env, size: Size) -> list[Row]:
    """kill -9 the whole worker (its process group) mid-task, ``worker_kills`` times, restarting it."""
    with run(env, "worker") as r:
        worker = r.worker()
        r.publish(size.tasks, 0.3)
        for _ in range(size.worker_kills):
            wait_for(lambda pid=worker.pid: r.running({pid})[:1], 30, "a task to be running")
            worker.kill()
            r.faults.mark()
            r.held |= set(RECEIVED.findall(worker.output))
            worker = r.worker()
        r.wait_done(120 + size.tasks * 0.2)
        return r.rows("kill -9 worker", f"{size.worker_kills} workers killed")


def eta_restarts(env: Env, size: Size) -> list[Row]:
    """ETA tasks due over ``eta_spread`` s, most waiting on the broker (threshold 5 s), the rest
    held by the worker, while the worker is stopped warm and killed -9 in turn and restarted.
    Each must run once (at-least-once), none before its ETA."""
    with run(env, "eta", worker_eta_broker_threshold=5.0, worker_lost_wait=0.5) as r:
        worker = r.worker()
        spread = size.eta_spread
        r.publish(size.eta_tasks, 0.05, countdown=lambda i: 2.0 + spread * i / size.eta_tasks)
        for n in range(size.eta_restarts):
            time.sleep(spread / (size.eta_restarts + 1))
            r.faults.mark()
            if n % 2:
                worker.kill()
                r.held |= set(RECEIVED.findall(worker.output))
            else:
                worker.stop(signal.SIGTERM, timeout=30)
            worker = r.worker()
        time.sleep(max(0.0, min(r.etas.values(), default=0) + spread + 2.0 - time.time()))
        r.wait_done(120 + size.eta_tasks * 0.05)
        first: dict[str, float] = {}
        for rec in r.records():
            if rec.kind == "S":
                first.setdefault(rec.task_id, rec.at)
        early = sorted(i for i, at in first.items() if i in r.etas and at < r.etas[i] - 0.05)
        rows = r.rows("ETA + restarts", f"{size.eta_restarts} stops (warm, -9); run early: {len(early)}")
        for row in rows:
            row.unexplained += [
                f"ran before its ETA: {i}" for i in early if MODES.get(r.published[i]) == row.mode
            ]
        return rows


def sigterm_past_grace(env: Env, size: Size) -> list[Row]:
    """SIGTERM while tasks run longer than the warm shutdown allows (worker_warm_shutdown_timeout=1)."""
    with run(env, "sigterm", worker_warm_shutdown_timeout=1.0) as r:
        worker = r.worker()
        r.publish(2 + 2 * size.sigterms, 3.0)
        for _ in range(size.sigterms):
            wait_for(lambda pid=worker.pid: len(r.running({pid})) >= 2, 30, "two tasks to be running")
            r.faults.mark()
            worker.stop(signal.SIGTERM, timeout=30)
            worker = r.worker()
        r.wait_done(120)
        return r.rows("SIGTERM past grace", "grace 1 s, tasks 3 s")


def broker_restart(env: Env, size: Size) -> list[Row]:
    """The broker restarted (killed, or stop_app/start_app) while a client publishes and tasks run."""
    with run(env, "restart") as r:
        r.worker(pool="threads")
        publisher = threading.Thread(target=r.publish, args=(size.restart_tasks, 0.03, 0.01), daemon=True)
        publisher.start()
        wait_for(lambda: len(completed(r.records())) >= size.restart_tasks // 8, 60, "the worker to get busy")
        r.faults.mark()
        env.restart()
        r.faults.mark()
        publisher.join(300)
        r.wait_done(120)
        return r.rows("broker restart", f"publishes retried: {len(r.retried)}")


def silent_broker(env: Env, size: Size) -> list[Row]:
    """The worker's broker goes silent (a proxy stops forwarding, closing nothing) for a while."""
    proxy = TcpProxy("127.0.0.1", env.port)
    try:
        with run(env, "silent", worker_broker=env.proxied_url(proxy), **env.silent_settings) as r:
            worker = r.worker(pool="threads")
            r.publish(20, 0.05)
            wait_for(lambda: len(completed(r.records())) >= 10, 30, "tasks to run before the silence")
            r.faults.mark()
            proxy.freeze()
            r.publish(20, 0.05)  # queued at the broker while the worker hears nothing
            time.sleep(size.silent_for)
            proxy.thaw()
            r.faults.mark()
            r.wait_done(90)
            noticed = "noticed" if "Connection to broker lost" in worker.output else "NOT noticed"
            return r.rows("silent broker", f"{size.silent_for:g} s silent, loss {noticed}")
    finally:
        proxy.close()


def poison(env: Env, size: Size, limit: int = 3) -> list[Row]:
    """A task that kills its child every time, among healthy ones: dead-lettered after ``limit``."""
    with run(env, "poison", task_max_deliveries=limit, worker_lost_wait=0.5) as r:
        r.worker()
        bad = r.client.send_task("faultsuite.poison")
        r.publish(size.healthy, 0.05, kinds=("late",))
        state = wait_for(
            lambda: r.client.backend.get_task_meta(bad.id)["status"] in ("FAILURE",) and "FAILURE", 120,
            "the poison task to be dead-lettered", 0.2,
        )  # fmt: skip
        r.wait_done(60)
        starts = sum(1 for rec in r.records() if rec.kind == "S" and rec.task_id == bad.id)
        rows = r.rows("poison task", f"poison: {state} after {starts} deliveries (limit {limit})")
        if starts != limit:
            rows[0].unexplained.append(f"poison ran {starts} times, limit {limit}")
        return rows


def recycling(env: Env, size: Size) -> list[Row]:
    """Many short tasks on children replaced every 100 tasks (memory recycling)."""
    if not size.recycle_tasks:
        return []
    with run(env, "recycle") as r:
        r.worker("--max-tasks-per-child", "100")
        r.publish(size.recycle_tasks, 0.0, kinds=("late",))
        r.wait_done(600 + size.recycle_tasks / 50)
        return r.rows("memory recycling", "--max-tasks-per-child 100")


def two_beats(env: Env, size: Size) -> list[Row]:
    """Two ``taskq beat`` processes share a lease; the leader is killed -9; each tick sent once."""
    schedule = {"tick": {"task": "faultsuite.tick", "schedule": 1.0}}
    with run(env, "beat", beat_lease_seconds=3, beat_schedule=schedule) as r:
        r.worker(pool="threads")
        beats = [WorkerProcess(("-A", "faultsuite", "beat", "-l", "INFO", "-s", str(r.dir / f"s{i}")), r.dir)
                 for i in range(2)]  # fmt: skip
        try:
            leader = wait_for(lambda: [b for b in beats if "this beat sends" in b.output], 30, "a leader")[0]
            time.sleep(size.beat_seconds / 2)
            leader.kill()
            r.faults.mark()
            time.sleep(size.beat_seconds / 2)
        finally:
            for beat in beats:
                beat.stop()
        took_over = any("this beat sends" in b.output for b in beats if b is not leader)
        ticks = sorted(rec.at for rec in r.records() if rec.kind == "T")
        doubled = sum(1 for a, b in itertools.pairwise(ticks) if b - a < 0.5)
        row = Row("two beats, leader -9", env.name, "once per tick", confirmed=len(ticks), faults=1,
                  duplicated=doubled, note=f"follower took over: {took_over}")  # fmt: skip
        if doubled:
            row.unexplained.append(f"{doubled} ticks sent twice")
        if not took_over:
            row.unexplained.append("the follower never took over")
        return [row]


SCENARIOS: dict[str, Callable[[Env, Size], list[Row]]] = {
    "child-kill": child_kill,
    "worker-kill": worker_kill,
    "sigterm": sigterm_past_grace,
    "broker-restart": broker_restart,
    "silent-broker": silent_broker,
    "poison": poison,
    "two-beats": two_beats,
    "recycling": recycling,
    "eta": eta_restarts,
}
