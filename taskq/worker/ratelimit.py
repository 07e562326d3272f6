"""Per-task rate limits in one worker (Celery's semantics: ``'10/s'`` is per worker, not global).

A token bucket per task name (kombu's ``TokenBucket``, capacity 1, as Celery). A request whose
bucket is empty waits here, in arrival order for its task, while other tasks keep running; the
consumer asks ``pop_due()`` for the ones whose turn has come and ``next_wait()`` for how long it may
sleep. Limits change at run time (remote control ``rate_limit``) without a restart.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from kombu.utils.limits import TokenBucket

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.worker.request import Request

_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}
#: rate-limited messages one worker holds waiting for tokens before it stops fetching: enough that
#: a throttled task does not hold up the others behind it, few enough to bound memory and leave
#: the rest of a backlog to other workers (each has its own buckets)
RATE_LIMITED_HELD_MAX = 100


def parse_rate(value: str | float | int | None) -> float:
    """``'100/m'`` -> 1.666… per second; a bare number is per second; None/0/'' is no limit."""
    if value is None or value == "":
        return 0.0
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"rate limit must not be negative: {value!r}")
        return float(value)
    ops, _, unit = str(value).strip().partition("/")
    try:
        per = _PER[unit.strip() or "s"]
        count = float(ops)
    except (KeyError, ValueError):
        raise ValueError(f"invalid rate limit {value!r}: use e.g. '10/s', '100/m' or '1000/h'") from None
    if count < 0:
        raise ValueError(f"rate limit must not be negative: {value!r}")
    return count / per


class RateLimits:
    """Buckets and the requests waiting on them, for one worker."""

    def __init__(self, app: App, enabled: bool = True) -> None:
        self.app = app
        self.enabled = enabled
        self._buckets: dict[str, TokenBucket | None] = {}
        self._waiting: dict[str, deque[Request]] = {}

    def bucket(self, name: str) -> TokenBucket | None:
        try:
            return self._buckets[name]
        except KeyError:
            pass
        task = self.app.tasks.get(name)
        limit: Any = getattr(task, "rate_limit", None)
        if limit is None:
            limit = self.app.conf.task_default_rate_limit
        per_second = parse_rate(limit) if self.enabled else 0.0
        bucket = TokenBucket(per_second, capacity=1) if per_second else None
        self._buckets[name] = bucket
        return bucket

    def set(self, name: str, limit: str | float | None) -> None:
        """Change a task's limit now; requests already waiting are re-timed against the new one."""
        per_second = parse_rate(limit)
        self._buckets[name] = TokenBucket(per_second, capacity=1) if per_second else None

    def admit(self, request: Request) -> bool:
        """True if ``request`` may run now; otherwise it is kept here until its token is due."""
        name = request.task.name
        bucket = self.bucket(name)
        if bucket is None:
            return True
        queue = self._waiting.get(name)
        if not queue and bucket.can_consume(1):
            return True
        self._waiting.setdefault(name, deque()).append(request)
        return False

    def pop_due(self) -> Request | None:
        """The oldest waiting request whose token is available now (taking the token), or None."""
        for name, queue in list(self._waiting.items()):
            bucket = self.bucket(name)
            if bucket is None or bucket.can_consume(1):
                request = queue.popleft()
                if not queue:
                    del self._waiting[name]
                return request
        return None

    def next_wait(self) -> float | None:
        """Seconds until the next waiting request may run; None when none waits."""
        waits = []
        for name in self._waiting:
            bucket = self.bucket(name)
            waits.append(0.0 if bucket is None else max(bucket.expected_time(1), 0.0))
        return min(waits) if waits else None

    @property
    def held(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def remove(self, keep: Any) -> list[Request]:
        """Take out the waiting requests for which ``keep(request)`` is false; returns them."""
        removed: list[Request] = []
        for name, queue in list(self._waiting.items()):
            kept = deque(r for r in queue if keep(r))
            removed += [r for r in queue if not keep(r)]
            if kept:
                self._waiting[name] = kept
            else:
                del self._waiting[name]
        return removed

    def clear(self) -> list[Request]:
        """Everything waiting, removed (shutdown or a lost connection)."""
        return self.remove(lambda r: False)
