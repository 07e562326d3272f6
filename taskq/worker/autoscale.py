"""``--autoscale MAX,MIN``: grow the pool when work waits, shrink it after a quiet spell.

Celery's rule: the target size is the work in hand (running + reserved), capped to MAX; growing
is immediate, shrinking waits ``keepalive`` seconds after the last growth so a bursty queue
does not make children churn. The consumer calls ``tick`` from its loop; the check itself runs
at most once a second.
"""

from __future__ import annotations

import logging
import time

from taskq.worker.pools import Pool

logger = logging.getLogger("taskq.worker")


def parse_autoscale(value: str) -> tuple[int, int]:
    """``'10,3'`` -> (10, 3); ``'10'`` -> (10, 0). MAX must be at least MIN and positive."""
    parts = [p.strip() for p in value.split(",")]
    try:
        numbers = [int(p) for p in parts if p]
    except ValueError:
        raise ValueError(f"--autoscale takes MAX,MIN (two integers), not {value!r}") from None
    if not numbers or len(numbers) > 2:
        raise ValueError(f"--autoscale takes MAX,MIN, not {value!r}")
    high, low = [*numbers, 0][:2]
    if high < 1 or low < 0 or low > high:
        raise ValueError(f"--autoscale {value!r}: need MAX >= MIN >= 0 and MAX >= 1")
    return high, low


class Autoscaler:
    """Resizes ``pool`` between ``min_size`` (at least 1 child) and ``max_size``."""

    def __init__(self, pool: Pool, max_size: int, min_size: int, keepalive: float = 30.0) -> None:
        self.pool = pool
        self.max_size = max_size
        self.min_size = max(min_size, 1)
        self.keepalive = keepalive
        self.interval = 1.0
        self._next_check = 0.0
        self._last_grow = time.monotonic()

    @property
    def headroom(self) -> int:
        return max(self.max_size - self.pool.limit, 0)

    def tick(self, demand: int) -> None:
        """``demand``: tasks running plus tasks received and waiting for a slot."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.interval
        size = self.pool.limit
        target = max(min(demand, self.max_size), self.min_size)
        if target > size:
            self.pool.grow(target - size)
            self._last_grow = now
            logger.info("Autoscaler: grew the pool from %d to %d", size, self.pool.limit)
        elif target < size and now - self._last_grow >= self.keepalive:
            try:
                self.pool.shrink(size - target)
            except ValueError as exc:  # every child busy: try again next time
                logger.debug("Autoscaler: cannot shrink yet: %s", exc)
                return
            logger.info("Autoscaler: shrank the pool from %d to %d", size, self.pool.limit)
