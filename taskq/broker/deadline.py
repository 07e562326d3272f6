"""``publish_timeout``: one bound on a whole publish, however the broker is misbehaving.

kombu bounds each piece on its own (a connect by ``connect_timeout``, retries by count), so a
publish to a broker that is down, refusing, or blocking publishers (RabbitMQ's memory or disk
alarm) can take minutes, or forever when nobody set a retry limit. With a deadline every piece
gets what is left of it: the wait for a pooled producer, connecting (retries included), each
write and each publisher confirm. Between retries, kombu asks our errback before it sleeps; once
the next try would start past the deadline the errback raises ``PublishError``.

What the deadline cannot see: without publisher confirms, a publish to a blocked RabbitMQ
returns as soon as the bytes are in the socket buffer (the broker reads them when the alarm
clears). ``broker_confirm_publish`` makes the publish wait for the broker's word, and that wait
is bounded too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from taskq.exceptions import PublishError


class Deadline:
    """The moment a publish must be over by, and kombu callbacks that enforce it."""

    def __init__(self, seconds: float, where: str) -> None:
        if seconds <= 0:
            raise ValueError(f"publish_timeout must be a positive number of seconds, not {seconds!r}")
        self.seconds = float(seconds)
        self.where = where
        self.ends = time.monotonic() + self.seconds

    def remaining(self) -> float:
        """Seconds left; raises ``PublishError`` when none are."""
        left = self.ends - time.monotonic()
        if left <= 0:
            raise self.error()
        return left

    def error(self, cause: BaseException | None = None) -> PublishError:
        detail = f": {cause}" if cause is not None else ""
        return PublishError(
            f"cannot publish to {self.where} within publish_timeout={self.seconds:g}s{detail}"
        )

    def errback(self, user: Callable[..., Any] | None = None) -> Callable[[BaseException, float], float]:
        """For kombu's retry loops: give up when sleeping ``interval`` would end past the deadline."""

        def check(exc: BaseException, interval: float) -> float:
            if user is not None:
                user(exc, interval)
            if time.monotonic() + interval >= self.ends:
                raise self.error(exc) from exc
            return interval

        return check

    def connect(self, connection: Any, policy: dict[str, Any]) -> None:
        """Connect ``connection`` now (if it is not), retrying as ``policy`` says, within the deadline."""
        if connection.connected:
            return
        connection.ensure_connection(
            errback=self.errback(policy.get("errback")),
            max_retries=policy.get("max_retries"),
            interval_start=policy.get("interval_start", 0),
            interval_step=policy.get("interval_step", 0.2),
            interval_max=policy.get("interval_max", 1),
            timeout=self.remaining(),
        )

    def publish_options(self, policy: dict[str, Any] | None) -> dict[str, Any]:
        """kombu ``Producer.publish`` keywords: the policy with our errback, and bounded waits."""
        left = self.remaining()
        bounded = dict(policy or {})
        bounded["errback"] = self.errback(bounded.get("errback"))
        return {"retry_policy": bounded, "timeout": left, "confirm_timeout": left}
