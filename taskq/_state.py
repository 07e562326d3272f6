"""Which app and which task are current, read from context variables.

Celery uses lazy proxies for this; a context variable gives the same answer per thread and per
asyncio task without any object pretending to be another.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.task import Context, Task

_current_app: ContextVar[App | None] = ContextVar("taskq_current_app", default=None)
_current_request: ContextVar[tuple[Task[Any, Any], Context] | None] = ContextVar(
    "taskq_current_request", default=None
)
_default_app: list[App] = []  # the last app created with set_as_current=True


def set_current_app(app: App) -> None:
    _default_app[:] = [app]
    _current_app.set(app)


def current_app() -> App:
    """The app of this context, else the last app created, else a new default app."""
    app = _current_app.get() or (_default_app[0] if _default_app else None)
    if app is None:
        from taskq.app import App

        app = App("default")
    return app


def current_task() -> Task[Any, Any] | None:
    """The task running in this thread or asyncio task, if any."""
    found = _current_request.get()
    return found[0] if found else None


def current_request() -> Context | None:
    found = _current_request.get()
    return found[1] if found else None
