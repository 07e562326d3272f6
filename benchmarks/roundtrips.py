"""Redis commands per task, publish and drain, from MONITOR on the run's own DB.

``python -m benchmarks.roundtrips --peers taskq,celery [-n 2000]``. MONITOR sees every client of
the server, so commands are kept only when they ran in the claimed DB; the benchmark counter's own
commands (keys ``bench:*``) are left out, so the figures are the task library's alone.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections import Counter
from typing import Any

import redis

from benchmarks import venv, workers
from benchmarks.peers import PEERS
from benchmarks.services import Services, claimed


class Monitor:
    """Counts commands by name in one DB while it runs, in a thread of its own."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.db = self.client.connection_pool.connection_kwargs.get("db", 0)
        self.counts: Counter[str] = Counter()
        self.active = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self.client.monitor() as monitor:
            while not self._stop.is_set():
                self._record(monitor.next_command())

    def _record(self, entry: dict[str, Any]) -> None:
        if not self.active or int(entry.get("db", -1)) != self.db:
            return
        words = str(entry.get("command", "")).split()
        if not words or (len(words) > 1 and words[1].startswith("bench:")):
            return
        self.counts[words[0].upper()] += 1

    def take(self) -> Counter[str]:
        counts, self.counts = self.counts, Counter()
        return counts

    def close(self) -> None:
        self._stop.set()
        self.client.ping()  # wakes the monitor up for its last command


def measure(
    services: Services, peer_name: str, n: int, python: str, monitor: Monitor
) -> dict[str, Counter[str]]:
    peer = PEERS[peer_name]
    out: dict[str, Counter[str]] = {}
    for kind, results in (("noop", False), ("result", True)):
        services.reset()
        env = workers.Env(
            python, services.redis_url, services.redis_url if results else "", "bq-rt", services.redis_url
        )
        env.variant = peer.variant
        about = workers.drive(env, peer.module, "info", "2")
        monitor.take()
        monitor.active = True
        workers.drive(env, peer.module, "publish", str(n), kind)
        out[f"publish {kind}"] = monitor.take()
        proc = workers.start(about["argv"], env, target=n + 1)
        try:
            workers.wait_count(services.redis_url, n + 1, proc, 300)
        finally:
            monitor.active = False
            workers.stop(proc)
        out[f"drain {kind}"] = monitor.take()
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.roundtrips")
    parser.add_argument("--peers", default="taskq,celery")
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--python", default=venv.default_python())
    args = parser.parse_args(argv)
    with claimed(None, None, need_amqp=False) as services:
        monitor = Monitor(services.redis_url)
        try:
            for name in args.peers.split(","):
                for phase, counts in measure(services, name, args.n, args.python, monitor).items():
                    per_task = sum(counts.values()) / (args.n + 1)
                    top = ", ".join(f"{c} {k}" for k, c in counts.most_common(8))
                    print(f"{name:13} {phase:15} {per_task:6.2f} commands/task  ({top})")
        finally:
            monitor.close()


if __name__ == "__main__":
    main(sys.argv[1:])
