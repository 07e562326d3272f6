"""Execution pools: where a task runs, and how its outcome gets back to the consumer.

A pool never touches the broker. It runs a ``Job`` and calls ``job.done`` with the outcome
from whatever thread it likes; the consumer's ``done`` only queues it, so acks stay on the
thread that owns the connection. An outcome is an ``Outcome``, or one of the exceptions a task
cannot raise itself: ``TimeLimitExceeded`` (hard limit), ``WorkerLostError`` (the process died),
``Terminated`` (revoked with ``terminate=True``); the consumer records those.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from taskq.exceptions import SoftTimeLimitExceeded, Terminated

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.task import Context, Task
    from taskq.worker.execute import Outcome

logger = logging.getLogger("taskq.worker")


@dataclass(eq=False)
class Job:
    """One task run handed to a pool."""

    task: Task[Any, Any]
    context: Context
    done: Callable[[Outcome | BaseException], None]
    soft_limit: float | None = None
    hard_limit: float | None = None
    #: where it runs once started: the child's pid (prefork) or the thread's id (threads, solo)
    pid: int | None = None
    thread_id: int | None = None
    started_at: float | None = None
    #: the signal it was terminated with, when it was
    terminated: int | None = field(default=None)


class Pool(Protocol):
    """What the consumer needs from a pool."""

    #: how many jobs it runs at once (changes with grow/shrink)
    limit: int

    def start(self) -> None: ...

    def submit(self, job: Job) -> None: ...

    @property
    def free_slots(self) -> int: ...

    def terminate(self, job: Job, signum: int) -> bool:
        """Stop a running job; False when this pool cannot."""
        ...

    def grow(self, n: int = 1) -> None: ...

    def shrink(self, n: int = 1) -> None: ...

    def stop(self, graceful: bool = True) -> None: ...


def _raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Make ``exc_type`` raise in another thread at its next bytecode (None cancels a pending one).

    The only way CPython offers to interrupt a thread; a thread blocked in a C call (a socket
    read, ``time.sleep``) sees it when that call returns.
    """
    arg = ctypes.py_object(exc_type) if exc_type is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), arg)


class SoftLimits:
    """Raises ``SoftTimeLimitExceeded`` in the thread of a job that runs past its soft limit.

    One timer thread for the pool, sleeping until the nearest deadline. Hard limits cannot be
    enforced on a thread (it cannot be killed): they are logged when passed, never enforced.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Job, bool]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def watch(self, job: Job) -> None:
        if not job.soft_limit and not job.hard_limit:
            return
        with self._cond:
            now = time.monotonic()
            if job.soft_limit:
                heapq.heappush(self._heap, (now + job.soft_limit, next(self._seq), job, True))
            if job.hard_limit:
                heapq.heappush(self._heap, (now + job.hard_limit, next(self._seq), job, False))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="taskq-time-limits", daemon=True)
                self._thread.start()
            self._cond.notify()

    def running(self, job: Job) -> None:
        """Mark the calling thread as running ``job`` (limits only fire while it is)."""
        with self._cond:
            job.thread_id = threading.get_ident()

    def finished(self, job: Job) -> None:
        with self._cond:
            if job.thread_id is not None:
                _raise_in_thread(job.thread_id, None)  # a limit that fired as the task ended
            job.thread_id = None

    def raise_in(self, job: Job, exc_type: type[BaseException]) -> bool:
        with self._cond:
            if job.thread_id is None:
                return False
            _raise_in_thread(job.thread_id, exc_type)
            return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, _, job, soft = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
                if job.thread_id is None:
                    continue
                if soft:
                    logger.warning(
                        "Soft time limit (%ss) exceeded for %s[%s]",
                        job.soft_limit,
                        job.task.name,
                        job.context.id,
                    )
                    _raise_in_thread(job.thread_id, SoftTimeLimitExceeded)
                else:
                    logger.error(
                        "Hard time limit (%ss) exceeded for %s[%s]: a thread cannot be killed, so it "
                        "runs on (use -P prefork to enforce hard limits)",
                        job.hard_limit, job.task.name, job.context.id,
                    )  # fmt: skip


def run_job(job: Job, limits: SoftLimits) -> Outcome | BaseException:
    """Run a job in the calling thread, under its soft limit; never raises."""
    from taskq.worker.execute import execute

    job.started_at = time.monotonic()
    limits.running(job)
    try:
        return execute(job.task, job.context)
    except Terminated as exc:  # raised by terminate() outside the task's own try
        return exc
    except SoftTimeLimitExceeded as exc:  # fired after the task returned: the run is over anyway
        return exc
    except Exception as exc:  # execute() catches task errors; this is a bug in taskq
        logger.critical("internal error running %s", job.task.name, exc_info=exc)
        return exc
    finally:
        limits.finished(job)


class SoloPool:
    """Runs each job inline in the consumer's thread: simplest, one task at a time."""

    def __init__(self, concurrency: int = 1) -> None:
        self.limit = 1
        self._limits = SoftLimits()

    def start(self) -> None:
        pass

    def submit(self, job: Job) -> None:
        self._limits.watch(job)
        job.done(run_job(job, self._limits))

    @property
    def free_slots(self) -> int:
        return 1

    def terminate(self, job: Job, signum: int) -> bool:
        return False  # the job runs in the thread that would be asked to terminate it

    def grow(self, n: int = 1) -> None:
        raise ValueError("the solo pool has one slot: it cannot grow")

    def shrink(self, n: int = 1) -> None:
        raise ValueError("the solo pool has one slot: it cannot shrink")

    def stop(self, graceful: bool = True) -> None:
        self._limits.close()


class ThreadPool:
    """A fixed number of threads; good for I/O-bound tasks, shares the worker's memory."""

    def __init__(self, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.limit = concurrency
        self._executor: ThreadPoolExecutor | None = None
        self._running = 0
        self._lock = threading.Lock()
        self._limits = SoftLimits()

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(self.limit, thread_name_prefix="taskq-worker")

    def submit(self, job: Job) -> None:
        assert self._executor is not None, "pool not started"
        with self._lock:
            self._running += 1
        self._limits.watch(job)
        self._executor.submit(self._run, job)

    def _run(self, job: Job) -> None:
        outcome = run_job(job, self._limits)
        with self._lock:
            self._running -= 1
        job.done(outcome)

    @property
    def free_slots(self) -> int:
        return self.limit - self._running

    @property
    def running(self) -> int:
        return self._running

    def terminate(self, job: Job, signum: int) -> bool:
        """Raise ``Terminated`` in the job's thread: best effort, at its next bytecode."""
        job.terminated = signum
        return self._limits.raise_in(job, Terminated)

    def grow(self, n: int = 1) -> None:
        raise ValueError("the threads pool has a fixed size (autoscaling needs -P prefork)")

    def shrink(self, n: int = 1) -> None:
        raise ValueError("the threads pool has a fixed size (autoscaling needs -P prefork)")

    def stop(self, graceful: bool = True) -> None:
        """Wait for running jobs (warm) or only for the ones already started (cold)."""
        if self._executor is not None:
            self._executor.shutdown(wait=graceful, cancel_futures=True)
        self._limits.close()


POOL_NAMES = ("prefork", "processes", "threads", "solo", "asyncio", "gevent", "eventlet")


def create_pool(name: str, concurrency: int, app: App | None = None, **options: Any) -> Pool:
    """The pool called ``name`` (Celery's names; ``processes`` is ``prefork``)."""
    if name in ("prefork", "processes"):
        from taskq.worker.prefork import PreforkPool

        assert app is not None, "the prefork pool needs the app (its children import nothing)"
        return PreforkPool(app, concurrency, **options)
    if name == "asyncio":
        from taskq.worker.asyncio_pool import AsyncioPool

        return AsyncioPool(concurrency)
    if name in ("gevent", "eventlet"):
        from taskq.worker.green import GreenPool

        return GreenPool(name, concurrency)
    if name == "threads":
        return ThreadPool(concurrency)
    if name == "solo":
        return SoloPool(concurrency)
    raise ValueError(f"unknown pool {name!r}: choose one of {', '.join(POOL_NAMES)}")


def default_concurrency() -> int:
    return os.cpu_count() or 1
