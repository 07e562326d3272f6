"""Result backends by URL scheme.

Each scheme maps to one module, imported only when used, so an app that never reads results
never imports a Redis or AMQP client for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskq.backend.base import DisabledBackend, ResultBackend
from taskq.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from taskq.app import App

__all__ = ["BACKENDS", "DisabledBackend", "ResultBackend", "backend_from_url"]

# scheme -> "module:class"
BACKENDS: dict[str, str] = {
    "redis": "taskq.backend.redis:RedisBackend",
    "rediss": "taskq.backend.redis:RedisBackend",
    "redis+socket": "taskq.backend.redis:RedisBackend",
    "socket": "taskq.backend.redis:RedisBackend",
    "rpc": "taskq.backend.rpc:RPCBackend",
    "sqlite": "taskq.backend.sqlite:SQLiteBackend",
    "memory": "taskq.backend.memory:MemoryBackend",
    "cache+memory": "taskq.backend.memory:MemoryBackend",
    "disabled": "taskq.backend.base:DisabledBackend",
}


def backend_from_url(app: App, url: str | None) -> ResultBackend:
    """The backend for ``url``; ``None`` means results are disabled, as in Celery."""
    if not url:
        return DisabledBackend(app)
    scheme = url.partition("://")[0] if "://" in url else url
    target = BACKENDS.get(scheme.lower())
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(BACKENDS))
        raise ImproperlyConfigured(f"unknown result backend {scheme!r}; taskq supports {known}")
    module_name, _, cls_name = target.partition(":")
    import importlib

    cls: type[ResultBackend] = getattr(importlib.import_module(module_name), cls_name)
    return cls(app, url)
