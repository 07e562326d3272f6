"""The prefork pool: tasks run in child processes managed by billiard (Celery's own pool library).

Children are forked from the worker after the app is loaded, so they run tasks by name without
importing anything; each job sends only the task name and its request context down the pipe, and
gets back a picklable ``Outcome`` (the result itself is stored by the child). billiard replaces a
child that dies, recycles children after ``max_tasks_per_child`` tasks or past
``max_memory_per_child`` KiB, delivers soft limits as ``SoftTimeLimitExceeded`` inside the child
(SIGUSR1) and enforces hard limits by killing it. Its threads call our callbacks; they only hand
the outcome to ``job.done``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from billiard.common import pickle_loads
from billiard.einfo import ExceptionInfo as BilliardExceptionInfo
from billiard.einfo import ExceptionWithTraceback
from billiard.pool import Pool as BilliardPool
from billiard.pool import Worker as BilliardWorker

from taskq import signals
from taskq.exceptions import Terminated, TimeLimitExceeded, WorkerLostError
from taskq.worker.pools import Job

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.task import Context
    from taskq.worker.execute import Outcome

logger = logging.getLogger("taskq.worker")

# The app a child runs tasks of: set in the child by _child_init, from the parent's memory (fork).
_app: App | None = None
# The parent's connection objects, kept referenced in the child and never used or closed there:
# closing them would speak on sockets the parent still uses; collecting them could close them.
_inherited: list[Any] = []


def _child_init(app: App, hostname: str) -> None:
    """First thing in a new child: own connections, and Celery's ``worker_process_init``."""
    global _app
    _app = app
    _inherited.extend(x for x in (app._broker, app._backend) if x is not None)
    app._broker = None
    app._backend = None
    signals.worker_process_init.send(sender=None)
    logger.debug("pool child %d of %s ready", os.getpid(), hostname)


def _child_exit(pid: int, exitcode: int) -> None:
    signals.worker_process_shutdown.send(sender=None, pid=pid, exitcode=exitcode)


def run_in_child(name: str, context: Context) -> Outcome:
    """The job a child runs: the task ``name`` under ``context``; returns a picklable outcome."""
    from taskq.worker.execute import execute

    assert _app is not None, "run_in_child outside a pool child"
    return execute(_app.tasks[name], context).portable()


class _Worker(BilliardWorker):
    """A child that holds the shared job pipe's lock only while it reads a job that is there.

    billiard's idle children wait for the next job inside that lock, so one of them holds it at
    all times: a kill -9 of an idle child (the OOM killer, an operator, a race with a task that
    just ended) left it held and every other child waiting forever, the worker alive but
    running nothing. Here a child waits for the pipe to be readable without the lock, then
    takes it, checks that the job is still there and reads it: the lock is held for one read.
    """

    def _make_recv_method(self, conn: Any) -> Callable[[float], tuple[bool, Any]]:
        reader, lock = getattr(conn, "_reader", None), getattr(conn, "_rlock", None)
        if reader is None or lock is None:
            return super()._make_recv_method(conn)

        def recv(timeout: float) -> tuple[bool, Any]:
            if not reader.poll(timeout) or not lock.acquire(timeout=timeout):
                return False, None
            try:
                if not reader.poll(0):  # another child read it first
                    return False, None
                return True, pickle_loads(reader.recv_bytes())
            finally:
                lock.release()

        return recv


class _DirectJobs:
    """billiard's task queue, with jobs written to the children's pipe by the submitting thread.

    billiard queues each job for its task-handler thread, which pickles it and writes it to
    the pipe: a lock, a condition and a thread wake-up per task, in a worker whose main
    process is its busiest. Only the consumer's thread submits jobs (and retires children),
    so it can write them itself; the ``None`` that ends the handler at close still goes to
    the handler, which then sends the children their own ``None``. A job is only submitted
    for a free slot, so its write finds an idle child reading; one larger than the pipe's
    buffer holds the consumer until that child has read it (or, after a lost child, until
    billiard's supervisor has started its replacement, within a second).
    """

    def __init__(self, pool: BilliardPool) -> None:
        self._handler_queue = pool._taskqueue
        self._put = pool._quick_put
        self._cache = pool._cache

    def put(self, item: Any) -> None:
        if item is None:
            self._handler_queue.put(None)
            return
        tasks, set_length = item
        count = 0
        for task in tasks:
            count += 1
            try:
                self._put(task)
            except Exception:  # unpicklable, or the pipe is gone: that job fails, as in billiard
                if task is None:
                    raise
                job, index = task[1][:2]
                result = self._cache.pop(job, None)
                if result is not None:
                    result._set(index, (False, BilliardExceptionInfo()))
        if set_length:  # billiard's map_async learns its length this way
            set_length(count)


class _BilliardPool(BilliardPool):
    """billiard's pool with a shrink that lets idle children leave on their own.

    billiard retires a child with SIGTERM. Idle children share one job pipe and wait on it
    under a lock, and a signal landing just after the lock is taken kills the child holding
    it: every other child then waits forever and the worker runs nothing again. Instead, put
    one ``None`` per child to retire on the pipe: the idle child that reads it exits cleanly
    (code 0), holding nothing.
    """

    def shrink(self, n: int = 1) -> None:
        if sum(1 for _ in self._iterinactive()) < n:
            raise ValueError("cannot shrink the pool: its children are busy")
        for _ in range(n):
            self._processes -= 1
            if self._putlock:
                self._putlock.shrink()
            self._taskqueue.put(([None], None))  # jobs queued before it run first
            self.on_shrink(1)

    Worker = _Worker


class PreforkPool:
    """``concurrency`` child processes; Celery's default pool (``-P prefork``)."""

    def __init__(
        self,
        app: App,
        concurrency: int,
        *,
        hostname: str = "",
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        lost_worker_wait: float | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.app = app
        self.limit = concurrency
        self.hostname = hostname
        self.max_tasks_per_child = max_tasks_per_child or None
        self.max_memory_per_child = max_memory_per_child or None
        self.lost_worker_wait = lost_worker_wait
        self._pool: BilliardPool | None = None
        self._running = 0
        self._lock = threading.Lock()
        #: how to settle each job not reported yet (a cold stop settles them itself)
        self._unfinished: dict[int, Callable[[BaseException], None]] = {}
        #: set when the worker stops: losses after this are the shutdown's doing, not failures
        self.stopping = False

    def start(self) -> None:
        self._pool = _BilliardPool(
            processes=self.limit,
            initializer=_child_init,
            initargs=(self.app, self.hostname),
            maxtasksperchild=self.max_tasks_per_child,
            max_memory_per_child=self.max_memory_per_child,
            lost_worker_timeout=self.lost_worker_wait,
            on_process_exit=_child_exit,
            enable_timeouts=True,  # per-job soft/hard limits need billiard's timeout thread
            threads=True,
        )
        self._pool._taskqueue = _DirectJobs(self._pool)

    def submit(self, job: Job) -> None:
        assert self._pool is not None, "pool not started"
        with self._lock:
            self._running += 1
        once = threading.Lock()

        def finish(outcome: Outcome | BaseException) -> None:
            if not once.acquire(blocking=False):
                return  # billiard may report a job twice (hard limit, then the lost child)
            with self._lock:
                self._running -= 1
                self._unfinished.pop(id(job), None)
            job.done(outcome)

        with self._lock:
            self._unfinished[id(job)] = finish

        def on_error(einfo: Any) -> None:
            exc = einfo.exception if isinstance(einfo, BilliardExceptionInfo) else einfo
            if isinstance(exc, ExceptionWithTraceback):  # billiard's wrapper keeps the traceback text
                exc = exc.exc
            if isinstance(exc, Terminated) and job.terminated is None:
                job.terminated = abs(exc.args[0]) if exc.args and isinstance(exc.args[0], int) else 15
            if not isinstance(exc, (TimeLimitExceeded, WorkerLostError, Terminated)):
                exc = WorkerLostError(f"pool child failed: {exc!r}")
            finish(exc)

        def on_accepted(pid: int, time_accepted: float) -> None:
            job.pid = pid
            job.started_at = time_accepted

        def on_timeout(soft: bool, timeout: float) -> None:
            if soft:
                logger.warning(
                    "Soft time limit (%ss) exceeded for %s[%s]", timeout, job.task.name, job.context.id
                )
            else:
                logger.error(
                    "Hard time limit (%ss) exceeded for %s[%s]", timeout, job.task.name, job.context.id
                )

        self._pool.apply_async(
            run_in_child,
            (job.task.name, job.context),
            callback=finish,
            error_callback=on_error,
            accept_callback=on_accepted,
            timeout_callback=on_timeout,
            soft_timeout=job.soft_limit,
            timeout=job.hard_limit,
            correlation_id=job.context.id,
        )

    @property
    def free_slots(self) -> int:
        return self.limit - self._running

    @property
    def running(self) -> int:
        return self._running

    def terminate(self, job: Job, signum: int) -> bool:
        if self._pool is None or job.pid is None:
            return False
        job.terminated = signum
        self._pool.terminate_job(job.pid, signum)
        return True

    def grow(self, n: int = 1) -> None:
        assert self._pool is not None
        self._pool.grow(n)
        self.limit += n

    def shrink(self, n: int = 1) -> None:
        """Retire ``n`` idle children; ValueError when every child is busy."""
        assert self._pool is not None
        if n >= self.limit:
            raise ValueError(f"cannot shrink a pool of {self.limit} by {n}")
        self._pool.shrink(n)
        self.limit -= n

    def child_pids(self) -> list[int]:
        return [p.pid for p in self._pool._pool] if self._pool is not None else []

    def stop(self, graceful: bool = True) -> None:
        """Warm: let running tasks finish, then end the children. Cold: kill them now."""
        self.stopping = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if graceful:
            pool.close()
            pool.join()
            return
        # billiard's terminate waits for the result of every job still running, and one whose
        # child it kills only gets one after lost_worker_wait (then up to 5 s more, or never):
        # a stop cut short would take seconds. Settle those jobs here instead.
        with self._lock:
            unfinished = list(self._unfinished.values())
        pool._cache.clear()
        pool.terminate()
        for finish in unfinished:
            finish(WorkerLostError("the worker stopped while the task ran"))
