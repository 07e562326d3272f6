"""Task classes: ``base=`` handlers and their arguments, class attributes as defaults,
``app.register_task`` for a ``Task`` subclass, and ``typing`` checks at send time."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from taskq import Task, states
from taskq.exceptions import ExceptionInfo, Retry

from .conftest import Env
from .helpers import Boom, Flaky, wait_until


def recording_base(calls: list[tuple[Any, ...]]) -> type[Task[Any, Any]]:
    class Recording(Task):  # type: ignore[type-arg]
        def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
            calls.append(("before_start", task_id, list(args), dict(kwargs)))

        def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
            calls.append(("on_success", retval, task_id, list(args), dict(kwargs)))

        def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
            calls.append(("on_failure", exc, task_id, list(args), dict(kwargs), einfo))

        def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
            calls.append(("on_retry", exc, task_id, list(args), dict(kwargs), einfo))

        def after_return(
            self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
        ) -> None:
            calls.append(("after_return", status, retval, task_id, list(args), dict(kwargs)))

    return Recording


def names(calls: list[tuple[Any, ...]]) -> list[str]:
    return [c[0] for c in calls]


def test_handlers_on_success(env: Env) -> None:
    calls: list[tuple[Any, ...]] = []

    @env.app.task(base=recording_base(calls))
    def add(x: int, y: int = 0) -> int:
        return x + y

    with env.worker():
        result = add.delay(1, y=2)
        assert result.get(timeout=10) == 3
        wait_until(lambda: "after_return" in names(calls), what="after_return")  # runs after the store
    tid = result.id
    assert calls == [
        ("before_start", tid, [1], {"y": 2}),
        ("on_success", 3, tid, [1], {"y": 2}),
        ("after_return", states.SUCCESS, 3, tid, [1], {"y": 2}),
    ]


def test_handlers_on_failure(env: Env) -> None:
    calls: list[tuple[Any, ...]] = []

    @env.app.task(base=recording_base(calls))
    def fail(x: int) -> None:
        raise Boom("bad", x)

    with env.worker():
        result = fail.delay(7)
        with pytest.raises(Boom):
            result.get(timeout=10)
        wait_until(lambda: "after_return" in names(calls), what="after_return")
    assert names(calls) == ["before_start", "on_failure", "after_return"]
    _, exc, task_id, args, kwargs, einfo = calls[1]
    assert type(exc) is Boom and exc.args == ("bad", 7)
    assert (task_id, args, kwargs) == (result.id, [7], {})
    assert isinstance(einfo, ExceptionInfo)
    assert einfo.exception is exc and einfo.type is Boom
    assert "Boom: ('bad', 7)" in einfo.traceback
    status, retval = calls[2][1], calls[2][2]
    assert status == states.FAILURE and retval is exc


def test_handlers_on_retry(env: Env) -> None:
    calls: list[tuple[Any, ...]] = []

    @env.app.task(bind=True, base=recording_base(calls))
    def again(self: Any, x: int) -> int:
        if self.request.retries == 0:
            raise self.retry(exc=Flaky("first"), countdown=0.01)
        return x

    with env.worker():
        result = again.delay(5)
        assert result.get(timeout=10) == 5
        # The retry is sent before on_retry runs, so on a worker with several threads the second
        # run may begin, and even end, before the first run's on_retry: wait for both, and
        # compare run by run. (The block's exit stops the worker without waiting for its threads.)
        wait_until(
            lambda: {"after_return", "on_retry"} <= set(names(calls)), what="after_return and on_retry"
        )
    # Celery calls after_return for a finished run only: not for RETRY (nor IGNORED, REJECTED).
    seen = names(calls)
    assert sorted(seen) == sorted(["before_start", "on_retry", "before_start", "on_success", "after_return"])
    assert seen[0] == "before_start"
    assert seen.index("on_success") < seen.index("after_return")
    _, exc, task_id, args, kwargs, einfo = calls[seen.index("on_retry")]
    assert type(exc) is Flaky and exc.args == ("first",)  # the exc given to retry()
    assert (task_id, args, kwargs) == (result.id, [5], {})
    assert isinstance(einfo.exception, Retry)


@pytest.mark.parametrize("handler", ["on_success", "after_return", "on_failure"])
def test_a_raising_handler_is_logged_and_does_not_change_the_outcome(
    env: Env, handler: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)

    def broken(self: Any, *args: Any) -> None:
        raise RuntimeError(f"{handler} is broken")

    broken_base = type("Broken", (Task,), {handler: broken})

    @env.app.task(base=broken_base)
    def work(fail: bool) -> str:
        if fail:
            raise Boom("task failed")
        return "fine"

    with env.worker():
        result = work.delay(handler == "on_failure")
        if handler == "on_failure":
            with pytest.raises(Boom, match="task failed"):  # still the task's own exception
                result.get(timeout=10)
            assert result.state == states.FAILURE
        else:
            assert result.get(timeout=10) == "fine"
            assert result.state == states.SUCCESS
        wait_until(
            lambda: any(f"{handler} is broken" in r.getMessage() + str(r.exc_info) for r in caplog.records),
            what="the handler's error in the log",
        )
        if not env.eager:
            assert env.app.AsyncResult(result.id).state == result.state


def test_class_attributes_are_defaults(env: Env) -> None:
    attempts: dict[str, int] = {"base": 0, "override": 0}

    class Patient(Task):  # type: ignore[type-arg]
        autoretry_for = (Flaky,)
        max_retries = 1
        default_retry_delay = 0.01

    @env.app.task(base=Patient)
    def base() -> None:
        attempts["base"] += 1
        raise Flaky("base")

    @env.app.task(base=Patient, max_retries=3)  # a decorator option overrides the class
    def override() -> None:
        attempts["override"] += 1
        raise Flaky("override")

    assert base.max_retries == 1 and override.max_retries == 3
    assert isinstance(base, Patient)
    with env.worker():
        with pytest.raises(Flaky):
            base.delay().get(timeout=10)
        with pytest.raises(Flaky):
            override.delay().get(timeout=10)
    assert attempts == {"base": 2, "override": 4}


def test_ignore_result_as_a_class_attribute(env: Env) -> None:
    runs: list[str] = []

    class Quiet(Task):  # type: ignore[type-arg]
        ignore_result = True

    @env.app.task(bind=True, base=Quiet)
    def fire_and_forget(self: Any) -> str:
        runs.append(self.request.id)
        return "not stored"

    with env.worker():
        result = fire_and_forget.delay()
        wait_until(lambda: runs, what="the run")
    if not env.eager:
        env.stop_worker()
        assert env.app.AsyncResult(result.id).state == states.PENDING


def test_register_task_class(env: Env) -> None:
    seen: list[Any] = []

    class Multiply(Task):  # type: ignore[type-arg]
        name = "semantics.multiply"
        autoretry_for = (Flaky,)
        retry_kwargs = {"countdown": 0.01}

        def run(self, x: int, y: int) -> int:
            seen.append((self.request.id, self.request.retries))
            if self.request.retries == 0:
                raise Flaky("once")
            return x * y

    task = env.app.register_task(Multiply())
    assert env.app.tasks["semantics.multiply"] is task
    with env.worker():
        result = task.delay(3, 4)
        assert result.get(timeout=10) == 12
        if not env.eager:  # send_task always sends, even with task_always_eager (as in Celery)
            assert env.app.send_task("semantics.multiply", (2, 5)).get(timeout=10) == 10
    assert seen[:2] == [(result.id, 0), (result.id, 1)]


def test_typing_checks_arguments_when_sending(env: Env) -> None:
    @env.app.task
    def add(x: int, y: int) -> int:
        return x + y

    @env.app.task(typing=False)
    def loose(x: int, y: int) -> int:
        return x + y

    with env.worker():
        for args, kwargs in [((1,), {}), ((1, 2, 3), {}), ((1, 2), {"z": 3})]:
            with pytest.raises(TypeError):
                add.apply_async(args, kwargs)
        with pytest.raises(TypeError):
            add.delay(1)  # type: ignore[call-arg]
        # typing=False: sent anyway, and the run fails.
        result = loose.delay(1)  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            result.get(timeout=10)
        assert result.state == states.FAILURE
