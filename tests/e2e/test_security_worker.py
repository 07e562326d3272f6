"""A signing worker on a real Redis queue: forged, unsigned and pickled messages are refused, never run.

The worker runs ``task_serializer = "hmac"``; the test pushes raw kombu envelopes straight onto its
queue, as a hostile producer with broker access would, between properly signed tasks. Each bad one
must be logged with its id, taken off the queue (not looped), and leave the worker serving.
"""

from __future__ import annotations

import base64
import json
import pickle
import uuid
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Producer, Queue
from kombu.serialization import dumps
from security_support import signing_undone

from taskq import Celery

from .helpers import MakeDirectoryWhenUnpickled, running_worker, write_module

pytestmark = pytest.mark.e2e

SECRET = "e2e-shared-secret-0123456789"
SIGNING = {
    "task_serializer": "hmac",
    "accept_content": ["hmac"],
    "result_accept_content": ["json"],
    "security_hmac_key": SECRET,
}

APP = """
from pathlib import Path

from taskq import Celery

app = Celery("proj", broker={url!r}, backend={url!r}, task_default_queue={queue!r}, **{signing!r})
app.setup_security()


@app.task
def add(x, y):
    return x + y


@app.task
def touch(path):
    Path(path).write_text("the task ran")
    return path
"""


def headers(name: str, task_id: str) -> dict[str, Any]:
    return {"lang": "py", "task": name, "id": task_id, "root_id": task_id, "retries": 0}


def test_signing_worker_refuses_what_is_not_signed_by_a_known_key(
    tmp_path: Path, redis_url: str, redis_client: Any
) -> None:
    queue = f"e2e-sec-{uuid.uuid4().hex[:10]}"
    write_module(tmp_path, "proj", APP.format(url=redis_url, queue=queue, signing=SIGNING))
    ran = tmp_path / "a-forged-task-ran"
    unpickled = tmp_path / "a-pickle-was-loaded"
    bad = {kind: str(uuid.uuid4()) for kind in ("unsigned", "tampered", "stranger", "pickle", "trusted_type")}
    forged_args = [[str(ran)], {}, {}]
    with signing_undone():
        Celery(
            "stranger", broker="memory://", set_as_current=False, **dict(SIGNING, security_hmac_key="x" * 32)
        ).setup_security()
        _, _, by_stranger = dumps(forged_args, serializer="hmac")
        client = Celery(
            "client",
            broker=redis_url,
            backend=redis_url,
            task_default_queue=queue,
            set_as_current=False,
            **SIGNING,
        )
        client.setup_security()
        _, _, genuine = dumps([[1, 2], {}, {}], serializer="hmac")
        envelope = json.loads(genuine)
        tampered = json.dumps(
            dict(envelope, body=base64.b64encode(json.dumps(forged_args).encode()).decode())
        )
        good: list[Any] = []
        try:
            with Connection(redis_url) as conn:
                producer = Producer(conn.default_channel)
                declare = [Queue(queue, Exchange(queue), queue)]

                def raw(body: bytes | str, content_type: str, kind: str, encoding: str = "utf-8") -> None:
                    producer.publish(
                        body, exchange="", routing_key=queue, content_type=content_type,
                        content_encoding=encoding, headers=headers("proj.touch", bad[kind]), declare=declare,
                    )  # fmt: skip
                    good.append(client.send_task("proj.add", (len(good), 100)))

                raw(json.dumps(forged_args), "application/json", "unsigned")
                raw(tampered, "application/x-taskq-hmac", "tampered")
                raw(by_stranger, "application/x-taskq-hmac", "stranger")
                evil = pickle.dumps(((str(ran), MakeDirectoryWhenUnpickled(str(unpickled))), {}, {}))
                raw(evil, "application/x-python-serialize", "pickle", "binary")
                # kombu always trusts application/data (Celery's auth type): unsigned JSON under it
                raw(json.dumps(forged_args), "application/data", "trusted_type")

            with running_worker(tmp_path, "-A", "proj", "worker", "-l", "info", "-c", "2") as worker:
                assert [r.get(timeout=20) for r in good] == [i + 100 for i in range(5)]
                assert client.send_task("proj.add", (1, 1)).get(timeout=20) == 2  # still serving
                assert worker.alive()
                log = worker.output
        finally:
            client.close()
    assert worker.proc.returncode == 0, log

    assert "Refused message with content type 'application/json'" in log
    assert f"message proj.touch[{bad['unsigned']}]" in log
    assert f"Refused message proj.touch[{bad['tampered']}]: HMAC-signed message: bad signature" in log
    assert f"Refused message proj.touch[{bad['stranger']}]: HMAC-signed message: bad signature" in log
    assert f"message proj.touch[{bad['pickle']}]" in log
    assert "Invalid task message dropped" in log and bad["trusted_type"] in log
    assert "Traceback" not in log
    assert not ran.exists(), "a forged task ran"
    assert not unpickled.exists(), "a pickle was loaded"
    assert redis_client.llen(queue) == 0  # refused for good, not put back to loop
