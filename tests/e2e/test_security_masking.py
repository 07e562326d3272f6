"""No password reaches an operator's screen: worker log and banner, inspect conf/stats, report, beat, errors.

The broker and backend URLs carry a real password: a Redis ACL user made for this run (and deleted
after it), so the worker really connects with it. Other secrets sit in the config too (the HMAC key,
a key password, a transport option). Each output is searched for every one of them.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import WorkerProcess, run_taskq, running_worker, write_module

pytestmark = pytest.mark.e2e

APP = """
from taskq import Celery

app = Celery({main!r}, broker={broker!r}, backend={broker!r})
app.conf.update(
    task_default_queue={queue!r},
    security_hmac_key={hmac!r},
    security_key_password={key_password!r},
    broker_transport_options={{"sentinel_kwargs": {{"password": {transport!r}}}}},
    broker_connection_retry_on_startup=False,
    beat_schedule={{"tick": {{"task": "proj.add", "schedule": 3600.0, "args": (1, 2)}}}},
)


@app.task
def add(x, y):
    return x + y
"""


@pytest.fixture
def redis_user(redis_url: str, redis_client: Any) -> Iterator[tuple[str, str]]:
    """A Redis ACL user with a password of its own; (name, password)."""
    name, password = f"taskq-sec-{uuid.uuid4().hex[:8]}", f"Pw{uuid.uuid4().hex}"
    redis_client.execute_command("ACL", "SETUSER", name, "on", f">{password}", "~*", "&*", "+@all")
    try:
        yield name, password
    finally:
        redis_client.execute_command("ACL", "DELUSER", name)


def assert_hidden(output: str, secrets: dict[str, str], where: str) -> None:
    leaked = [name for name, secret in secrets.items() if secret in output]
    assert not leaked, f"{where} shows {leaked}:\n{output}"


def test_secrets_are_masked_everywhere(tmp_path: Path, redis_url: str, redis_user: tuple[str, str]) -> None:
    user, password = redis_user
    db = redis_url.rsplit("/", 1)[1]
    broker = f"redis://{user}:{password}@127.0.0.1:6379/{db}"
    secrets = {
        "password": password,
        "hmac key": f"hmac-{uuid.uuid4().hex}",
        "key password": f"keypw-{uuid.uuid4().hex}",
        "transport option": f"opt-{uuid.uuid4().hex}",
    }
    queue = f"e2e-mask-{uuid.uuid4().hex[:10]}"
    source = APP.format(
        main=f"mask-{uuid.uuid4().hex[:8]}",
        broker=broker,
        queue=queue,
        hmac=secrets["hmac key"],
        key_password=secrets["key password"],
        transport=secrets["transport option"],
    )
    write_module(tmp_path, "proj", source)

    with running_worker(
        tmp_path, "-A", "proj", "worker", "-l", "debug", "-P", "threads", "-n", "mask@%h"
    ) as worker:
        node = worker.wait_ready().group(1)
        for args in (("inspect", "conf"), ("inspect", "stats"), ("inspect", "report"), ("report",)):
            done = run_taskq(tmp_path, "-A", "proj", *args, "-d", node) if args[0] == "inspect" else None
            done = done or run_taskq(tmp_path, "-A", "proj", *args)
            assert done.returncode == 0, done.stdout + done.stderr
            assert user in done.stdout, done.stdout  # the URL (or the broker's user) is shown, masked
            assert_hidden(done.stdout + done.stderr, secrets, f"taskq {' '.join(args)}")
    assert "Connected to redis://" in worker.output
    assert_hidden(worker.output, secrets, "the worker's banner and debug log")

    beat = WorkerProcess(["-A", "proj", "beat", "-l", "debug", "-s", str(tmp_path / "schedule")], tmp_path)
    try:
        beat.wait_for_log(r"broker -> redis://")
        beat.wait_for_log(r"beat: took the lease")
    finally:
        beat.stop(signal.SIGTERM)
    assert_hidden(beat.output, secrets, "beat's banner and log")

    unreachable = f"redis://{user}:{password}@127.0.0.1:1/0"
    lost = WorkerProcess(["-A", "proj", "-b", unreachable, "worker", "-l", "info"], tmp_path)
    try:
        assert lost.wait() != 0
    finally:
        lost.stop()
    assert "127.0.0.1:1" in lost.output
    assert_hidden(lost.output, secrets, "a worker that cannot connect")
    result = run_taskq(tmp_path, "-A", "proj", "--result-backend", unreachable, "result", str(uuid.uuid4()))
    assert result.returncode != 0
    assert_hidden(result.stdout + result.stderr, secrets, "a result backend error")
