"""RabbitMQ blocking publishers (memory alarm): a confirmed publish ends in PublishError in time.

``set_vm_memory_high_watermark 0`` raises the memory alarm on the node: RabbitMQ stops reading
from every publishing connection and sends ``connection.blocked``. A publish that waits for its
confirm would wait for as long as the alarm lasts; with ``publish_timeout`` it raises instead.
The alarm is always cleared (back to RabbitMQ's default 0.4) before the test ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from e2e.helpers import wait_for

from taskq import Celery
from taskq.exceptions import PublishError

from .servers import RabbitControl

pytestmark = pytest.mark.e2e

TIMEOUT = 2.0
DEFAULT_WATERMARK = "0.4"


@pytest.fixture
def alarm(rabbit: tuple[RabbitControl, str]) -> Iterator[tuple[RabbitControl, str]]:
    control, url = rabbit
    try:
        yield control, url
    finally:
        control.run("set_vm_memory_high_watermark", DEFAULT_WATERMARK)


def test_blocked_rabbitmq_ends_in_publish_error(alarm: tuple[RabbitControl, str]) -> None:
    control, url = alarm
    app = Celery(
        "blocked", broker=url, set_as_current=False, broker_confirm_publish=True, publish_timeout=TIMEOUT,
        task_publish_retry_policy={"max_retries": None, "interval_start": 0.2, "interval_max": 0.5},
    )  # fmt: skip
    try:
        app.send_task("before", task_id="before")  # connected and confirmed while all is well
        control.run("set_vm_memory_high_watermark", "0")
        started = time.monotonic()
        with pytest.raises(PublishError, match="publish_timeout"):
            app.send_task("during", task_id="during")
        took = time.monotonic() - started
        control.run("set_vm_memory_high_watermark", DEFAULT_WATERMARK)
        # Once the alarm clears, publishing works again on a fresh connection.
        wait_for(lambda: _publishes(app), 30, "a publish to succeed after the alarm")
    finally:
        app.close()
    print(f"\n[faults] rabbitmq memory alarm: publish gave up after {took:.2f}s (publish_timeout={TIMEOUT})")
    assert took < TIMEOUT + 1.5, took


def _publishes(app: Any) -> bool:
    try:
        app.send_task("after")
        return True
    except PublishError:
        return False
