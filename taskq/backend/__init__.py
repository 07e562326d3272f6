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
    "cache": "taskq.backend.cache:CacheBackend",  # the server is in cache_backend, as in Celery
    "cache+memcached": "taskq.backend.cache:CacheBackend",
    "cache+memcache": "taskq.backend.cache:CacheBackend",
    "cache+pymemcache": "taskq.backend.cache:CacheBackend",
    "cache+pylibmc": "taskq.backend.cache:CacheBackend",  # Celery's old name: pymemcache serves it
    "file": "taskq.backend.filesystem:FilesystemBackend",
    "disabled": "taskq.backend.base:DisabledBackend",
    # db+<any SQLAlchemy URL> (db+postgresql, db+mysql, db+sqlite, ...), as Celery's URLs
    "db": "taskq.backend.database:DatabaseBackend",
    "database": "taskq.backend.database:DatabaseBackend",
}


def backend_from_url(app: App, url: str | None) -> ResultBackend:
    """The backend for ``url``; ``None`` means results are disabled, as in Celery."""
    if not url:
        return DisabledBackend(app)
    scheme = url.partition("://")[0] if "://" in url else url
    target = BACKENDS.get(scheme.lower())
    if target is None and scheme.lower().startswith("db+"):
        target = BACKENDS["db"]
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(BACKENDS))
        raise ImproperlyConfigured(f"unknown result backend {scheme!r}; taskq supports {known}")
    module_name, _, cls_name = target.partition(":")
    import importlib

    cls: type[ResultBackend] = getattr(importlib.import_module(module_name), cls_name)
    return cls(app, url)
