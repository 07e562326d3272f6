"""Retrying: ``self.retry(...)``, ``max_retries``, ``default_retry_delay`` and ``autoretry_for``.

The same task gives the same final value, number of attempts and final state eagerly and
through a worker. What only a worker has is checked in the worker modes: the RETRY state stored
between attempts, and the delay before the next attempt (an eager retry runs again at once).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from taskq import signals, states
from taskq.exceptions import MaxRetriesExceededError, Retry

from .conftest import Env
from .helpers import Fatal, Flaky, wait_until


def test_retry_until_success_keeps_id_and_stores_retry_state(env: Env) -> None:
    attempts: list[tuple[str, int, list[Any]]] = []
    seen_between: list[tuple[str, Any, str | None]] = []

    @env.app.task(bind=True, max_retries=5)
    def flaky(self: Any, x: int) -> int:
        attempts.append((self.request.id, self.request.retries, list(self.request.args)))
        if self.request.retries:
            # What a client sees between two attempts: the previous attempt's RETRY.
            previous = env.app.AsyncResult(self.request.id)
            seen_between.append((previous.state, previous.result, previous.traceback))
        if self.request.retries < 2:
            raise self.retry(exc=Flaky(f"attempt {self.request.retries}"), countdown=0.05)
        return x * 2

    with env.worker():
        result = flaky.delay(21)
        assert result.get(timeout=10) == 42
        assert result.state == states.SUCCESS
    assert [a[1] for a in attempts] == [0, 1, 2]
    assert {a[0] for a in attempts} == {result.id}
    assert [a[2] for a in attempts] == [[21]] * 3
    if env.eager:  # an eager run stores nothing (task_store_eager_result is off)
        assert [s[0] for s in seen_between] == [states.PENDING] * 2
    else:
        assert [s[0] for s in seen_between] == [states.RETRY] * 2
        for n, (_, exc, traceback) in enumerate(seen_between):
            assert type(exc) is Flaky and exc.args == (f"attempt {n}",)
            assert traceback and "Retry" in traceback


def test_retried_message_carries_retries_and_same_root_and_parent(env: Env) -> None:
    seen: list[dict[str, Any]] = []
    done: list[str] = []

    @env.app.task(bind=True, max_retries=3)
    def child(self: Any) -> str:
        r = self.request
        seen.append({"id": r.id, "root": r.root_id, "parent": r.parent_id, "retries": r.retries})
        if r.retries < 2:
            raise self.retry(countdown=0.05)
        done.append(r.id)
        return "done"

    @env.app.task(bind=True)
    def parent(self: Any) -> list[str]:
        return [child.delay().id, self.request.id, self.request.root_id]

    with env.worker():
        child_id, parent_id, root_id = parent.delay().get(timeout=10)
        wait_until(lambda: done, what="the child's last attempt")
    assert root_id == parent_id
    assert seen == [{"id": child_id, "root": root_id, "parent": parent_id, "retries": n} for n in range(3)]


@pytest.mark.parametrize("with_exc", [True, False], ids=["exc", "no-exc"])
def test_max_retries_exceeded(env: Env, with_exc: bool) -> None:
    attempts: list[int] = []

    @env.app.task(bind=True, max_retries=2, default_retry_delay=0.05)
    def doomed(self: Any) -> None:
        attempts.append(self.request.retries)
        if with_exc:
            raise self.retry(exc=Flaky("still down"))
        raise self.retry()

    with env.worker():
        result = doomed.delay()
        expected = Flaky if with_exc else MaxRetriesExceededError
        with pytest.raises(expected) as caught:
            result.get(timeout=10)
        assert result.state == states.FAILURE
    assert attempts == [0, 1, 2]  # max_retries=2: the first run and two retries
    if with_exc:
        assert caught.value.args == ("still down",)
    else:
        assert "Can't retry" in str(caught.value)
        assert isinstance(caught.value, doomed.MaxRetriesExceededError)


def test_max_retries_none_retries_forever(env: Env) -> None:
    attempts: list[int] = []

    @env.app.task(bind=True, max_retries=None, default_retry_delay=0.01)
    def patient(self: Any) -> int:
        attempts.append(self.request.retries)
        if self.request.retries < 5:  # beyond the default of 3
            raise self.retry()
        return self.request.retries

    with env.worker():
        assert patient.delay().get(timeout=10) == 5
    assert attempts == [0, 1, 2, 3, 4, 5]


def test_max_retries_given_to_retry_overrides_the_task(env: Env) -> None:
    attempts: list[int] = []

    @env.app.task(bind=True, max_retries=10)
    def short(self: Any) -> None:
        attempts.append(self.request.retries)
        raise self.retry(exc=Flaky("no"), countdown=0.01, max_retries=1)

    with env.worker(), pytest.raises(Flaky):
        short.delay().get(timeout=10)
    assert attempts == [0, 1]


def test_default_retry_delay_and_eta(env: Env) -> None:
    runs: list[tuple[float, Any]] = []

    @env.app.task(bind=True, default_retry_delay=0.3)
    def delayed(self: Any, how: str) -> int:
        runs.append((time.monotonic(), self.request.eta))
        if self.request.retries == 0:
            if how == "default":
                raise self.retry()  # default_retry_delay
            raise self.retry(eta=datetime.now(timezone.utc) + timedelta(seconds=0.3))
        return len(runs)

    with env.worker():
        for how in ("default", "eta"):
            runs.clear()
            assert delayed.delay(how).get(timeout=10) == 2
            gap = runs[1][0] - runs[0][0]
            if env.eager:  # an eager retry runs again at once, ignoring the delay
                assert gap < 0.25 and runs[1][1] is None
            else:
                assert gap >= 0.25, how
                assert isinstance(runs[1][1], str)  # the retried message has an ETA


def test_retry_with_new_arguments(env: Env) -> None:
    calls: list[tuple[list[Any], dict[str, Any]]] = []

    @env.app.task(bind=True)
    def step(self: Any, x: int, y: int = 0) -> int:
        calls.append((list(self.request.args), dict(self.request.kwargs)))
        if self.request.retries == 0:
            raise self.retry(args=(x + 1,), kwargs={"y": 10}, countdown=0.01)
        return x + y

    with env.worker():
        assert step.delay(1).get(timeout=10) == 12
    assert calls == [([1], {}), ([2], {"y": 10})]


def test_retry_without_throw_lets_the_run_finish(env: Env) -> None:
    runs: list[int] = []

    @env.app.task(bind=True)
    def soft(self: Any) -> str:
        runs.append(self.request.retries)
        if self.request.retries == 0:
            signal = self.retry(countdown=0.05, throw=False)
            assert isinstance(signal, Retry)
            return "first"
        return "second"

    with env.worker():
        result = soft.delay()
        # The first run's return value is stored; a later SUCCESS never overwrites it.
        assert result.get(timeout=10) == "first"
        if env.eager:
            assert runs == [0]  # nothing was sent, and the run did not raise Retry
        else:
            wait_until(lambda: runs == [0, 1], what="the retried run")
            time.sleep(0.1)
            assert env.app.AsyncResult(result.id).get(timeout=1) == "first"


def test_retry_called_directly_raises_the_exception(env: Env) -> None:
    @env.app.task(bind=True)
    def direct(self: Any) -> None:
        raise self.retry(exc=Flaky("plain call"))

    with pytest.raises(Flaky):
        direct()


# -- autoretry_for ---------------------------------------------------------------------------


def test_autoretry_for_retries_then_succeeds(env: Env) -> None:
    attempts: list[int] = []

    @env.app.task(bind=True, autoretry_for=(Flaky,), retry_kwargs={"max_retries": 4, "countdown": 0.02})
    def fetch(self: Any) -> int:
        attempts.append(self.request.retries)
        if len(attempts) < 3:
            raise Flaky("temporary")
        return len(attempts)

    with env.worker():
        result = fetch.delay()
        assert result.get(timeout=10) == 3
        assert result.state == states.SUCCESS
    assert attempts == [0, 1, 2]


def test_autoretry_for_gives_up_with_the_original_exception(env: Env) -> None:
    attempts: list[int] = []

    @env.app.task(bind=True, autoretry_for=(Flaky,), retry_kwargs={"max_retries": 2, "countdown": 0.02})
    def never(self: Any) -> None:
        attempts.append(self.request.retries)
        raise Flaky(f"failure {len(attempts)}")

    with env.worker():
        result = never.delay()
        with pytest.raises(Flaky, match="failure 3"):
            result.get(timeout=10)
        assert result.state == states.FAILURE
    assert attempts == [0, 1, 2]


def test_dont_autoretry_for_fails_at_once(env: Env) -> None:
    attempts: list[int] = []

    @env.app.task(
        bind=True,
        autoretry_for=(Flaky,),
        dont_autoretry_for=(Fatal,),
        retry_kwargs={"max_retries": 3, "countdown": 0.02},
    )
    def picky(self: Any, fatal: bool) -> None:
        attempts.append(self.request.retries)
        raise (Fatal if fatal else Flaky)("x")

    with env.worker():
        with pytest.raises(Fatal):
            picky.delay(True).get(timeout=10)
        assert attempts == [0]
        attempts.clear()
        with pytest.raises(Flaky):
            picky.delay(False).get(timeout=10)
        assert attempts == [0, 1, 2, 3]


def test_retry_backoff_waits_before_the_next_attempt(env: Env, connect: Any) -> None:
    countdowns: list[Any] = []
    runs: list[float] = []

    @env.app.task(bind=True, autoretry_for=(Flaky,), retry_backoff=True, retry_jitter=False)
    def backing_off(self: Any) -> int:
        runs.append(time.monotonic())
        if self.request.retries == 0:
            raise Flaky("once")
        return self.request.retries

    connect(signals.task_retry, lambda reason, **kw: countdowns.append(reason.when), sender=backing_off)
    with env.worker():
        assert backing_off.delay().get(timeout=10) == 1
    assert countdowns == [1]  # retry_backoff=True: 1 * 2**0 seconds, no jitter
    if not env.eager:
        assert runs[1] - runs[0] >= 0.9


@pytest.mark.parametrize("mode", ["eager"])
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"retry_backoff": True}, [1, 2, 4, 8, 16]),
        ({"retry_backoff": 3}, [3, 6, 12, 24, 48]),
        ({"retry_backoff": True, "retry_backoff_max": 5}, [1, 2, 4, 5, 5]),
        # Celery's rule: the factor is int(max(1.0, retry_backoff)).
        ({"retry_backoff": 0.5}, [1, 2, 4, 8, 16]),
        ({"retry_backoff": 2.5}, [2, 4, 8, 16, 32]),
    ],
    ids=["true", "factor-3", "max-5", "factor-0.5", "factor-2.5"],
)
def test_retry_backoff_countdowns(
    env: Env, connect: Any, options: dict[str, Any], expected: list[int]
) -> None:
    """The exponential series, computed eagerly (an eager retry does not wait for it)."""
    countdowns: list[Any] = []

    @env.app.task(
        bind=True, autoretry_for=(Flaky,), retry_jitter=False, retry_kwargs={"max_retries": 5}, **options
    )
    def series(self: Any) -> None:
        raise Flaky("always")

    connect(signals.task_retry, lambda reason, **kw: countdowns.append(reason.when), sender=series)
    with pytest.raises(Flaky):
        series.delay().get()
    assert countdowns == expected


@pytest.mark.parametrize("mode", ["eager"])
def test_retry_jitter_stays_within_the_backoff(env: Env, connect: Any) -> None:
    countdowns: list[Any] = []

    @env.app.task(bind=True, autoretry_for=(Flaky,), retry_backoff=True, retry_kwargs={"max_retries": 6})
    def jittery(self: Any) -> None:  # retry_jitter defaults to True
        raise Flaky("always")

    connect(signals.task_retry, lambda reason, **kw: countdowns.append(reason.when), sender=jittery)
    for _ in range(5):
        with pytest.raises(Flaky):
            jittery.delay().get()
    assert len(countdowns) == 30
    for n, countdown in enumerate(countdowns):
        assert 0 <= countdown <= 2 ** (n % 6)
        assert countdown == int(countdown)
