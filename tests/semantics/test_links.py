"""Link callbacks and errbacks: ``link=add.s(10)`` gets the result first; ``link_error`` with
Celery's ``(request, exc, traceback)`` signature is called inline, an old-style one is sent."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from .conftest import Env
from .helpers import Boom, wait_until


def test_link_gets_the_result_and_the_workflow_ids(env: Env) -> None:
    seen: list[dict[str, Any]] = []

    @env.app.task
    def add(x: int, y: int) -> int:
        return x + y

    @env.app.task(bind=True)
    def collect(self: Any, value: int, tag: str = "") -> None:
        r = self.request
        seen.append({"args": list(r.args), "tag": tag, "parent": r.parent_id, "root": r.root_id})

    with env.worker():
        result = add.apply_async((2, 3), link=[collect.s(tag="partial"), collect.si(99)])
        assert result.get(timeout=10) == 5
        wait_until(lambda: len(seen) == 2, what="both callbacks")
    by_args = sorted(seen, key=lambda s: s["args"])
    # collect.s() is partial: the result comes first; collect.si(99) is immutable.
    assert by_args == [
        {"args": [5], "tag": "partial", "parent": result.id, "root": result.id},
        {"args": [99], "tag": "", "parent": result.id, "root": result.id},
    ]


def test_link_chains_a_task_with_its_own_arguments(env: Env) -> None:
    @env.app.task
    def add(x: int, y: int) -> int:
        return x + y

    results: list[int] = []

    @env.app.task
    def keep(value: int) -> None:
        results.append(value)

    with env.worker():
        add.apply_async((1, 1), link=add.s(10).set(link=keep.s()))
        wait_until(lambda: results, what="the second link")
    assert results == [12]  # add(2, 10) got the first result, and passed its own on


def test_link_error_with_request_exc_traceback_runs_inline(env: Env) -> None:
    calls: list[dict[str, Any]] = []
    thread_of_task: list[int] = []
    successes: list[Any] = []

    @env.app.task
    def fail(x: int) -> None:
        thread_of_task.append(threading.get_ident())
        raise Boom("linked", x)

    @env.app.task
    def on_error(request: Any, exc: BaseException, traceback: str) -> None:
        calls.append(
            {"id": request.id, "args": list(request.args), "exc": exc, "tb": traceback,
             "thread": threading.get_ident()}
        )  # fmt: skip

    @env.app.task
    def on_success(value: Any) -> None:
        successes.append(value)

    with env.worker():
        result = fail.apply_async((3,), link=on_success.s(), link_error=on_error.s())
        with pytest.raises(Boom):
            result.get(timeout=10)
        wait_until(lambda: calls, what="the errback")
    [call] = calls
    assert call["id"] == result.id and call["args"] == [3]
    assert type(call["exc"]) is Boom and call["exc"].args == ("linked", 3)
    assert "Boom" in call["tb"]
    assert call["thread"] == thread_of_task[0]  # inline, in the failing task's thread
    assert successes == []  # link runs on success only


def test_old_style_errback_gets_the_task_id(env: Env) -> None:
    got: list[str] = []

    @env.app.task
    def fail() -> None:
        raise Boom("old style")

    @env.app.task
    def on_error(task_id: str) -> None:
        got.append(task_id)

    errback = on_error.s()
    sig = fail.s()
    sig.link_error(errback)
    with env.worker():
        result = sig.delay()
        with pytest.raises(Boom):
            result.get(timeout=10)
        wait_until(lambda: got, what="the errback task")
    assert got == [result.id]


def test_link_of_a_retried_task_runs_once(env: Env) -> None:
    results: list[int] = []

    @env.app.task(bind=True)
    def flaky(self: Any) -> int:
        if self.request.retries < 2:
            raise self.retry(countdown=0.02)
        return 7

    @env.app.task
    def keep(value: int) -> None:
        results.append(value)

    with env.worker():
        assert flaky.apply_async(link=keep.s()).get(timeout=10) == 7
        wait_until(lambda: results, what="the callback")
        if not env.eager:
            import time

            time.sleep(0.2)
    assert results == [7]
