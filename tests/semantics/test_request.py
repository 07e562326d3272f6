"""``self.request``: what a running task knows about its own call, eagerly and in a worker."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import taskq
from taskq.task import Context

from .conftest import Env
from .helpers import wait_until


def snapshot(request: Context) -> dict[str, Any]:
    fields = (
        "id", "task", "args", "kwargs", "retries", "is_eager", "eta", "expires", "hostname",
        "delivery_info", "root_id", "parent_id", "group", "correlation_id", "headers", "reply_to",
        "called_directly", "timelimit", "origin",
    )  # fmt: skip
    out = {name: getattr(request, name, None) for name in fields}
    out["tenant"] = getattr(request, "tenant", "<no attribute>")
    return out


def test_request_fields(env: Env) -> None:
    seen: list[dict[str, Any]] = []

    @env.app.task(bind=True)
    def probe(self: Any, x: int, y: int = 0) -> int:
        seen.append(snapshot(self.request))
        return x + y

    sent = datetime.now(timezone.utc)
    with env.worker():
        result = probe.apply_async((1,), {"y": 2}, headers={"tenant": "acme"}, expires=60, countdown=0.1)
        assert result.get(timeout=10) == 3
    [r] = seen
    assert r["id"] == result.id
    assert r["task"] == probe.name
    assert list(r["args"]) == [1] and r["kwargs"] == {"y": 2}
    assert r["retries"] == 0
    assert r["is_eager"] is env.eager
    assert r["called_directly"] is False
    assert r["root_id"] == result.id and r["parent_id"] is None and r["group"] is None
    # Custom headers: only the caller's own ones in request.headers, and each as an attribute.
    assert r["headers"] == {"tenant": "acme"}
    assert r["tenant"] == "acme"
    assert isinstance(r["hostname"], str) and r["hostname"]  # Celery's eager run: gethostname()
    if env.eager:
        assert r["delivery_info"]["is_eager"] is True
        assert r["eta"] is None and r["expires"] is None  # an eager run does not wait or expire
    else:
        assert r["hostname"] == env.running.worker.hostname  # type: ignore[union-attr]
        assert r["delivery_info"]["routing_key"] == env.queue
        assert r["delivery_info"]["redelivered"] is False
        assert r["correlation_id"] == result.id
        assert r["reply_to"]
        assert r["origin"].startswith("gen")
        assert tuple(r["timelimit"]) == (None, None)
        eta = datetime.fromisoformat(r["eta"])
        expires = datetime.fromisoformat(r["expires"])
        assert timedelta(0) < eta - sent < timedelta(seconds=5)
        assert timedelta(seconds=55) < expires - sent < timedelta(seconds=65)


def test_time_limits_from_the_call_and_the_task(env: Env) -> None:
    seen: list[Any] = []

    @env.app.task(bind=True, time_limit=60, soft_time_limit=50)
    def limited(self: Any) -> None:
        seen.append(tuple(self.request.timelimit or (None, None)))

    with env.worker():
        limited.delay().get(timeout=10)  # the task's own limits (Celery sends them in the message)
        if not env.eager:  # eager: Celery takes them from the task only
            limited.apply_async(time_limit=30, soft_time_limit=20).get(timeout=10)
    assert seen[0] == (60, 50)
    if not env.eager:
        assert seen[1] == (30, 20)


def test_plain_call_is_called_directly(env: Env) -> None:
    @env.app.task(bind=True)
    def probe(self: Any) -> dict[str, Any]:
        return snapshot(self.request)

    r = probe()
    assert r["called_directly"] is True
    assert r["id"] is None and r["is_eager"] is False and r["retries"] == 0


def test_current_task(env: Env) -> None:
    seen: list[Any] = []

    @env.app.task(bind=True)
    def who(self: Any) -> None:
        current = taskq.current_task()
        seen.append((current, current.request.id if current else None, self.request.id))

    assert taskq.current_task() is None
    with env.worker():
        result = who.delay()
        result.get(timeout=10)
    assert seen == [(who, result.id, result.id)]
    assert taskq.current_task() is None


def test_a_task_calling_a_task_sets_parent_and_root(env: Env) -> None:
    seen: dict[str, dict[str, Any]] = {}

    @env.app.task(bind=True)
    def leaf(self: Any) -> None:
        seen["leaf"] = {"id": self.request.id, "root": self.request.root_id, "parent": self.request.parent_id}

    @env.app.task(bind=True)
    def middle(self: Any) -> None:
        seen["middle"] = {
            "id": self.request.id,
            "root": self.request.root_id,
            "parent": self.request.parent_id,
        }
        leaf.delay()

    @env.app.task(bind=True)
    def top(self: Any) -> None:
        seen["top"] = {"id": self.request.id, "root": self.request.root_id, "parent": self.request.parent_id}
        middle.delay()

    with env.worker():
        result = top.delay()
        result.get(timeout=10)
        wait_until(lambda: "leaf" in seen, what="the leaf task")
    top_id, middle_id = seen["top"]["id"], seen["middle"]["id"]
    assert top_id == result.id
    assert seen["top"] == {"id": top_id, "root": top_id, "parent": None}
    assert seen["middle"]["root"] == top_id and seen["middle"]["parent"] == top_id
    assert seen["leaf"]["root"] == top_id and seen["leaf"]["parent"] == middle_id
