"""The environment variables through which the orchestrator configures a peer's subprocesses.

The peers' app modules are imported by foreign CLIs (``celery``, ``dramatiq``, ``huey_consumer``),
so the environment is the one channel every one of them passes through unchanged.
"""

from __future__ import annotations

import os

BROKER = "BENCH_BROKER"  # broker URL
RESULTS = "BENCH_RESULTS"  # result backend URL, empty: results off
QUEUE = "BENCH_QUEUE"  # queue name of this run
COUNTER = "BENCH_COUNTER"  # Redis URL of the independent execution counter
TARGET = "BENCH_TARGET"  # executions after which the last one stamps its time
VARIANT = "BENCH_VARIANT"  # "default" or "tuned"
GREEN = "BENCH_GREEN"  # "1": the worker runs green threads (monkey-patch on import)


def get(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def results_on() -> bool:
    return bool(get(RESULTS))
