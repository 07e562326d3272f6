"""Broken messages on a real Redis queue: each is dropped with a logged reason, nothing else is lost.

The messages are published with kombu by hand (raw body, our own headers and content type), so
they land on the list exactly as a buggy or hostile producer would leave them.
"""

from __future__ import annotations

import json
import pickle
import uuid
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Producer, Queue

from taskq import Celery

from .helpers import MakeDirectoryWhenUnpickled, running_worker, write_module

pytestmark = pytest.mark.e2e

APP = """
from pathlib import Path

from taskq import Celery

app = Celery("proj", broker={url!r}, backend={url!r}, task_default_queue={queue!r})


@app.task
def add(x, y):
    return x + y


@app.task
def touch(path, *rest):
    Path(path).write_text("the task ran")
    return path
"""


def task_headers(name: str, task_id: str | None) -> dict[str, Any]:
    headers: dict[str, Any] = {"lang": "py", "task": name, "retries": 0, "timelimit": [None, None]}
    if task_id is not None:
        headers["id"] = task_id
        headers["root_id"] = task_id
    return headers


def test_broken_messages_are_dropped_with_a_reason(tmp_path: Path, redis_url: str, redis_client: Any) -> None:
    queue = f"e2e-bad-{uuid.uuid4().hex[:10]}"
    write_module(tmp_path, "proj", APP.format(url=redis_url, queue=queue))
    ran_file = tmp_path / "pickle-task-ran"
    unpickled_dir = tmp_path / "pickle-was-loaded"
    ids = {kind: str(uuid.uuid4()) for kind in ("undecodable", "short", "unknown", "pickle", "kwargs")}
    good: list[Any] = []
    client = Celery(
        "client", broker=redis_url, backend=redis_url, task_default_queue=queue, set_as_current=False
    )
    try:
        with Connection(redis_url) as conn:
            producer = Producer(conn.default_channel)
            declare = [Queue(queue, Exchange(queue), queue)]

            def raw(body: bytes | str, content_type: str, headers: dict[str, Any], encoding: str) -> None:
                producer.publish(
                    body,
                    exchange="",
                    routing_key=queue,
                    content_type=content_type,
                    content_encoding=encoding,
                    headers=headers,
                    declare=declare,
                )

            def good_task(i: int) -> None:
                good.append(client.send_task("proj.add", (i, 1000)))

            raw(
                "this is {not json", "application/json", task_headers("proj.add", ids["undecodable"]), "utf-8"
            )
            good_task(0)
            raw(json.dumps([[1, 2], {}]), "application/json", task_headers("proj.add", ids["short"]), "utf-8")
            good_task(1)
            raw(
                json.dumps([[], {}, {}]),
                "application/json",
                task_headers("proj.no_such_task", ids["unknown"]),
                "utf-8",
            )
            good_task(2)
            body = pickle.dumps(((str(ran_file), MakeDirectoryWhenUnpickled(str(unpickled_dir))), {}, {}))
            raw(body, "application/x-python-serialize", task_headers("proj.touch", ids["pickle"]), "binary")
            good_task(3)
            raw(json.dumps([[1, 2], {}, {}]), "application/json", task_headers("proj.add", None), "utf-8")
            good_task(4)
            raw(
                json.dumps([[1], [2], {}]),
                "application/json",
                task_headers("proj.add", ids["kwargs"]),
                "utf-8",
            )
            good_task(5)
        assert redis_client.llen(queue) == 12

        with running_worker(tmp_path, "-A", "proj", "worker", "-l", "info", "-c", "2") as worker:
            assert [r.get(timeout=20) for r in good] == [i + 1000 for i in range(6)]
            last = client.send_task("proj.add", (1, 1))
            assert last.get(timeout=20) == 2
            assert worker.alive()
            log = worker.output
        assert worker.proc.returncode == 0, log

        assert "Cannot decode message body" in log
        assert "body must be [args, kwargs, embed], got 2" in log
        assert "Received unregistered task of type 'proj.no_such_task'" in log
        assert "Refused message with content type 'application/x-python-serialize'" in log
        assert "message for proj.add has no task id" in log
        assert "task keyword arguments must be a mapping" in log
        assert "Traceback" not in log

        assert not ran_file.exists(), "a pickle message was executed"
        assert not unpickled_dir.exists(), "a pickle message was unpickled"
        assert redis_client.llen(queue) == 0  # dropped, not put back to loop forever

        raw_meta = redis_client.get(f"celery-task-meta-{ids['unknown']}")
        assert raw_meta is not None
        meta = json.loads(raw_meta)
        assert meta["status"] == "FAILURE"
        assert meta["result"] == {
            "exc_type": "NotRegistered",
            "exc_message": ["proj.no_such_task"],
            "exc_module": "celery.exceptions",
        }
        assert meta["task_id"] == ids["unknown"]
    finally:
        client.close()
