"""A Task base class that overrides ``__call__`` wraps every run, in a worker and eagerly (as Celery)."""

from __future__ import annotations

from typing import Any

from taskq import Celery, Task
from taskq.backend.memory import MemoryBackend
from taskq.testing import RunningWorker

CALLS: list[str] = []


class Wrapped(Task):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        CALLS.append(f"enter {self.name}")
        try:
            return super().__call__(*args, **kwargs)
        finally:
            CALLS.append(f"exit {self.name}")


def make_app() -> Celery:
    MemoryBackend.clear()
    app = Celery("wrapped", broker="memory://", backend="memory://", set_as_current=False)

    @app.task(base=Wrapped, name="wrapped.double")
    def double(x: int) -> int:
        CALLS.append("run")
        return 2 * x

    return app


def test_worker_calls_the_base_class_call_around_run() -> None:
    CALLS.clear()
    app = make_app()
    running = RunningWorker(app)
    running.start()
    try:
        assert app.tasks["wrapped.double"].delay(21).get(timeout=10) == 42
    finally:
        running.stop()
    assert CALLS == ["enter wrapped.double", "run", "exit wrapped.double"]


def test_apply_calls_it_too() -> None:
    CALLS.clear()
    app = make_app()
    assert app.tasks["wrapped.double"].apply((4,)).get() == 8
    assert CALLS == ["enter wrapped.double", "run", "exit wrapped.double"]
