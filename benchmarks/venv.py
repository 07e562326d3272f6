"""``python -m benchmarks setup``: the benchmark's own venv, so the peers stay out of taskq's deps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
PYTHON = VENV / "bin" / "python"
REQUIREMENTS = [
    "celery[redis]==5.7.0",
    "dramatiq[redis,rabbitmq]>=2,<3",
    "huey>=3,<4",
    "gevent",  # Celery's and Huey's sleeping figure
    "py-spy",  # PROFILE.md
    "pyinstrument",
]


def setup() -> None:
    if not PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "-q", "-e", str(HERE.parent), *REQUIREMENTS], check=True
    )
    print(f"benchmark venv ready: {PYTHON}")


def default_python() -> str:
    """The bench venv's interpreter when set up, else this one (CI: taskq's venv, with Celery)."""
    return str(PYTHON) if PYTHON.exists() else sys.executable
