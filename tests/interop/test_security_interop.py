"""Signed messages between Celery 5.7 and taskq on Redis: each side verifies the other's ``auth`` messages.

Two self-signed certificates made here, both in one store: Celery signs with one key, taskq with
the other, so a pass means each side checked a signature the other made (not its own).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from interop.sides import celery_worker_argv, env_for, taskq_worker_argv, unique, workers
from security_support import make_cert, signing_undone

from taskq import Celery

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

APP = """
from {package} import Celery

app = Celery("{name}", broker={url!r}, backend={url!r})
app.conf.update({conf!r})
app.setup_security()


@app.task(name="sec.add")
def add(x, y):
    return x + y
"""


def signing(store: Path, key: Path, cert: Path) -> dict[str, Any]:
    return {
        "security_key": str(key),
        "security_key_password": "pw",
        "security_certificate": str(cert),
        "security_cert_store": str(store),
        "task_serializer": "auth",
        "accept_content": ["auth"],
        "result_accept_content": ["json"],
    }


def test_celery_and_taskq_verify_each_others_signed_tasks(tmp_path: Path, redis_url: str) -> None:
    store = tmp_path / "store"
    celery_key, celery_cert = make_cert(store, "celery-side", password=b"pw")
    taskq_key, taskq_cert = make_cert(store, "taskq-side", password=b"pw")
    keys = tmp_path / "keys"
    keys.mkdir()
    celery_conf = signing(store, celery_key.rename(keys / celery_key.name), celery_cert)
    taskq_conf = signing(store, taskq_key.rename(keys / taskq_key.name), taskq_cert)
    q_celery, q_taskq = unique("sec-celery"), unique("sec-taskq")
    for module, package, conf in (("celery_sec", "celery", celery_conf), ("taskq_sec", "taskq", taskq_conf)):
        source = APP.format(package=package, name=module, url=redis_url, conf=conf)
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))

    specs = [
        ("celery", celery_worker_argv("celery_sec", unique("celery") + "@sec", [q_celery], "-P", "solo")),
        ("taskq", taskq_worker_argv("taskq_sec", unique("taskq") + "@sec", [q_taskq], "-P", "solo")),
    ]
    with workers(specs, tmp_path) as procs:
        # a Celery 5.7 client signs, the taskq worker verifies and runs
        client = subprocess.run(
            [sys.executable, "-c", f"from celery_sec import add; print(add.apply_async((20, 22), queue={q_taskq!r}).get(timeout=30))"],
            cwd=tmp_path, env=env_for(tmp_path), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert client.returncode == 0, client.stderr + procs[1].log()
        assert client.stdout.strip() == "42"
        # a taskq client signs, the Celery worker verifies and runs
        with signing_undone():
            app = Celery(
                "taskq_client", broker=redis_url, backend=redis_url, set_as_current=False, **taskq_conf
            )
            app.setup_security()
            try:
                assert app.send_task("sec.add", (1, 2), queue=q_celery).get(timeout=30) == 3
            finally:
                app.close()
        for proc in procs:
            assert "Traceback" not in proc.log(tail=10**6), proc.log()
