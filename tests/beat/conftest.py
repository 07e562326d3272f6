"""Fixtures for beat: an app on the in-process broker, a clock the test moves, message readers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from taskq import App

UTC = timezone.utc


class FakeClock:
    """The app's clock (``app.now``) and the scheduler's pacing clock, moved by the test."""

    def __init__(self, start: datetime) -> None:
        self.start = self.now_value = start

    def __call__(self) -> datetime:
        return self.now_value

    def monotonic(self) -> float:
        return 1000.0 + (self.now_value - self.start).total_seconds()

    def advance(self, **delta: float) -> datetime:
        self.now_value += timedelta(**delta)
        return self.now_value

    def set(self, when: datetime) -> None:
        self.now_value = when


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2024, 1, 15, 12, 0, tzinfo=UTC))


@pytest.fixture
def beat_app(clock: FakeClock) -> Iterator[App]:
    """An app on ``memory://`` whose tasks go to a queue of this test's own, clocked by ``clock``."""
    app = App(
        "beattest",
        broker="memory://",
        result_backend="memory://",
        set_as_current=False,
        task_default_queue=f"beat-{uuid.uuid4().hex[:8]}",
    )
    app.now = clock  # type: ignore[method-assign]
    yield app
    app.close()


def sent_messages(app: App, queue: str | None = None) -> list[Any]:
    """Every message waiting in ``queue`` (the app's default queue), taken off it, oldest first."""
    name = queue or app.conf.task_default_queue
    out = []
    with app.broker.connection.clone() as conn:
        channel = conn.default_channel
        while True:
            message = channel.basic_get(name, no_ack=True)
            if message is None:
                return out
            out.append(message)
