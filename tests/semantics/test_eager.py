"""Eager mode: ``task_always_eager``, ``task_eager_propagates``, ``task_store_eager_result`` and
``task.apply()``, which runs a task here the way a worker would (retries at once, signals,
request context, link callbacks) whatever the app's mode."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskq import Celery, EagerResult, signals, states

from .conftest import Env
from .helpers import Boom, Flaky


@pytest.fixture
def eager_app() -> Iterator[Celery]:
    # The broker is unreachable: an eager app must never need it.
    app = Celery("eager", broker="redis://127.0.0.1:1/0", backend="memory://", set_as_current=False)
    app.conf.task_always_eager = True
    yield app
    app.close()


def test_always_eager_runs_in_the_caller(eager_app: Celery) -> None:
    @eager_app.task(bind=True)
    def where(self: Any) -> bool:
        return bool(self.request.is_eager)

    result = where.delay()
    assert isinstance(result, EagerResult)
    assert result.get() is True and result.state == states.SUCCESS


def test_eager_failure_is_kept_in_the_result_unless_propagating(eager_app: Celery) -> None:
    @eager_app.task
    def fail() -> None:
        raise Boom("eager")

    result = fail.delay()  # task_eager_propagates is off: the call itself does not raise
    assert result.state == states.FAILURE
    with pytest.raises(Boom):
        result.get()
    eager_app.conf.task_eager_propagates = True
    with pytest.raises(Boom, match="eager"):
        fail.delay()


def test_eager_retry_does_not_wait(eager_app: Celery) -> None:
    attempts: list[int] = []

    @eager_app.task(bind=True)  # default_retry_delay is 180 s
    def slow_retry(self: Any) -> int:
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(exc=Flaky("again"))
        return len(attempts)

    started = time.monotonic()
    assert slow_retry.delay().get() == 3
    assert time.monotonic() - started < 2
    assert attempts == [0, 1, 2]


def test_store_eager_result(eager_app: Celery) -> None:
    eager_app.conf.task_store_eager_result = True

    @eager_app.task
    def add(x: int, y: int) -> int:
        return x + y

    @eager_app.task
    def fail() -> None:
        raise Boom("stored")

    ok, bad = add.delay(1, 2), fail.delay()
    assert eager_app.AsyncResult(ok.id).get(timeout=5) == 3
    with pytest.raises(Boom):
        eager_app.AsyncResult(bad.id).get(timeout=5)
    assert eager_app.AsyncResult(bad.id).state == states.FAILURE


def test_apply_runs_here_like_a_worker(env: Env, connect: Any) -> None:
    """``apply()`` is eager in every mode: request context, retries, signals, callbacks."""
    seen: list[dict[str, Any]] = []
    events: list[str] = []
    callbacks: list[Any] = []

    @env.app.task(bind=True, max_retries=3)
    def flaky(self: Any, x: int) -> int:
        seen.append({"id": self.request.id, "retries": self.request.retries, "eager": self.request.is_eager})
        if self.request.retries < 1:
            raise self.retry(exc=Flaky("once"), countdown=60)
        return x + 1

    @env.app.task
    def collect(value: int) -> None:
        callbacks.append(value)

    for signal in (signals.task_prerun, signals.task_retry, signals.task_success, signals.task_postrun):
        connect(signal, lambda signal, **kw: events.append(signal.name), sender=flaky)
    with env.worker():  # a callback of a non-eager app is sent: a worker runs it
        result = flaky.apply((1,), task_id="apply-1", link=collect.s())
        assert isinstance(result, EagerResult)
        assert result.get() == 2 and result.state == states.SUCCESS and result.id == "apply-1"
        if not env.eager:
            deadline = time.monotonic() + 10
            while not callbacks and time.monotonic() < deadline:
                time.sleep(0.01)
    assert seen == [{"id": "apply-1", "retries": n, "eager": True} for n in (0, 1)]
    assert events == [
        "task_prerun",
        "task_retry",
        "task_postrun",
        "task_prerun",
        "task_success",
        "task_postrun",
    ]
    assert callbacks == [2]
    if not env.eager:  # apply() stores nothing
        assert env.app.AsyncResult("apply-1").state == states.PENDING


def test_apply_throw(env: Env) -> None:
    @env.app.task
    def fail() -> None:
        raise Boom("thrown")

    with pytest.raises(Boom):
        fail.apply(throw=True)
    env.app.conf.task_eager_propagates = True
    assert fail.apply(throw=False).state == states.FAILURE  # throw= wins over the setting
    with pytest.raises(Boom):
        fail.apply()
