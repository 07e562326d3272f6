"""Client side of one peer, run as ``python -m benchmarks.driver MODULE ACTION [N] [KIND]``.

Prints one JSON line. The timed part excludes imports and the first connection: one warm-up
message goes first (so a drain target is always N + 1).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from typing import Any

from benchmarks import contract

ROUNDTRIP_TIMEOUT = 10.0
READY_TIMEOUT = 60.0


def _publish(peer: Any, n: int, kind: str) -> dict[str, Any]:
    peer.publish(1, kind)
    start = time.perf_counter()
    peer.publish(n, kind)
    return {"seconds": time.perf_counter() - start}


def _ready(peer: Any, n: int) -> dict[str, Any]:
    """Round trips until the worker answers, then ``n`` more to warm it (children, connections)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            peer.call(5.0)
            break
        except Exception as error:
            if time.monotonic() > deadline:
                raise SystemExit(f"worker did not answer in {READY_TIMEOUT:.0f} s: {error!r}")
    for _ in range(n):
        peer.call(ROUNDTRIP_TIMEOUT)
    return {"ready": True}


def _roundtrip(peer: Any, n: int) -> dict[str, Any]:
    latencies = []
    for _ in range(n):
        start = time.perf_counter()
        peer.call(ROUNDTRIP_TIMEOUT)
        latencies.append(time.perf_counter() - start)
    return {"latencies": latencies}


def main(argv: list[str]) -> None:
    module, action, *rest = argv
    peer = importlib.import_module(module)
    n = int(rest[0]) if rest else 0
    kind = rest[1] if len(rest) > 1 else "noop"
    broker = "amqp" if contract.get(contract.BROKER).startswith("amqp") else "redis"
    if action == "info":  # n: the sleeping figure's concurrency
        bindir = os.path.dirname(sys.executable)
        out: dict[str, Any] = {
            "version": peer.version(),
            "settings": peer.settings(broker),
            "argv": peer.worker_argv(bindir, "noop", 2),
            "argv_sleep": peer.worker_argv(bindir, "sleep", n),
        }
    elif action == "publish":
        out = _publish(peer, n, kind)
    elif action == "ready":
        out = _ready(peer, n)
    elif action == "roundtrip":
        out = _roundtrip(peer, n)
    else:
        raise SystemExit(f"unknown action {action!r}")
    print(json.dumps(out), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
