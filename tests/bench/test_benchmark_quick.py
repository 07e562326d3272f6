"""The benchmark itself keeps working: ``python -m benchmarks --quick`` prints every figure.

No timing is asserted here (a loaded CI machine would fail it for nothing); the figures' values
only have to be numbers, on both brokers, for taskq and for Celery beside it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.figures import REDIS_ONLY, ROWS
from benchmarks.measure import percentile, spread, tree_memory

REPO = Path(__file__).resolve().parents[2]


def _section(table: str, title: str) -> str:
    start = table.index(f"### {title}\n")
    end = table.find("\n### ", start + 1)
    return table[start : end if end != -1 else None]


def _cells(section: str, label: str) -> list[str]:
    row = next(line for line in section.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in row.strip("|").split("|")[1:]]


def _number(cell: str) -> float:
    match = re.fullmatch(r"([\d,]+(?:\.\d+)?)(?: \(.*\))?", cell)
    assert match, f"not a figure: {cell!r}"
    return float(match.group(1).replace(",", ""))


@pytest.mark.redis
@pytest.mark.amqp
def test_quick_run_prints_every_figure(redis_url: str, amqp_url: str) -> None:
    args = ["--quick", "--peers", "taskq,celery", "--python", sys.executable]
    args += ["--redis-url", redis_url, "--amqp-url", amqp_url]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = proc.stdout
    for broker in ("redis", "amqp"):
        section = _section(table, broker)
        header = _cells(section, "figure")
        assert header[:2] == ["taskq", "celery"], header
        for key, (label, _) in ROWS.items():
            if broker != "redis" and key in REDIS_ONLY:
                assert f"| {label} |" not in section
                continue
            taskq, celery = _cells(section, label)[:2]
            assert _number(taskq) > 0, (broker, label)
            assert _number(celery) > 0, (broker, label)
        assert "taskq ÷ peer" in section
    ceiling = _section(table, "7. ceiling: redis-benchmark on the same server")
    assert "LPUSH c=1" in ceiling and "RPOP c=50" in ceiling
    assert re.search(r"- redis / taskq \S+: prefork -c 2", table)
    assert re.search(r"- amqp / celery 5\.\d+\.\d+: ", table)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 0.9) == 3.0
    assert spread([4.0, 1.0, 9.0]) == spread([9.0, 4.0, 1.0])
    assert spread([4.0, 1.0, 9.0]).median == 4.0


def test_tree_memory_counts_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        alone = tree_memory(child.pid)
        mine = tree_memory(os.getpid())
        assert alone.processes == 1 and alone.pss_mib > 0
        assert mine.processes >= 2 and mine.pss_mib > alone.pss_mib
    finally:
        child.kill()
        child.wait()
