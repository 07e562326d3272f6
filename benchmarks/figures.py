"""The figures, phase by phase, for one peer on one broker in one run.

Every phase starts from an empty Redis DB (queues, results, counter) and a queue name of its
own, so nothing one peer leaves behind is measured against the next.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from benchmarks import workers
from benchmarks.measure import Memory, percentile, redis_cpu, tree_cpu, tree_memory
from benchmarks.peers import Peer
from benchmarks.services import Services

# row label, higher is better
ROWS: dict[str, tuple[str, bool]] = {
    "publish": ("1. publish, tasks/s", True),
    "drain": ("2. drain, tasks/s", True),
    "cpu_worker": ("2. drain, worker tree CPU per task, us", False),
    "cpu_redis": ("2. drain, Redis server CPU per task, us", False),
    "results": ("3. drain, results on, tasks/s", True),
    "rt_p50": ("4. round trip p50, ms", False),
    "rt_p90": ("4. round trip p90, ms", False),
    "rt_p99": ("4. round trip p99, ms", False),
    "pss_idle": ("5. worker tree PSS idle, MiB", False),
    "pss_after": ("5. worker tree PSS after drain, MiB", False),
    "rss_idle": ("5. worker tree RSS idle, MiB", False),
    "rss_after": ("5. worker tree RSS after drain, MiB", False),
    "async": ("6. sleeps 50 ms, wall s", False),
}
#: figures only a Redis broker has (on RabbitMQ the counter is all Redis serves)
REDIS_ONLY = frozenset({"cpu_redis"})


@dataclass
class Plan:
    figures: tuple[str, ...]
    n: int  # tasks for publish and drain
    roundtrips: int
    sleeps: int
    sleep_concurrency: int
    python: str
    drain_timeout: float = 600.0


@dataclass
class PeerRun:
    """One run of one peer on one broker: figure key -> value."""

    values: dict[str, float] = field(default_factory=dict)


def _env(
    plan: Plan, services: Services, peer: Peer, broker: str, phase: str, run: int, results: bool
) -> workers.Env:
    return workers.Env(
        python=plan.python,
        broker_url=services.broker_url(broker),
        results_url=services.results_url(broker, peer.name) if results else "",
        queue=f"bq-{services.run_id}-{peer.name}-{run}-{phase}",
        counter_url=services.redis_url,
        variant=peer.variant,
    )


@dataclass
class Drained:
    publish_s: float
    drain_s: float
    memory: Memory
    #: CPU seconds per task from the first execution to the last: the worker's tree, Redis
    cpu_worker: float
    cpu_redis: float


def _drain(
    plan: Plan, env: workers.Env, peer: Peer, argv: list[str], kind: str, green: bool = False
) -> Drained:
    """Publish, then start the worker and time first to last execution, and the CPU it took."""
    import redis

    n = plan.sleeps if kind == "sleep" else plan.n
    published = workers.drive(env, peer.module, "publish", str(n), kind)
    target = n + 1  # the driver's warm-up message
    server = redis.Redis.from_url(env.counter_url)  # the counter's Redis: the broker's too on Redis
    proc = workers.start(argv, env, target=target, green=green)
    try:
        done_at_first = workers.wait_first(env.counter_url, proc, plan.drain_timeout)
        cpu0, redis0 = tree_cpu(proc.pid), redis_cpu(server)
        first, last = workers.wait_count(env.counter_url, target, proc, plan.drain_timeout)
        cpu1, redis1 = tree_cpu(proc.pid), redis_cpu(server)
        memory = tree_memory(proc.pid)
    finally:
        workers.stop(proc)
        server.close()
    tasks = max(target - done_at_first, 1)
    return Drained(
        published["seconds"], last - first, memory, (cpu1 - cpu0) / tasks, (redis1 - redis0) / tasks
    )


def run_peer(plan: Plan, services: Services, peer: Peer, broker: str, run: int, info: dict) -> PeerRun:
    """The phases the plan asks for; ``info`` is the driver's answer (argv, versions).

    A phase that fails is reported and its figures left out, so one peer's failure does not
    cost the whole run (the report shows ``-`` for them).
    """
    out = PeerRun()
    for phase in (_roundtrip_phase, _drain_phase, _results_phase, _async_phase):
        try:
            phase(plan, services, peer, broker, run, info, out)
        except Exception as error:
            print(f"{broker} {peer.name} {phase.__name__} failed: {error}", file=sys.stderr)
    return out


def _roundtrip_phase(
    plan: Plan, services: Services, peer: Peer, broker: str, run: int, info: dict, out: PeerRun
) -> None:
    if set(plan.figures) & {"roundtrip", "memory"}:
        services.reset()
        env = _env(plan, services, peer, broker, "rt", run, True)
        proc = workers.start(info["argv"], env)
        try:
            workers.drive(env, peer.module, "ready", "20")
            idle = tree_memory(proc.pid)
            out.values.update(pss_idle=idle.pss_mib, rss_idle=idle.rss_mib)
            if "roundtrip" in plan.figures:
                lat = workers.drive(env, peer.module, "roundtrip", str(plan.roundtrips))["latencies"]
                for q in (50, 90, 99):
                    out.values[f"rt_p{q}"] = percentile(lat, q / 100) * 1000
        finally:
            workers.stop(proc)


def _drain_phase(
    plan: Plan, services: Services, peer: Peer, broker: str, run: int, info: dict, out: PeerRun
) -> None:
    if set(plan.figures) & {"publish", "drain", "memory"}:
        services.reset()
        d = _drain(plan, _env(plan, services, peer, broker, "drain", run, False), peer, info["argv"], "noop")
        out.values.update(publish=plan.n / d.publish_s, drain=plan.n / d.drain_s)
        out.values.update(pss_after=d.memory.pss_mib, rss_after=d.memory.rss_mib)
        out.values["cpu_worker"] = d.cpu_worker * 1e6
        if broker == "redis":
            out.values["cpu_redis"] = d.cpu_redis * 1e6


def _results_phase(
    plan: Plan, services: Services, peer: Peer, broker: str, run: int, info: dict, out: PeerRun
) -> None:
    if "results" in plan.figures:
        services.reset()
        d = _drain(plan, _env(plan, services, peer, broker, "res", run, True), peer, info["argv"], "result")
        out.values["results"] = plan.n / d.drain_s


def _async_phase(
    plan: Plan, services: Services, peer: Peer, broker: str, run: int, info: dict, out: PeerRun
) -> None:
    if "async" in plan.figures:
        services.reset()
        green = "gevent" in info["argv_sleep"] or "greenlet" in info["argv_sleep"]
        d = _drain(
            plan,
            _env(plan, services, peer, broker, "async", run, False),
            peer,
            info["argv_sleep"],
            "sleep",
            green=green,
        )
        out.values["async"] = d.drain_s
