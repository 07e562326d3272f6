"""taskq: a Celery-compatible task queue.

``from taskq import Celery`` is the one line a Celery project changes to move over.
"""

# ruff: noqa: E402  (the green-pool patch must run before the imports below)
from __future__ import annotations

from taskq import _patch

_patch.maybe_patch()  # -P gevent/eventlet: before kombu, redis or amqp create a socket

from taskq import states
from taskq._state import current_app, current_task
from taskq.app import App, Celery, shared_task
from taskq.canvas import Signature, maybe_signature, signature
from taskq.canvas_tasks import chunks, xmap, xstarmap
from taskq.result import AsyncResult, EagerResult, GroupResult, ResultSet
from taskq.schedules import crontab
from taskq.task import Context, Task
from taskq.workflows import chain, chord, group

__version__ = "0.1.0"
VERSION = tuple(int(p) for p in __version__.split("."))

__all__ = [
    "App",
    "AsyncResult",
    "Celery",
    "Context",
    "EagerResult",
    "GroupResult",
    "ResultSet",
    "Signature",
    "Task",
    "__version__",
    "chain",
    "chord",
    "chunks",
    "crontab",
    "current_app",
    "current_task",
    "group",
    "maybe_signature",
    "shared_task",
    "signature",
    "states",
    "xmap",
    "xstarmap",
]
