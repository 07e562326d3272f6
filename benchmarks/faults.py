"""``python -m benchmarks.faults [--long] [--broker redis|rabbitmq|both] [--only NAME ...]``.

Runs the fault scenarios (``faults_scenarios.py``) against real brokers on this machine and
prints, per fault and broker, the tasks confirmed, faults injected, and lost / duplicated /
unexpected executions, with a verdict: lost must be 0 in at-least-once mode and only a task cut
short by a fault in at-most-once mode; every duplicate must follow a fault or a retried
publish. Exits 1 if any verdict fails. The default size is CI's; ``--long`` is about the size
of a ten-minute run per broker.

Redis is a private redis-server (AOF, fsync always) on a free port, ours to kill; RabbitMQ is
the local node, in a vhost of its own (``rabbitmqctl``), always started again after a
restart. The ledger lives on the shared Redis (127.0.0.1:6379), in a DB reserved as the
tests reserve theirs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:  # the fault tests' tools: servers, proxy, worker helpers
    sys.path.insert(0, str(ROOT / "tests"))

if TYPE_CHECKING:
    from benchmarks.faults_ledger import Row
    from benchmarks.faults_scenarios import Env

LEDGER_HOST, LEDGER_PORT = "127.0.0.1", 6379
LOCK_KEY = "taskq-test-run"  # the key tests/conftest.py reserves a Redis DB with
REDIS_OPTIONS = {"visibility_timeout": 10, "lease_timeout": 3}  # a killed worker's tasks come back soon
REDIS_SILENT = {**REDIS_OPTIONS, "socket_timeout": 2, "socket_connect_timeout": 2, "health_check_interval": 2}


def redis_env(server: Any, ledger_url: str, ledger: Any, workdir: Path) -> Env:
    """Scenarios on a ``tests/faults/servers.PrivateRedis``."""
    from benchmarks.faults_scenarios import Env

    return Env(
        "redis", server.url, ledger_url, ledger, workdir, lambda: server.restart(down_for=1.0), server.port,
        lambda proxy: proxy.url("redis://", "/0"),
        worker_settings={"broker_transport_options": REDIS_OPTIONS},
        silent_settings={"broker_transport_options": REDIS_SILENT},
    )  # fmt: skip


def rabbit_env(control: Any, url: str, ledger_url: str, ledger: Any, workdir: Path) -> Env:
    """Scenarios on the local RabbitMQ, in the vhost of ``url`` (a ``RabbitControl``'s)."""
    from benchmarks.faults_scenarios import Env

    vhost = url.rsplit("/", 1)[1]
    return Env(
        "rabbitmq", url, ledger_url, ledger, workdir, lambda: control.restart(url), 5672,
        lambda proxy: proxy.url("amqp://guest:guest@", f"/{vhost}"),
        silent_settings={"broker_heartbeat": 2},
    )  # fmt: skip


@contextmanager
def ledger_db() -> Iterator[tuple[str, Any]]:
    import redis

    for db in range(1, 15):
        client = redis.Redis(host=LEDGER_HOST, port=LEDGER_PORT, db=db)
        if client.set(LOCK_KEY, f"benchmarks.faults-{uuid.uuid4().hex[:8]}", nx=True, ex=4 * 3600):
            try:
                yield f"redis://{LEDGER_HOST}:{LEDGER_PORT}/{db}", client
            finally:
                client.flushdb()
                client.close()
            return
        client.close()
    raise SystemExit("every Redis DB 1-14 is reserved (key taskq-test-run): is a test run going on?")


@contextmanager
def broker_env(name: str, ledger_url: str, ledger: Any, workdir: Path) -> Iterator[Env]:
    from faults.servers import PrivateRedis, RabbitControl

    workdir.mkdir(parents=True, exist_ok=True)
    if name == "redis":
        data = workdir / "redis-data"
        data.mkdir()
        server = PrivateRedis(data)
        server.start()
        try:
            yield redis_env(server, ledger_url, ledger, workdir)
        finally:
            server.stop()
        return
    control = RabbitControl("rabbitmqctl")
    vhost = f"taskq-faults-{uuid.uuid4().hex[:8]}"
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    control.add_vhost(vhost)
    try:
        yield rabbit_env(control, url, ledger_url, ledger, workdir)
    finally:
        if control.stopped:
            control.start_app(url)
        control.delete_vhost(vhost)


def markdown(rows: list[Row]) -> str:
    lines = [
        "| fault | broker | mode | tasks | faults | lost | duplicated | unexpected | verdict | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        verdict = "ok" if r.ok else "FAIL"
        lines.append(
            f"| {r.scenario} | {r.broker} | {r.mode} | {r.confirmed} | {r.faults} | {r.lost} | "
            f"{r.duplicated} | {r.unexpected} | {verdict} | {r.note} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.faults_ledger import HEADER, Row
    from benchmarks.faults_scenarios import LONG, SCENARIOS, SMALL

    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.split("\n")[0])
    parser.add_argument("--long", action="store_true", help="about ten minutes per broker")
    parser.add_argument("--broker", choices=["redis", "rabbitmq", "both"], default="both")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), help="these scenarios only")
    args = parser.parse_args(argv)
    size = LONG if args.long else SMALL
    brokers = ["redis", "rabbitmq"] if args.broker == "both" else [args.broker]
    names = args.only or list(SCENARIOS)
    rows: list[Row] = []
    started = time.monotonic()
    print(HEADER, flush=True)
    tmp = tempfile.mkdtemp(prefix="taskq-faults-")
    with ledger_db() as (ledger_url, ledger):
        for broker in brokers:
            with broker_env(broker, ledger_url, ledger, Path(tmp) / broker) as env:
                for name in names:
                    try:
                        got = SCENARIOS[name](env, size)
                    except Exception as exc:  # a scenario that cannot finish is a failed verdict
                        got = [Row(name, broker, "-", unexplained=[f"{type(exc).__name__}: {exc}"[:300]])]
                    for row in got:
                        print(row.line(), flush=True)
                    rows += got
    print(f"\n{markdown(rows)}\n\n{len(rows)} rows in {time.monotonic() - started:.0f} s, size "
          f"{'long' if args.long else 'small'}", flush=True)  # fmt: skip
    if all(r.ok for r in rows):
        shutil.rmtree(tmp, ignore_errors=True)
        return 0
    print(f"worker logs kept in {tmp}", flush=True)  # each scenario's queue has a directory
    return 1


if __name__ == "__main__":
    sys.exit(main())
