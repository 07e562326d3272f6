"""examples/canvas_guide runs unchanged: a ``taskq worker`` subprocess and the guide as a client.

On Redis (broker and results) and on RabbitMQ with Redis results (rpc:// cannot do chords).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from e2e.helpers import clean_env, running_worker

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "examples" / "canvas_guide"
IMPORT_ROOT = ROOT  # where the worker and the guide import taskq from


def run_guide(tmp_path: Path, broker: str, backend: str) -> str:
    env = clean_env(
        PYTHONPATH=os.pathsep.join((str(GUIDE), str(IMPORT_ROOT))),
        TASKQ_BROKER_URL=broker,
        TASKQ_RESULT_BACKEND=backend,
        CANVAS_GUIDE_QUEUE=f"guide-{uuid.uuid4().hex[:8]}",
        CANVAS_GUIDE_ERRORS=str(tmp_path / "errors"),
    )
    with running_worker(
        tmp_path, "-A", "tasks", "worker", "-l", "info", "-P", "threads", "-c", "4", env=env
    ) as worker:
        proc = subprocess.run([sys.executable, str(GUIDE / "guide.py")], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n--- worker ---\n{worker.output}"
    return proc.stdout


@pytest.mark.redis
def test_canvas_guide_on_redis(tmp_path: Path, redis_url: str, redis_client: Any) -> None:
    out = run_guide(tmp_path, redis_url, redis_url)
    assert "all canvas guide examples gave the guide's values" in out


@pytest.mark.redis
@pytest.mark.amqp
def test_canvas_guide_on_rabbitmq_with_redis_results(
    tmp_path: Path, amqp_url: str, redis_url: str, redis_client: Any
) -> None:
    out = run_guide(tmp_path, amqp_url, redis_url)
    assert "all canvas guide examples gave the guide's values" in out
