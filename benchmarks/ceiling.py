"""The ceiling: what the Redis server itself does for LPUSH/RPOP on this machine.

One connection without pipelining is the fair bound for one publisher sending one message per
call; 50 connections show what the server gives a crowd.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from urllib.parse import urlparse


def redis_benchmark(redis_url: str, n: int) -> dict[str, float]:
    """Requests per second by figure name; empty when redis-benchmark is not installed."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return {}
    url = urlparse(redis_url)
    db = (url.path or "/0").strip("/") or "0"
    figures: dict[str, float] = {}
    for clients in (1, 50):
        proc = subprocess.run(
            [
                exe,
                "-h",
                url.hostname or "127.0.0.1",
                "-p",
                str(url.port or 6379),
                "--dbnum",
                db,
                "-n",
                str(n),
                "-c",
                str(clients),
                "-t",
                "lpush,rpop",
                "--csv",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        for row in csv.reader(io.StringIO(proc.stdout)):
            if len(row) >= 2 and row[0] in ("LPUSH", "RPOP"):
                figures[f"{row[0]} c={clients}"] = float(row[1])
    return figures
