"""``-P asyncio`` driven directly: coroutines on the loop, sync tasks in threads, limits, stops."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from taskq import Celery, states
from taskq.backend.memory import MemoryBackend
from taskq.exceptions import SoftTimeLimitExceeded, Terminated, TimeLimitExceeded
from taskq.task import Context
from taskq.worker import asyncio_pool
from taskq.worker.asyncio_pool import AsyncioPool
from taskq.worker.execute import Outcome
from taskq.worker.pools import Job, create_pool

WAIT = 10.0  # bound on every wait for an outcome


@pytest.fixture
def app() -> Iterator[Celery]:
    MemoryBackend.clear()
    app = Celery("aio", broker="memory://", backend="memory://", set_as_current=False)

    @app.task(name="aio.nap")
    async def nap(seconds: float, value: Any = None) -> Any:
        await asyncio.sleep(seconds)
        return value

    @app.task(name="aio.where")
    async def where() -> str:
        return threading.current_thread().name

    @app.task(name="aio.where_bound", bind=True)
    async def where_bound(self: Any) -> str:
        await asyncio.sleep(0)
        return f"{threading.current_thread().name} {self.request.id}"

    @app.task(name="aio.sync_where")
    def sync_where() -> str:
        return threading.current_thread().name

    @app.task(name="aio.sync_spin")
    def sync_spin(seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return "finished"

    @app.task(name="aio.cleans_up")
    async def cleans_up() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "cleaned up"
        return "slept"

    @app.task(name="aio.stubborn")
    async def stubborn(cleanup: float) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(cleanup)  # a clean-up longer than the pool's grace
        return "finished late"

    yield app
    app.close()


class Collector:
    """Outcomes reported by ``done``, with how many times each job reported."""

    def __init__(self) -> None:
        self.outcomes: queue.SimpleQueue[tuple[Job, Any]] = queue.SimpleQueue()
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def job(
        self, app: Celery, name: str, *args: Any, soft: float | None = None, hard: float | None = None
    ) -> Job:
        context = Context(id=uuid.uuid4().hex, task=name, args=args, kwargs={}, called_directly=False)
        job = Job(app.tasks[name], context, lambda outcome: None, soft_limit=soft, hard_limit=hard)

        def done(outcome: Any) -> None:
            with self.lock:
                self.calls[context.id or ""] = self.calls.get(context.id or "", 0) + 1
            self.outcomes.put((job, outcome))

        job.done = done
        return job

    def next(self, timeout: float = WAIT) -> tuple[Job, Any]:
        return self.outcomes.get(timeout=timeout)


@pytest.fixture
def pool() -> Iterator[AsyncioPool]:
    pool = AsyncioPool(4)
    pool.start()
    yield pool
    pool.stop(graceful=False)


def state_of(app: Celery, job: Job) -> str:
    return app.AsyncResult(job.context.id or "").state


def test_create_pool_names_it() -> None:
    assert isinstance(create_pool("asyncio", 3), AsyncioPool)


def test_200_sleeping_coroutines_run_at_once(app: Celery) -> None:
    pool = AsyncioPool(200)
    pool.start()
    collector = Collector()
    jobs = [collector.job(app, "aio.nap", 0.1, i) for i in range(200)]
    try:
        started = time.monotonic()
        for job in jobs:
            pool.submit(job)
        results = [collector.next() for _ in jobs]
        elapsed = time.monotonic() - started
    finally:
        pool.stop()
    print(f"\n200 x asyncio.sleep(0.1) with limit 200: {elapsed:.3f} s")
    assert elapsed < 1.5  # the liveness bound (well under 2 s); sequential would be 20 s
    assert sorted(outcome.retval for _, outcome in results) == list(range(200))
    assert all(state_of(app, job) == states.SUCCESS for job in jobs)
    assert pool.free_slots == 200


def test_coroutines_run_on_the_loop_and_sync_tasks_in_threads(app: Celery, pool: AsyncioPool) -> None:
    collector = Collector()
    coroutine, bound, sync = (
        collector.job(app, n) for n in ("aio.where", "aio.where_bound", "aio.sync_where")
    )
    for job in (coroutine, bound, sync):
        pool.submit(job)
    results = {job.task.name: outcome for job, outcome in (collector.next() for _ in range(3))}
    assert results["aio.where"].retval == "taskq-asyncio"
    assert results["aio.where_bound"].retval == f"taskq-asyncio {bound.context.id}"
    assert results["aio.sync_where"].retval.startswith("taskq-worker")
    assert app.AsyncResult(sync.context.id or "").get(timeout=WAIT).startswith("taskq-worker")


def test_a_sync_task_does_not_block_the_coroutines(app: Celery, pool: AsyncioPool) -> None:
    collector = Collector()
    pool.submit(collector.job(app, "aio.sync_spin", 1.0))
    pool.submit(collector.job(app, "aio.nap", 0.05, "quick"))
    job, outcome = collector.next()
    assert job.task.name == "aio.nap" and outcome.retval == "quick"
    assert collector.next()[1].retval == "finished"


def test_soft_limit_cancels_the_coroutine_and_stores_soft_time_limit_exceeded(
    app: Celery, pool: AsyncioPool, caplog: pytest.LogCaptureFixture
) -> None:
    collector = Collector()
    job = collector.job(app, "aio.nap", 30, soft=0.2)
    pool.submit(job)
    _, outcome = collector.next()
    assert isinstance(outcome, Outcome) and outcome.state == states.FAILURE
    assert isinstance(outcome.exc, SoftTimeLimitExceeded)
    result = app.AsyncResult(job.context.id or "")
    assert result.state == states.FAILURE
    assert type(result.result).__name__ == "SoftTimeLimitExceeded"
    assert result.result.args == ()  # as billiard raises it in a prefork child (Celery's stored result)
    assert f"Soft time limit (0.2s) exceeded for aio.nap[{job.context.id}]" in caplog.text
    assert pool.free_slots == pool.limit


def test_a_coroutine_catching_the_cancellation_keeps_its_own_outcome(app: Celery, pool: AsyncioPool) -> None:
    collector = Collector()
    job = collector.job(app, "aio.cleans_up", soft=0.1)
    pool.submit(job)
    _, outcome = collector.next()
    assert outcome.state == states.SUCCESS and outcome.retval == "cleaned up"
    assert app.AsyncResult(job.context.id or "").get(timeout=WAIT) == "cleaned up"


def test_soft_limit_of_a_sync_task_is_raised_in_its_thread(app: Celery, pool: AsyncioPool) -> None:
    collector = Collector()
    job = collector.job(app, "aio.sync_spin", 30, soft=0.2)
    pool.submit(job)
    _, outcome = collector.next()
    assert outcome.state == states.FAILURE and isinstance(outcome.exc, SoftTimeLimitExceeded)


def test_hard_limit_reports_time_limit_exceeded(
    app: Celery, pool: AsyncioPool, caplog: pytest.LogCaptureFixture
) -> None:
    collector = Collector()
    job = collector.job(app, "aio.nap", 30, hard=0.2)
    pool.submit(job)
    _, outcome = collector.next()
    assert isinstance(outcome, TimeLimitExceeded) and outcome.args == (0.2,)
    assert "Hard time limit (0.2s) exceeded for aio.nap" in caplog.text
    assert pool.free_slots == pool.limit


def test_hard_limit_on_a_coroutine_that_will_not_stop_reports_once(
    app: Celery, pool: AsyncioPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(asyncio_pool, "CANCEL_GRACE", 0.2)
    collector = Collector()
    job = collector.job(app, "aio.stubborn", 0.6, hard=0.1)
    pool.submit(job)
    _, outcome = collector.next()
    assert isinstance(outcome, TimeLimitExceeded)
    assert pool.free_slots == pool.limit  # its slot is given back even though it runs on
    with pytest.raises(queue.Empty):  # it finishes meanwhile: that is not reported again
        collector.next(timeout=1.0)
    assert collector.calls == {job.context.id: 1}


def test_terminate_cancels_the_coroutine(app: Celery, pool: AsyncioPool) -> None:
    collector = Collector()
    job = collector.job(app, "aio.nap", 30)
    pool.submit(job)
    assert pool.terminate(job, 15) is True
    _, outcome = collector.next()
    assert isinstance(outcome, Terminated) and outcome.args == (15,)
    assert job.terminated == 15
    assert state_of(app, job) != states.SUCCESS


def test_terminate_of_a_sync_task_raises_terminated_in_its_thread(app: Celery, pool: AsyncioPool) -> None:
    collector = Collector()
    job = collector.job(app, "aio.sync_spin", 30)
    pool.submit(job)
    deadline = time.monotonic() + WAIT
    while job.thread_id is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.terminate(job, 9) is True
    _, outcome = collector.next()
    assert isinstance(outcome, Terminated) or isinstance(getattr(outcome, "exc", None), Terminated)


def test_warm_stop_waits_for_running_jobs(app: Celery) -> None:
    pool = AsyncioPool(10)
    pool.start()
    collector = Collector()
    jobs = [collector.job(app, "aio.nap", 0.3, i) for i in range(5)] + [
        collector.job(app, "aio.sync_spin", 0.3)
    ]
    for job in jobs:
        pool.submit(job)
    pool.stop(graceful=True)
    assert collector.outcomes.qsize() == len(jobs)
    assert all(state_of(app, job) == states.SUCCESS for job in jobs)


def test_cold_stop_cancels_coroutines_and_reports_nothing(app: Celery) -> None:
    pool = AsyncioPool(10)
    pool.start()
    collector = Collector()
    jobs = [collector.job(app, "aio.nap", 30) for _ in range(5)]
    for job in jobs:
        pool.submit(job)
    time.sleep(0.1)
    started = time.monotonic()
    pool.stop(graceful=False)
    assert time.monotonic() - started < asyncio_pool.CANCEL_GRACE + asyncio_pool.LOOP_WAIT
    assert collector.outcomes.empty()
    assert all(state_of(app, job) not in (states.FAILURE, states.SUCCESS) for job in jobs)


def test_a_cold_stop_cuts_a_warm_stop_short(app: Celery) -> None:
    """What a second Ctrl-C during a warm stop needs from the pool: stop(False) ends the wait."""
    pool = AsyncioPool(4)
    pool.start()
    collector = Collector()
    pool.submit(collector.job(app, "aio.nap", 30))
    warm = threading.Thread(target=pool.stop, kwargs={"graceful": True})
    warm.start()
    time.sleep(0.2)
    assert warm.is_alive()  # waiting for the 30 s nap
    pool.stop(graceful=False)
    warm.join(WAIT)
    assert not warm.is_alive()
    assert collector.outcomes.empty()


def test_an_internal_error_is_reported_and_the_loop_goes_on(
    app: Celery, pool: AsyncioPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskq.worker import execute

    real = execute.execute_async
    calls = iter([True])

    async def broken_once(task: Any, context: Context, **kw: Any) -> Outcome:
        if next(calls, False):
            raise RuntimeError("bug in taskq")
        return await real(task, context, **kw)

    monkeypatch.setattr(execute, "execute_async", broken_once)
    collector = Collector()
    pool.submit(collector.job(app, "aio.nap", 0, "first"))
    _, outcome = collector.next()
    assert isinstance(outcome, RuntimeError)
    pool.submit(collector.job(app, "aio.nap", 0, "second"))
    assert collector.next()[1].retval == "second"
    assert pool.free_slots == pool.limit


def test_a_done_callback_that_raises_does_not_stop_the_pool(app: Celery, pool: AsyncioPool) -> None:
    collector = Collector()
    broken = collector.job(app, "aio.nap", 0, "x")
    broken.done = lambda outcome: 1 / 0
    pool.submit(broken)
    pool.submit(collector.job(app, "aio.nap", 0, "after"))
    assert collector.next()[1].retval == "after"
    assert pool.free_slots == pool.limit


def test_stop_twice_and_terminate_after_stop_are_harmless(app: Celery) -> None:
    pool = AsyncioPool(2)
    pool.start()
    job = Collector().job(app, "aio.nap", 0)
    pool.stop()
    pool.stop(graceful=False)
    assert pool.terminate(job, 15) is False


def test_grow_and_shrink_change_the_slots(pool: AsyncioPool) -> None:
    pool.grow(6)
    assert pool.limit == pool.free_slots == 10
    pool.shrink(9)
    assert pool.limit == 1
    with pytest.raises(ValueError):
        pool.shrink(1)
