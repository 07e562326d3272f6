"""Memory of a worker's whole process tree, and the statistics the report prints.

PSS (proportional set size) charges each shared page to its sharers in part, so a prefork tree
is not counted as if every child owned the parent's copy-on-write pages; RSS is printed beside
it because it is what most people read in ``ps``.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(root: int) -> list[int]:
    children = _children_map()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


@dataclass
class Memory:
    pss_mib: float
    rss_mib: float
    processes: int


def tree_memory(root: int) -> Memory:
    """Sum of ``Pss`` and ``Rss`` from ``/proc/PID/smaps_rollup`` over the tree under ``root``."""
    pss = rss = 0
    count = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        count += 1
        for line in lines:
            if line.startswith("Pss:"):
                pss += int(line.split()[1])
            elif line.startswith("Rss:"):
                rss += int(line.split()[1])
    return Memory(pss / 1024, rss / 1024, count)


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of the tree under ``root``.

    On a machine whose cores the worker, its children and the broker share, CPU per task is
    what sets throughput, and it varies far less than wall time when neighbours are busy.
    """
    ticks = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def redis_cpu(client: object) -> float:
    """CPU seconds the Redis server has used (``INFO cpu``), for the broker's share per task."""
    info = client.info("cpu")  # type: ignore[attr-defined]
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the value at rank ceil(q * n), as latency reports use."""
    ordered = sorted(values)
    rank = max(1, -(-int(q * 1000) * len(ordered) // 1000))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Spread:
    median: float
    low: float
    high: float


def spread(values: list[float]) -> Spread:
    return Spread(statistics.median(values), min(values), max(values))
