"""The public API is typed: mypy catches a wrong ``delay()`` call (Task[P, R] with ParamSpec)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SAMPLE = Path(__file__).parent.parent / "typing" / "task_calls.py"


def test_mypy_reports_exactly_the_marked_lines() -> None:
    expected = {
        (number, match.group(1))
        for number, line in enumerate(SAMPLE.read_text().splitlines(), start=1)
        if (match := re.search(r"# E: ([\w-]+)", line))
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-incremental",
            "--hide-error-context",
            "--show-error-codes",
            str(SAMPLE),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    found = {
        (int(m.group(1)), m.group(2))
        for m in re.finditer(r"task_calls\.py:(\d+): error: .*\[([\w-]+)\]", run.stdout)
    }
    assert found == expected, run.stdout
