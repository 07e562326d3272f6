"""AsyncResult.then(): callbacks run once the result is ready, in the thread that waits."""

from __future__ import annotations

from typing import Any

from taskq import Celery
from taskq.result import AsyncResult


def make_app() -> Celery:
    app = Celery("then", broker="memory://", backend="memory://", set_as_current=False)
    app.conf.task_always_eager = False
    return app


def test_then_before_ready_fires_on_get() -> None:
    app = make_app()
    result: AsyncResult[Any] = app.AsyncResult("t-1")
    seen: list[Any] = []
    result.then(lambda r: seen.append(r.result))
    assert seen == []  # PENDING: nothing yet
    app.backend.mark_as_done("t-1", 42)
    assert result.get(timeout=1) == 42
    assert seen == [42]
    result.get(timeout=1)
    assert seen == [42], "a callback runs once"


def test_then_after_ready_fires_at_once() -> None:
    app = make_app()
    app.backend.mark_as_done("t-2", "done")
    seen: list[Any] = []
    app.AsyncResult("t-2").then(lambda r: seen.append(r.state))
    assert seen == ["SUCCESS"]


def test_then_on_error_gets_the_callback_error() -> None:
    app = make_app()
    app.backend.mark_as_done("t-3", 1)
    errors: list[BaseException] = []

    def broken(result: AsyncResult[Any]) -> None:
        raise ValueError("callback failed")

    app.AsyncResult("t-3").then(broken, on_error=errors.append)
    assert [str(e) for e in errors] == ["callback failed"]
