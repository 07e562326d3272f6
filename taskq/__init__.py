"""taskq: a Celery-compatible task queue.

``from taskq import Celery`` is the one line a Celery project changes to move over.
"""

from __future__ import annotations

from taskq import states
from taskq._state import current_app, current_task
from taskq.app import App, Celery, shared_task
from taskq.result import AsyncResult, EagerResult
from taskq.task import Context, Task

__version__ = "0.1.0"
VERSION = tuple(int(p) for p in __version__.split("."))

__all__ = [
    "App",
    "AsyncResult",
    "Celery",
    "Context",
    "EagerResult",
    "Task",
    "__version__",
    "current_app",
    "current_task",
    "shared_task",
    "states",
]
