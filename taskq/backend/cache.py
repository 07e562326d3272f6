"""Memcached result backend: Celery's ``cache+memcached://host:port;host2:port/``.

Keys and values are Celery's own (``celery-task-meta-<id>`` holding the encoded meta), so a
Celery worker and a taskq client read each other's results through the same memcached.
Memcached cannot notify a waiting client, so ``get()`` polls with a short, capped back-off.

Chords are counted with memcached's atomic ``add``/``cas`` (``cache_chord.py``): memcached
has no transactions, so a part is recorded by compare-and-swap on one key instead of by the
multi-key steps the generic protocol in ``chord.py`` needs.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from taskq.backend import cache_chord
from taskq.backend.base import ResultBackend
from taskq.exceptions import BackendGetMetaError, BackendStoreError, ImproperlyConfigured, OperationalError

if TYPE_CHECKING:
    from taskq.app import App

POLL_CAP = 0.05  # the longest pause between two reads while waiting for a result
DEFAULT_PORT = 11211
# Memcached reads an expiry over 30 days as a Unix time, not as seconds from now.
MAX_RELATIVE_EXPIRES = 30 * 24 * 3600
# What Celery's cache backend sets unless cache_backend_options says otherwise: wait for the
# server's reply so a failed write raises, and never block forever on a server that went quiet.
DEFAULT_OPTIONS: dict[str, Any] = {"default_noreply": False, "connect_timeout": 5.0, "timeout": 5.0}
PYLIBMC_ONLY_OPTIONS = ("behaviors", "binary")  # Celery accepts and ignores them
RETRY_OPTIONS = ("retry_attempts", "retry_delay", "retry_for", "do_not_retry_for")


def parse_servers(url: str) -> list[str | tuple[str, int]]:
    """``host[:port]`` (IPv6 in brackets) or ``unix:/path``, ``;``-separated, as Celery reads them."""
    _, _, rest = url.partition("://")
    servers: list[str | tuple[str, int]] = []
    for spec in filter(None, (s.strip() for s in rest.rstrip("/").split(";"))):
        if spec.startswith("unix:") or spec.startswith("/"):
            servers.append(spec.removeprefix("unix:"))
            continue
        host, port = spec, str(DEFAULT_PORT)
        if not spec.endswith("]") and ":" in spec:
            host, _, port = spec.rpartition(":")
        if not port.isdigit() or not host:
            raise ImproperlyConfigured(f"bad memcached server {spec!r} in result backend URL {url!r}")
        servers.append((host.strip("[]"), int(port)))
    if not servers:
        raise ImproperlyConfigured(
            f"no memcached server in result backend URL {url!r} (expected cache+memcached://host:port/)"
        )
    return servers


def expire_arg(ttl: float | None) -> int:
    """Seconds as memcached wants them: 0 = never, long ones as an absolute Unix time."""
    if not ttl:
        return 0
    seconds = max(1, int(ttl))
    return int(time.time()) + seconds if seconds > MAX_RELATIVE_EXPIRES else seconds


def make_client(servers: list[str | tuple[str, int]], options: dict[str, Any]) -> Any:
    """A thread-safe pymemcache client: pooled for one server, hashed over several."""
    try:
        from pymemcache.client.base import PooledClient
        from pymemcache.client.hash import HashClient
        from pymemcache.client.retrying import RetryingClient
    except ImportError as exc:
        raise ImproperlyConfigured(
            'The memcached result backend needs pymemcache: pip install "taskq[memcache]"'
        ) from exc
    options = {**DEFAULT_OPTIONS, **options}
    for name in PYLIBMC_ONLY_OPTIONS:
        options.pop(name, None)
    retry = {name.removeprefix("retry_") if name != "retry_attempts" else "attempts": options.pop(name)
             for name in RETRY_OPTIONS if name in options}  # fmt: skip
    if len(servers) > 1:
        client: Any = HashClient(servers, use_pooling=True, **options)
    else:
        client = PooledClient(servers[0], **options)
    if "attempts" in retry:
        client = RetryingClient(client, **retry)
    return client


class CacheBackend(ResultBackend):
    """Results in memcached under Celery's keys; chords counted with ``add``/``cas``."""

    poll_cap = POLL_CAP

    supports_native_chord = True

    def __init__(self, app: App, url: str | None = None) -> None:
        super().__init__(app, url)
        if not url or url.partition("://")[0] == "cache":  # Celery's result_backend="cache"
            url = f"cache+{app.conf.get('cache_backend') or ''}"
            if not url.startswith(("cache+memcache", "cache+pymemcache", "cache+pylibmc")):
                raise ImproperlyConfigured(
                    f"result_backend 'cache' needs cache_backend = 'memcached://host:port/' (got {url[6:]!r}; "
                    "for the in-process cache use result_backend = 'cache+memory://')"
                )
        self.url = url
        self.servers = parse_servers(self.url)
        self.options = dict(app.conf.get("cache_backend_options") or {})
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = make_client(self.servers, self.options)
            return self._client

    def call(self, what: str, method: str, *args: Any, store: bool = False) -> Any:
        """One client call; failures become taskq's errors, naming the server, never a crash."""
        from pymemcache.exceptions import MemcacheClientError, MemcacheError

        try:
            return getattr(self.client, method)(*args)
        except MemcacheClientError as exc:  # a key or value memcached refuses
            raise (BackendStoreError if store else BackendGetMetaError)(
                f"cannot {what} on result backend {self.masked_url}: {type(exc).__name__}: {exc}"
            ) from exc
        except (MemcacheError, OSError) as exc:
            error = BackendStoreError if store else OperationalError
            raise error(f"cannot {what} on result backend {self.masked_url}: {exc!r}") from exc

    # -- primitives ---------------------------------------------------------------------------
    def _get(self, key: str) -> bytes | str | None:
        value: bytes | None = self.call("read", "get", key)
        return value

    def _set(self, key: str, value: bytes | str, ttl: float | None) -> None:
        if not self.call("store", "set", key, value, expire_arg(ttl), store=True):
            raise BackendStoreError(f"memcached at {self.masked_url} did not store {key!r}")

    def _delete(self, key: str) -> None:
        self.call("delete", "delete", key, store=True)

    def _incr(self, key: str, ttl: float | None) -> int:
        """Memcached's ``incr`` fails on a missing key: create it with ``add`` (a racer's wins)."""
        while True:
            value = self.call("increment", "incr", key, 1, store=True)
            if value is not None:
                return int(value)
            if self.call("store", "add", key, b"1", expire_arg(ttl), store=True):
                return 1

    # -- chords (cache_chord.py) ----------------------------------------------------------------
    def set_chord_size(self, group_id: str, size: int) -> None:
        cache_chord.set_chord_size(self, group_id, size)

    def on_chord_part_return(self, request: Any, state: str, result: Any) -> None:
        if self.supports_native_chord and getattr(request, "chord", None):
            cache_chord.part_return(self, request, state, result)

    def chord_keys(self, group_id: str) -> list[str]:
        """The chord bookkeeping keys alive for ``group_id`` (memcached cannot list keys)."""
        return cache_chord.live_keys(self, group_id)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
