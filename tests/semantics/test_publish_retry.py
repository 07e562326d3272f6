"""``apply_async(retry=..., retry_policy=...)`` when the broker cannot be reached.

Publishing retries (kombu's ``ensure``) as the policy says, then gives up with
``taskq.exceptions.OperationalError``; it never hangs. Port 1 on localhost refuses at once.
Eager mode does not apply: an eager task is never published.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskq import Celery, signals
from taskq.exceptions import OperationalError

DOWN = "redis://127.0.0.1:1/0"
FAST = {"max_retries": 2, "interval_start": 0, "interval_step": 0.05, "interval_max": 0.1}


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("down", broker=DOWN, backend="memory://", set_as_current=False)
    app.conf.broker_connection_timeout = 1.0

    @app.task(name="down.add")
    def add(x: int, y: int) -> int:
        return x + y

    yield app
    app.close()


def timed_failure(send: Any) -> tuple[OperationalError, float]:
    started = time.monotonic()
    with pytest.raises(OperationalError) as caught:
        send()
    return caught.value, time.monotonic() - started


def test_retry_policy_is_bounded_and_ends_in_operational_error(app: Celery, connect: Any) -> None:
    published: list[Any] = []
    connect(signals.after_task_publish, lambda **kw: published.append(kw))
    attempts: list[int] = []

    def errback(exc: BaseException, interval: float) -> None:  # kombu calls it before each retry
        attempts.append(1)

    policy = {**FAST, "errback": errback}
    error, took = timed_failure(
        lambda: app.tasks["down.add"].apply_async((1, 2), retry=True, retry_policy=policy)
    )
    assert took < 5
    assert "127.0.0.1:1" in str(error)
    assert 1 <= len(attempts) <= FAST["max_retries"] + 1
    assert published == []  # after_task_publish is only sent for a message that left


def test_no_retry_fails_within_the_connection_timeout(app: Celery) -> None:
    _, took = timed_failure(lambda: app.tasks["down.add"].apply_async((1, 2), retry=False))
    assert took < 5


def test_default_policy_from_settings_is_bounded(app: Celery) -> None:
    app.conf.task_publish_retry_policy = FAST
    _, took = timed_failure(lambda: app.tasks["down.add"].delay(1, 2))
    assert took < 5


def test_send_task_by_name_fails_the_same_way(app: Celery) -> None:
    _, took = timed_failure(lambda: app.send_task("down.add", (1, 2), retry_policy=FAST))
    assert took < 5


def test_eager_mode_never_touches_the_broker(app: Celery) -> None:
    app.conf.task_always_eager = True
    assert app.tasks["down.add"].delay(1, 2).get() == 3
