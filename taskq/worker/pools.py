"""Execution pools: where ``execute`` runs, and how its outcome gets back to the consumer.

A pool never touches the broker. It runs a job and hands the outcome to a callback; the
consumer's callback only queues it, so acks stay on the thread that owns the connection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

logger = logging.getLogger("taskq.worker")

Job = Callable[[], Any]
Done = Callable[[Any], None]


class Pool(Protocol):
    """What the consumer needs from a pool."""

    limit: int

    def start(self) -> None: ...

    def apply_async(self, job: Job, callback: Done) -> None: ...

    @property
    def free_slots(self) -> int: ...

    def stop(self, graceful: bool = True) -> None: ...


class SoloPool:
    """Runs each job inline in the consumer's thread: simplest, one task at a time."""

    limit = 1

    def __init__(self, concurrency: int = 1) -> None:
        self.limit = 1

    def start(self) -> None:
        pass

    def apply_async(self, job: Job, callback: Done) -> None:
        callback(job())

    @property
    def free_slots(self) -> int:
        return 1

    def stop(self, graceful: bool = True) -> None:
        pass


class ThreadPool:
    """A fixed number of threads; good for I/O-bound tasks, shares the worker's memory."""

    def __init__(self, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.limit = concurrency
        self._executor: ThreadPoolExecutor | None = None
        self._running = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(self.limit, thread_name_prefix="taskq-worker")

    def apply_async(self, job: Job, callback: Done) -> None:
        assert self._executor is not None, "pool not started"
        with self._lock:
            self._running += 1

        def done(future: Future[Any]) -> None:
            with self._lock:
                self._running -= 1
            exc = future.exception()
            if exc is not None:  # execute() catches task errors; this is a bug in taskq
                logger.critical("internal error in pool job", exc_info=exc)
                callback(exc)
            else:
                callback(future.result())

        self._executor.submit(job).add_done_callback(done)

    @property
    def free_slots(self) -> int:
        return self.limit - self._running

    @property
    def running(self) -> int:
        return self._running

    def stop(self, graceful: bool = True) -> None:
        """Wait for running jobs (warm) or only for the ones already started (cold)."""
        if self._executor is not None:
            self._executor.shutdown(wait=graceful, cancel_futures=True)


POOLS: dict[str, type[Any]] = {"solo": SoloPool, "threads": ThreadPool}


def create_pool(name: str, concurrency: int) -> Pool:
    try:
        cls = POOLS[name]
    except KeyError:
        known = ", ".join(sorted(POOLS))
        raise ValueError(f"unknown pool {name!r}: this taskq version has {known}") from None
    pool: Pool = cls(concurrency)
    return pool
