"""``-P gevent`` and ``-P eventlet``: many tasks on green threads, for I/O-bound work.

Green threads only switch at I/O, so the process must be monkey-patched before the broker's
sockets exist: ``taskq/_patch.py`` does that when the ``taskq`` command line asks for one of
these pools, as Celery does. A soft time limit raises ``SoftTimeLimitExceeded`` in the task at
its next switch; a hard limit kills the green thread (a task that never yields cannot be
interrupted by either). ``revoke(terminate=True)`` kills it too.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from taskq.exceptions import SoftTimeLimitExceeded, Terminated, TimeLimitExceeded

if TYPE_CHECKING:
    from taskq.worker.execute import Outcome
    from taskq.worker.pools import Job

logger = logging.getLogger("taskq.worker")


class _Gevent:
    def __init__(self) -> None:
        import gevent
        import gevent.pool

        self.gevent = gevent
        self.group = gevent.pool.Group

    def spawn(self, group: Any, fn: Any, *args: Any) -> Any:
        return group.spawn(fn, *args)

    def timeout(self, seconds: float, exc: BaseException) -> Any:
        return self.gevent.Timeout.start_new(seconds, exc)

    def later(self, seconds: float, fn: Any, *args: Any) -> Any:
        return self.gevent.spawn_later(seconds, fn, *args)

    def cancel_later(self, green: Any) -> None:
        green.kill(block=False)

    def kill(self, green: Any, exc: BaseException) -> None:
        green.kill(exc, block=False)

    def join(self, group: Any, timeout: float | None) -> None:
        group.join(timeout=timeout)


class _Eventlet:
    def __init__(self) -> None:
        import eventlet

        self.eventlet = eventlet
        self.group = lambda: eventlet.GreenPool(1_000_000)

    def spawn(self, group: Any, fn: Any, *args: Any) -> Any:
        return group.spawn(fn, *args)

    def timeout(self, seconds: float, exc: BaseException) -> Any:
        return self.eventlet.Timeout(seconds, exc)  # started when made

    def later(self, seconds: float, fn: Any, *args: Any) -> Any:
        return self.eventlet.spawn_after(seconds, fn, *args)

    def cancel_later(self, green: Any) -> None:
        green.cancel()

    def kill(self, green: Any, exc: BaseException) -> None:
        green.kill(exc)

    def join(self, group: Any, timeout: float | None) -> None:
        with self.eventlet.Timeout(timeout, False):
            group.waitall()


LIBRARIES = {"gevent": _Gevent, "eventlet": _Eventlet}


def load(name: str) -> Any:
    try:
        return LIBRARIES[name]()
    except ImportError:
        raise ValueError(f"-P {name} needs the {name} package: pip install 'taskq[{name}]'") from None


class GreenPool:
    """``concurrency`` green threads of gevent or eventlet."""

    def __init__(self, library: str, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.name = library
        self.lib = load(library)
        self.limit = concurrency
        # Unbounded: the consumer never submits past free_slots, so the size limit is ours and
        # grow/shrink only change a number.
        self._group = self.lib.group()
        self._running: dict[Job, Any] = {}

    def start(self) -> None:
        pass

    def submit(self, job: Job) -> None:
        self._running[job] = None  # counted before the green thread first runs
        self._running[job] = self.lib.spawn(self._group, self._run, job)

    def _run(self, job: Job) -> None:
        from taskq.worker.execute import execute

        job.started_at = time.monotonic()
        hard = (
            self.lib.later(job.hard_limit, self._kill, job, TimeLimitExceeded(job.hard_limit))
            if job.hard_limit
            else None
        )
        outcome: Outcome | BaseException
        soft = None
        try:
            if job.soft_limit:
                soft = self.lib.timeout(job.soft_limit, SoftTimeLimitExceeded())
            outcome = execute(job.task, job.context)
        except (TimeLimitExceeded, Terminated) as exc:  # killed by _kill
            outcome = exc
        except SoftTimeLimitExceeded as exc:  # fired after the task itself returned
            outcome = exc
        except Exception as exc:  # execute() catches task errors; this is a bug in taskq
            logger.critical("internal error running %s", job.task.name, exc_info=exc)
            outcome = exc
        finally:
            if soft is not None:
                soft.cancel()
            if hard is not None:
                self.lib.cancel_later(hard)
        self._running.pop(job, None)
        job.done(outcome)

    def _kill(self, job: Job, exc: BaseException) -> None:
        green = self._running.get(job)
        if green is None:
            return
        if isinstance(exc, TimeLimitExceeded):
            logger.error(
                "Hard time limit (%ss) exceeded for %s[%s]", job.hard_limit, job.task.name, job.context.id
            )
        self.lib.kill(green, exc)

    @property
    def free_slots(self) -> int:
        return self.limit - len(self._running)

    def terminate(self, job: Job, signum: int) -> bool:
        if self._running.get(job) is None:
            return False
        job.terminated = signum
        self._kill(job, Terminated(signum))
        return True

    def grow(self, n: int = 1) -> None:
        self.limit += n

    def shrink(self, n: int = 1) -> None:
        if n >= self.limit:
            raise ValueError(f"cannot shrink a pool of {self.limit} by {n}")
        self.limit -= n

    def stop(self, graceful: bool = True) -> None:
        if graceful:
            self.lib.join(self._group, None)
        else:
            for job, green in list(self._running.items()):
                if green is not None:
                    self.lib.kill(green, Terminated(9))
                self._running.pop(job, None)
