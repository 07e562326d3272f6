"""``-P asyncio``: ``async def`` tasks run as coroutines on one event loop; sync tasks in threads.

The loop runs in a thread of its own ("taskq-asyncio") so the consumer keeps its broker
connection to itself. ``-c`` counts slots, not threads: a slot held by a coroutine costs a few
KiB, so ``-c 200`` is cheap. A sync task would block every coroutine on the loop, so it runs in
a thread executor instead, under the same soft limit as ``-P threads``.

Time limits on a coroutine are delivered the asyncio way: the task is cancelled, and the
coroutine sees ``asyncio.CancelledError`` at the ``await`` it is blocked in. Unlike a thread, a
coroutine can be stopped for a hard limit or a terminate, as long as it awaits.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taskq.exceptions import SoftTimeLimitExceeded, Terminated, TimeLimitExceeded
from taskq.worker.pools import Job, SoftLimits, run_job

if TYPE_CHECKING:
    from taskq.worker.execute import Outcome

logger = logging.getLogger("taskq.worker")

#: seconds a coroutine cancelled for a hard limit, a terminate or a cold stop gets to unwind
#: (its ``except``/``finally`` blocks) before the pool reports it and gives its slot away
CANCEL_GRACE = 1.0
#: the most threads sync tasks get: they are the exception in this pool, and each one that runs
#: holds a thread; more sync jobs than this wait in the executor (their soft limit starts when they do)
MAX_SYNC_THREADS = 32
#: bound on waits that should be short: the loop starting, the loop thread ending
LOOP_WAIT = 5.0

# Why a coroutine was cancelled, weakest first: a stronger reason replaces a weaker one.
_SOFT, _HARD, _TERMINATE, _SHUTDOWN = 1, 2, 3, 4


@dataclass(eq=False)
class _Running:
    """A coroutine job on the loop; touched only from the loop thread."""

    job: Job
    task: asyncio.Task[Outcome] | None = None
    reason: int = 0  # why it was cancelled, 0 if it was not
    failure: BaseException | None = None  # what to report for a hard limit or a terminate
    reported: bool = False
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


def is_coroutine_task(job: Job) -> bool:
    """Whether the job's ``run`` is ``async def`` (also bound, ``functools.wraps``-ed or a method).

    A sync ``run`` that merely returns a coroutine cannot be told apart without calling it: it
    runs in the executor, where ``execute`` runs the coroutine on a loop of that thread's own.
    """
    return inspect.iscoroutinefunction(job.task.run) or bool(getattr(job.task, "_is_async", False))


class AsyncioPool:
    """``limit`` concurrent jobs: coroutines on one event loop, sync tasks in a thread executor."""

    def __init__(self, concurrency: int, sync_threads: int | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.limit = concurrency
        self.sync_threads = sync_threads or min(concurrency, MAX_SYNC_THREADS)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running = 0
        self._coroutine_jobs: set[Job] = set()  # submitted coroutine jobs not yet reported
        self._on_loop: dict[Job, _Running] = {}  # loop thread only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._limits = SoftLimits()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(_log_loop_error)
        started = threading.Event()
        self._loop = loop
        self._executor = ThreadPoolExecutor(self.sync_threads, thread_name_prefix="taskq-worker")
        self._thread = threading.Thread(
            target=self._run_loop, args=(started,), name="taskq-asyncio", daemon=True
        )
        self._thread.start()
        if not started.wait(LOOP_WAIT):
            raise RuntimeError(f"the asyncio pool's event loop did not start within {LOOP_WAIT} s")

    def _run_loop(self, started: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        try:
            loop.run_forever()
        finally:
            try:
                # Coroutines left running after their slot was given back (past a hard limit,
                # a terminate or a cold stop) get one more cancellation and a bounded wait.
                leftover = asyncio.all_tasks(loop)
                for task in leftover:
                    task.cancel()
                if leftover:
                    loop.run_until_complete(asyncio.wait(leftover, timeout=CANCEL_GRACE))
                loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), CANCEL_GRACE))
            except Exception as exc:  # a coroutine or generator that will not close: nothing left to do
                logger.warning("asyncio pool: closing the event loop: %r", exc)
            loop.close()

    def stop(self, graceful: bool = True) -> None:
        """Warm: wait for every running job. Cold: cancel the coroutines and report none of them.

        A cold stop must not turn a shutdown into FAILURE results: a coroutine cancelled for it
        stores nothing, and its message is redelivered (``acks_late``) or was acked at start, as
        with the other pools. One that swallows the cancellation and finishes is still reported.
        """
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if graceful:  # as long as the jobs take, as with -P threads (a hard limit bounds a coroutine)
            with self._idle:
                # A dead loop thread (a bug) would never report its coroutines: do not wait for them.
                while self._running > 0 and (thread.is_alive() or not self._coroutine_jobs):
                    self._idle.wait(1.0)
        else:
            self._call_on_loop(self._cancel_all)
            deadline = time.monotonic() + CANCEL_GRACE + 0.5  # past the grace timers of _cancel
            with self._idle:
                while self._coroutine_jobs and time.monotonic() < deadline:
                    self._idle.wait(max(deadline - time.monotonic(), 0.0))
        if self._executor is not None:
            self._executor.shutdown(wait=graceful, cancel_futures=True)
        self._call_on_loop(loop.stop)
        thread.join(LOOP_WAIT)
        if thread.is_alive():
            logger.error("asyncio pool: the event loop thread did not stop within %s s", LOOP_WAIT)
        self._limits.close()

    # -- running ----------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Take a slot and hand the job over; called from the consumer's thread."""
        loop, executor = self._loop, self._executor
        assert loop is not None and executor is not None, "pool not started"
        coroutine = is_coroutine_task(job)
        with self._lock:
            self._running += 1
            if coroutine:
                self._coroutine_jobs.add(job)
        if coroutine:
            loop.call_soon_threadsafe(self._start_coroutine, job)
        else:
            executor.submit(self._run_sync, job)

    def _run_sync(self, job: Job) -> None:
        # Watched only once it starts: a job waiting for an executor thread must not use up its limit.
        try:
            self._limits.watch(job)
            outcome = run_job(job, self._limits)
        except BaseException as exc:  # run_job never raises; a bug here must still free the slot
            logger.critical("internal error running %s", job.task.name, exc_info=exc)
            outcome = exc
        self._release(job)
        _call_done(job, outcome)

    def _start_coroutine(self, job: Job) -> None:
        loop = self._loop
        assert loop is not None
        entry = _Running(job)
        self._on_loop[job] = entry
        try:
            from taskq.worker.execute import execute_async

            job.started_at = time.monotonic()
            entry.task = loop.create_task(execute_async(job.task, job.context))
            entry.task.add_done_callback(lambda _: self._coroutine_ended(entry))
            if job.soft_limit:
                entry.timers.append(loop.call_later(job.soft_limit, self._soft_limit, entry))
            if job.hard_limit:
                entry.timers.append(loop.call_later(job.hard_limit, self._hard_limit, entry))
        except Exception as exc:
            logger.critical("internal error starting %s", job.task.name, exc_info=exc)
            if entry.task is not None:
                entry.task.cancel()
            self._report(entry, exc)

    def _coroutine_ended(self, entry: _Running) -> None:
        """Done callback of the asyncio task: decide what to report, once."""
        task = entry.task
        assert task is not None
        outcome: Outcome | BaseException | None
        try:
            if entry.reason in (_HARD, _TERMINATE):
                outcome = entry.failure  # whatever the coroutine did after it was cancelled
            elif not task.cancelled():
                exc = task.exception()
                if exc is not None:  # execute_async records task errors itself: a bug in taskq
                    logger.critical("internal error running %s", entry.job.task.name, exc_info=exc)
                outcome = exc if exc is not None else task.result()
            elif entry.reason == _SOFT:
                outcome = self._soft_failure(entry)
            else:  # cancelled by a cold stop: the worker is going away, not the task failing
                outcome = None
        except Exception as exc:
            logger.critical("internal error ending %s", entry.job.task.name, exc_info=exc)
            outcome = exc
        self._report(entry, outcome)

    def _soft_failure(self, entry: _Running) -> Outcome | BaseException:
        from taskq.worker.execute import fail

        job = entry.job
        # No arguments, as billiard raises it in a prefork child: the stored result is Celery's.
        return fail(job.task, job.context, SoftTimeLimitExceeded())

    def _report(self, entry: _Running, outcome: Outcome | BaseException | None) -> None:
        """Free the slot and call ``done`` (unless ``outcome`` is None); never twice, never raises."""
        if entry.reported:
            return
        entry.reported = True
        for timer in entry.timers:
            timer.cancel()
        self._on_loop.pop(entry.job, None)
        self._release(entry.job)
        if outcome is not None:
            _call_done(entry.job, outcome)

    def _release(self, job: Job) -> None:
        with self._idle:
            self._running -= 1
            self._coroutine_jobs.discard(job)
            self._idle.notify_all()

    # -- limits and cancellation (loop thread) ----------------------------------------------
    def _cancel(self, entry: _Running, reason: int, failure: BaseException | None = None) -> None:
        if entry.reported or entry.task is None:
            return
        if reason <= entry.reason:
            return  # already cancelled for as strong a reason
        if failure is not None and entry.failure is None:
            entry.failure = failure  # hard limit or terminate: the first one is what is reported
        entry.reason = reason
        entry.task.cancel()
        if reason >= _HARD and self._loop is not None:  # reported when it unwinds, or after the grace
            entry.timers.append(self._loop.call_later(CANCEL_GRACE, self._gave_up, entry))

    def _gave_up(self, entry: _Running) -> None:
        if entry.reported:
            return
        logger.error(
            "%s[%s] still running %s s after it was cancelled (it catches CancelledError?); its slot "
            "is freed, the coroutine is left to finish on its own",
            entry.job.task.name, entry.job.context.id, CANCEL_GRACE,
        )  # fmt: skip
        self._report(entry, entry.failure if entry.reason != _SHUTDOWN else None)

    def _soft_limit(self, entry: _Running) -> None:
        job = entry.job
        logger.warning(
            "Soft time limit (%ss) exceeded for %s[%s]", job.soft_limit, job.task.name, job.context.id
        )
        self._cancel(entry, _SOFT)

    def _hard_limit(self, entry: _Running) -> None:
        job = entry.job
        logger.error(
            "Hard time limit (%ss) exceeded for %s[%s]", job.hard_limit, job.task.name, job.context.id
        )
        self._cancel(entry, _HARD, TimeLimitExceeded(job.hard_limit))

    def _terminate(self, job: Job, signum: int) -> None:
        entry = self._on_loop.get(job)
        if entry is not None:
            self._cancel(entry, _TERMINATE, Terminated(signum))

    def _cancel_all(self) -> None:
        for entry in list(self._on_loop.values()):
            self._cancel(entry, _SHUTDOWN)

    def terminate(self, job: Job, signum: int) -> bool:
        """Cancel a coroutine (``Terminated`` reported); raise ``Terminated`` in a sync job's thread."""
        with self._lock:
            coroutine = job in self._coroutine_jobs
        if not coroutine:
            job.terminated = signum
            return self._limits.raise_in(job, Terminated)
        job.terminated = signum
        return self._call_on_loop(self._terminate, job, signum)

    def _call_on_loop(self, fn: Callable[..., object], *args: Any) -> bool:
        """Run ``fn`` on the loop soon; False once the loop is gone (a second ``stop``, say)."""
        if self._loop is None:
            return False
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # closed
            return False
        return True

    # -- size -------------------------------------------------------------------------------
    @property
    def free_slots(self) -> int:
        return self.limit - self._running

    @property
    def running(self) -> int:
        return self._running

    def grow(self, n: int = 1) -> None:
        """More coroutine slots (sync tasks keep the executor's fixed thread count)."""
        if n < 1:
            raise ValueError("grow by at least 1")
        with self._lock:
            self.limit += n

    def shrink(self, n: int = 1) -> None:
        """Fewer slots; jobs already running over the new limit finish normally."""
        with self._lock:
            if n < 1 or n >= self.limit:
                raise ValueError(f"cannot shrink a pool of {self.limit} by {n}")
            self.limit -= n


def _call_done(job: Job, outcome: Outcome | BaseException) -> None:
    try:
        job.done(outcome)
    except Exception:
        logger.exception(
            "asyncio pool: reporting the outcome of %s[%s] failed", job.task.name, job.context.id
        )


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """An error nothing else caught on the loop: log it, keep the loop (and every other job) going."""
    exc = context.get("exception")
    logger.error("asyncio pool: %s", context.get("message", "unhandled error"), exc_info=exc)
