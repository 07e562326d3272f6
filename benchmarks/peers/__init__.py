"""The peers under test, each an app module with the same small interface.

A peer module, imported only inside its own subprocesses, defines:

- ``version() -> str`` and ``settings(broker: str) -> str`` (ack mode and flags, for the report);
- ``publish(n: int, kind: str)``: ``n`` calls of its ``delay()``; kind is ``noop``, ``result``
  (a no-op whose result is stored) or ``sleep`` (awaits/sleeps 50 ms);
- ``call(timeout: float)``: one ``delay().get()`` round trip;
- ``worker_argv(bindir: str, kind: str, concurrency: int) -> list[str]``: the worker command line.

This package itself imports none of them, so the orchestrator runs without any peer installed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    name: str  # column in the report
    module: str  # the app module, imported by the worker and the driver
    distribution: str  # what must be importable for the peer to run
    variant: str = "default"
    brokers: tuple[str, ...] = ("redis", "amqp")


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("taskq", "benchmarks.peers.taskq", "taskq"),
        Peer("taskq-tuned", "benchmarks.peers.taskq", "taskq", variant="tuned"),
        Peer("celery", "benchmarks.peers.celery", "celery"),
        Peer("celery-tuned", "benchmarks.peers.celery", "celery", variant="tuned"),
        Peer("dramatiq", "benchmarks.peers.dramatiq", "dramatiq"),
        Peer("huey", "benchmarks.peers.huey", "huey", brokers=("redis",)),
    )
}

QUICK_PEERS = ("taskq", "celery")
