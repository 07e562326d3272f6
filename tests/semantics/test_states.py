"""States and the result API: PENDING, STARTED, SUCCESS, FAILURE, REVOKED, REJECTED, IGNORED,
custom states, exception round trips, ``date_done``, extended results, ``forget``/``wait``.

Eager results are not stored (``task_store_eager_result`` is off, Celery's default), so what a
client reads from the backend is checked in the worker modes, and the ``EagerResult`` itself in
eager mode.
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from taskq import EagerResult, signals, states
from taskq.exceptions import Ignore, Reject, TaskRevokedError

from .conftest import WORKER_MODES, Env
from .helpers import Boom, wait_until


def test_unknown_id_is_pending(env: Env) -> None:
    result = env.app.AsyncResult(str(uuid.uuid4()))
    assert result.state == states.PENDING
    assert result.result is None
    assert not result.ready()


def test_success(env: Env) -> None:
    @env.app.task
    def add(x: int, y: int) -> int:
        return x + y

    with env.worker():
        result = add.delay(2, 3)
        assert result.get(timeout=10) == 5
        assert result.wait(timeout=10) == 5
        assert result.state == result.status == states.SUCCESS
        assert result.ready() and result.successful() and not result.failed()
        assert result.result == result.info == 5
        assert result.traceback is None
        if env.eager:
            assert isinstance(result, EagerResult)
            assert result.date_done is None  # as Celery's EagerResult
        else:
            done = result.date_done
            assert isinstance(done, datetime) and done.tzinfo is not None
            assert abs(datetime.now(timezone.utc) - done) < timedelta(seconds=30)


EXCEPTIONS = {
    "ValueError": lambda: ValueError("boom"),
    "KeyError": lambda: KeyError("missing"),
    "Boom": lambda: Boom("custom", 42),
}


@pytest.mark.parametrize("name", list(EXCEPTIONS))
def test_failure_round_trips_the_exception(env: Env, name: str) -> None:
    @env.app.task
    def fail(which: str) -> None:
        raise EXCEPTIONS[which]()

    expected = EXCEPTIONS[name]()
    with env.worker():
        result = fail.delay(name)
        with pytest.raises(type(expected)) as caught:
            result.get(timeout=10)
        assert type(caught.value) is type(expected)
        assert caught.value.args == expected.args
        returned = result.get(timeout=10, propagate=False)
        assert type(returned) is type(expected) and returned.args == expected.args
        assert result.state == states.FAILURE and result.failed() and result.ready()
        assert type(result.result) is type(expected)
        assert f"{type(expected).__name__}" in (result.traceback or "")
        assert "raise EXCEPTIONS[which]()" in (result.traceback or "")
        if not env.eager:
            assert isinstance(result.date_done, datetime)


def test_started_state_with_track_started(env: Env) -> None:
    env.app.conf.task_track_started = True
    seen: list[tuple[str, Any]] = []

    @env.app.task(bind=True)
    def look(self: Any) -> str:
        mine = env.app.AsyncResult(self.request.id)
        seen.append((mine.state, mine.info))
        return "ok"

    @env.app.task(bind=True, track_started=False)  # the task option wins over the setting
    def untracked(self: Any) -> str:
        seen.append((env.app.AsyncResult(self.request.id).state, None))
        return "ok"

    with env.worker():
        assert look.delay().get(timeout=10) == "ok"
        assert untracked.delay().get(timeout=10) == "ok"
    if env.eager:  # Celery tracks STARTED only in a worker
        assert [s[0] for s in seen] == [states.PENDING, states.PENDING]
    else:
        assert seen[0][0] == states.STARTED
        assert set(seen[0][1]) == {"pid", "hostname"}
        assert seen[0][1]["hostname"] == env.running.worker.hostname  # type: ignore[union-attr]
        assert seen[1][0] == states.PENDING


def test_custom_state_with_progress_meta_is_readable_while_running(env: Env) -> None:
    step = [threading.Event(), threading.Event()]

    @env.app.task(bind=True)
    def upload(self: Any, total: int) -> str:
        for i in range(total):
            self.update_state(state="PROGRESS", meta={"current": i + 1, "total": total})
            assert step[i].wait(10), "the test did not look"
        return "uploaded"

    task_id = str(uuid.uuid4())
    eager_results: list[Any] = []
    with env.worker():
        if env.eager:  # an eager call blocks its caller: make it from another thread
            caller = threading.Thread(
                target=lambda: eager_results.append(upload.apply_async((2,), task_id=task_id))
            )
            caller.start()
        else:
            upload.apply_async((2,), task_id=task_id)
        watched = env.app.AsyncResult(task_id)
        for i in range(2):
            wait_until(lambda i=i: watched.state == "PROGRESS" and watched.info["current"] == i + 1)
            assert watched.info == {"current": i + 1, "total": 2}
            assert watched.result == watched.info
            assert not watched.ready()
            step[i].set()
        if env.eager:
            caller.join(10)
            assert eager_results[0].get() == "uploaded"
        else:
            assert watched.get(timeout=10) == "uploaded"
            assert watched.state == states.SUCCESS


@pytest.mark.parametrize("mode", WORKER_MODES)
def test_expired_task_is_revoked_and_not_run(env: Env, connect: Any) -> None:
    runs: list[int] = []
    revoked: list[dict[str, Any]] = []

    @env.app.task
    def late() -> None:
        runs.append(1)

    connect(signals.task_revoked, lambda **kw: revoked.append(kw), sender=late)
    with env.worker():
        # Received at once, due in 0.3 s, expired after 0.1 s: discarded when due.
        result = late.apply_async(countdown=0.3, expires=0.1)
        with pytest.raises(TaskRevokedError):
            result.get(timeout=10)
        assert result.state == states.REVOKED
        assert isinstance(result.result, TaskRevokedError)
    assert runs == []
    assert len(revoked) == 1
    assert revoked[0]["sender"] is late
    assert revoked[0]["expired"] is True and revoked[0]["terminated"] is False
    assert revoked[0]["request"].id == result.id


def test_expires_is_ignored_by_an_eager_run() -> None:
    from taskq import Celery

    app = Celery("eager-expires", broker="memory://", backend="memory://", set_as_current=False)
    app.conf.task_always_eager = True

    @app.task
    def late() -> str:
        return "ran"

    assert late.apply_async(expires=datetime.now(timezone.utc) - timedelta(seconds=5)).get() == "ran"


def test_reject_without_requeue_fails_the_task(env: Env, connect: Any) -> None:
    runs: list[int] = []
    failures: list[Any] = []

    @env.app.task(acks_late=True)
    def refuse() -> None:
        runs.append(1)
        raise Reject("bad input", requeue=False)

    connect(signals.task_failure, lambda exception, **kw: failures.append(exception), sender=refuse)
    with env.worker():
        result = refuse.delay()
        if env.eager:  # an eager Reject ends the run as REJECTED; nothing is stored
            assert result.state == states.REJECTED
            assert isinstance(result.result, Reject)
            result.get()  # does not raise: REJECTED is not a propagating state
        else:  # Celery 5.7: a rejected, not requeued task is a FAILURE (not PENDING forever)
            with pytest.raises(Reject) as caught:
                result.get(timeout=10)
            assert caught.value.args == ("bad input", False)
            assert result.state == states.FAILURE
            wait_until(lambda: failures, what="task_failure")  # sent after the FAILURE is stored
            assert [type(f) for f in failures] == [Reject]
    if not env.eager:
        env.stop_worker()
        assert env.queue_size() == 0  # dropped, not back in the queue
    assert runs == [1]


def test_reject_with_requeue_runs_again(env: Env) -> None:
    runs: list[int] = []

    @env.app.task(bind=True, acks_late=True)  # requeue needs the message unacked: acks_late
    def second_time(self: Any) -> int:
        runs.append(1)
        if len(runs) == 1:
            raise Reject("not yet", requeue=True)
        return len(runs)

    with env.worker():
        result = second_time.delay()
        if env.eager:  # no message to requeue: the run ends REJECTED
            assert result.state == states.REJECTED
            assert runs == [1]
        else:
            assert result.get(timeout=10) == 2
            assert runs == [1, 1]


def test_ignore_stores_nothing_and_acks(env: Env) -> None:
    runs: list[int] = []

    @env.app.task(acks_late=True)
    def skip() -> None:
        runs.append(1)
        raise Ignore()

    with env.worker():
        result = skip.delay()
        wait_until(lambda: runs, what="the run")
        if env.eager:
            assert result.state == states.IGNORED
    if not env.eager:
        env.stop_worker()
        assert env.app.AsyncResult(result.id).state == states.PENDING  # nothing stored
        assert env.queue_size() == 0  # acked, although acks_late: not redelivered
    assert runs == [1]


def test_forget(env: Env) -> None:
    @env.app.task
    def add(x: int, y: int) -> int:
        return x + y

    with env.worker():
        result = add.delay(1, 1)
        assert result.get(timeout=10) == 2
        result.forget()
        if not env.eager:
            assert env.app.AsyncResult(result.id).state == states.PENDING
            assert result.state == states.PENDING


def test_extended_result_fields(env: Env) -> None:
    env.app.conf.result_extended = True

    @env.app.task
    def add(x: int, y: int, z: int = 0) -> int:
        return x + y + z

    with env.worker():
        result = add.delay(2, 3, z=1)
        assert result.get(timeout=10) == 6
        assert result.name == add.name  # Celery's EagerResult knows its name too
        if not env.eager:
            fresh = env.app.AsyncResult(result.id)
            assert fresh.name == add.name
            assert fresh.args == [2, 3]
            assert fresh.kwargs == {"z": 1}
            assert fresh.worker == env.running.worker.hostname  # type: ignore[union-attr]
            assert fresh.queue == env.queue
            assert fresh.retries == 0


def test_get_inside_a_task(env: Env) -> None:
    @env.app.task
    def add(x: int, y: int) -> int:
        return x + y

    @env.app.task
    def blocking() -> int:
        return add.delay(1, 2).get(timeout=5)

    @env.app.task
    def allowed() -> int:
        return add.delay(1, 2).get(timeout=5, disable_sync_subtasks=False)

    with env.worker():
        if env.eager:  # an EagerResult is already there: nothing can block
            assert blocking.delay().get(timeout=10) == 3
        else:
            with pytest.raises(RuntimeError, match=r"Never call result\.get\(\)"):
                blocking.delay().get(timeout=10)
        assert allowed.delay().get(timeout=10) == 3
