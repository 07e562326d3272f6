"""Redis result backend: Celery's keys and commands, waiting on pub/sub instead of polling.

A state is ``SETEX <key> <ttl> <meta>`` + ``PUBLISH <key> <meta>`` (channel = key), as Celery
writes it, unless the key already holds SUCCESS: Celery reads the key, then sends a MULTI; with
JSON results taskq does both in one script (``STORE_LUA``), one round trip and no race between
the read and the write; clients subscribe to a task's key before sending it (``on_task_call``). One
pub/sub connection per backend, under a lock: one waiting thread at a time watches its socket
(without the lock) and hands what it reads to the threads waiting for those ids. Whenever the
server confirms a subscription (first time, after a reconnect) its waiters ``GET`` the key again,
so nothing published while it was down is missed. At most ``MAX_SUBSCRIPTIONS`` (10 000) channels
stay subscribed, then the oldest nobody waits on is dropped (its result stays in Redis: ``get()``
re-subscribes and ``GET``s it); ready metas are buffered only for ids being waited on.
"""

from __future__ import annotations

import itertools
import logging
import random
import select
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.url import maybe_sanitize_url
from redis.connection import URL_QUERY_ARGUMENT_PARSERS, parse_url

from taskq import states
from taskq.backend import redis_chord
from taskq.backend.base import GROUP_KEY_PREFIX, TASK_KEY_PREFIX, ResultBackend
from taskq.exceptions import BackendGetMetaError, BackendStoreError, ImproperlyConfigured, OperationalError
from taskq.exceptions import TimeoutError as ResultTimeout

if TYPE_CHECKING:
    from taskq.app import App

logger = logging.getLogger("taskq.backend.redis")

MAX_SUBSCRIPTIONS = 10_000  # channels kept subscribed; the oldest without a waiter is dropped
STORE_RETRIES = 3  # when storing; result_backend_always_retry: result_backend_max_retries
READ_RETRIES = 1  # one retry on a fresh connection (a pooled one may be stale after a restart)
RECONNECTS = 10  # failed pub/sub reconnects in a row before wait_for gives up
POLL_MAX = 1.0  # longest single wait on the pub/sub socket
READ_TIMEOUT = 10.0  # for the rest of a pub/sub message once its first bytes arrived
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
SSL_KEYS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
#: store a state unless SUCCESS is stored (a late duplicate loses); ARGV: meta JSON, TTL (0: none)
STORE_LUA = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta.status == 'SUCCESS' then return 0 end
end
if ARGV[2] ~= '0' then
  redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


def connparams_from_url(url: str, conf: Any) -> dict[str, Any]:
    """Pool arguments for ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS,
    ``?ssl_cert_reqs=required|optional|none``) or ``redis+socket:///path?virtual_host=<db>``."""
    scheme, _, rest = url.partition("://")
    try:
        parsed = parse_url(f"unix://{rest}" if scheme.lower() in ("redis+socket", "socket") else url)
    except ValueError as exc:
        raise ImproperlyConfigured(f"bad result backend URL {maybe_sanitize_url(url)}: {exc}") from None
    unknown = set(parsed) - set(URL_QUERY_ARGUMENT_PARSERS) - {*SSL_KEYS, "virtual_host", "username"}
    unknown -= {"password", "host", "port", "path", "connection_class"}
    db = rest.partition("?")[0].partition("/")[2].strip("/") if "path" not in parsed else ""
    for problem, found in (
        (f"unknown options {sorted(unknown)}", unknown),
        ("SSL options need rediss://", scheme.lower() == "redis" and any(k in parsed for k in SSL_KEYS)),
        (f"database {db!r} is not a number", db and not db.isdigit()),
    ):
        if found:
            raise ImproperlyConfigured(f"result backend URL {maybe_sanitize_url(url)}: {problem}")
    timeout, connect_timeout = conf.get("redis_socket_timeout"), conf.get("redis_socket_connect_timeout")
    params: dict[str, Any] = {
        "socket_timeout": float(timeout) if timeout else None,
        "socket_connect_timeout": float(connect_timeout) if connect_timeout else None,
        "retry_on_timeout": bool(conf.get("redis_retry_on_timeout")),
        "password": conf.get("redis_password"),
        "username": conf.get("redis_username") or None,
        "max_connections": conf.get("redis_max_connections") or None,
        "health_check_interval": int(conf.get("redis_backend_health_check_interval") or 0),
    }
    ssl_conf = conf.get("redis_backend_use_ssl")
    if "path" in parsed:
        parsed["db"] = int(parsed.pop("virtual_host", None) or parsed.get("db") or 0)
    else:
        params["socket_keepalive"] = bool(conf.get("redis_socket_keepalive"))
        if ssl_conf or parsed.get("connection_class") is redis.SSLConnection:
            params.update(dict(ssl_conf) if isinstance(ssl_conf, dict) else {})
            params["connection_class"] = redis.SSLConnection
            reqs = parsed.pop("ssl_cert_reqs", params.get("ssl_cert_reqs", "required"))
            reqs = CERT_REQS.get(reqs.lower().removeprefix("cert_"), reqs) if isinstance(reqs, str) else reqs
            if reqs not in CERT_REQS.values():
                raise ImproperlyConfigured(f"ssl_cert_reqs must be required, optional or none, not {reqs!r}")
            params["ssl_cert_reqs"] = reqs
    params.update(parsed)
    return params


def _readable(sock: Any, timeout: float) -> bool:
    """Wait until the raw socket has data; never touches redis-py's parser (no lock held)."""
    if sock is None or (hasattr(sock, "pending") and sock.pending()):
        return True  # disconnected (the locked read reconnects), or TLS bytes already decrypted
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    except (OSError, ValueError):  # closed meanwhile
        return True


class _Subscriber:
    """The backend's one pub/sub connection and the threads waiting on it (``_x`` = under lock)."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend, self.cond = backend, threading.Condition(threading.RLock())
        self.pubsub: Any = None
        self.subscribed: OrderedDict[str, None] = OrderedDict()  # keys, oldest first
        self.confirmed: dict[str, int] = {}  # key -> sequence number of its last confirmation
        self.waiters: dict[str, int] = {}  # task id -> threads waiting for it
        self.ready: dict[str, dict[str, Any]] = {}  # ready metas of ids with waiters
        self.errors: dict[str, BaseException] = {}  # undecodable payloads of ids with waiters
        self.reading, self.sequence, self.failures = False, 0, 0

    def _pubsub(self) -> Any:
        if self.pubsub is None or self.pubsub.connection is None:
            self.pubsub = self.backend.client.pubsub()
            keys = list(self.subscribed)
            for start in range(0, len(keys), 1000):
                self.pubsub.subscribe(*keys[start : start + 1000])
        return self.pubsub

    def _reset(self, exc: BaseException | None = None) -> None:
        if exc is not None:
            self.failures += 1
            logger.warning("result backend %s: pub/sub connection lost: %s", self.backend.masked_url, exc)
        pubsub, self.pubsub = self.pubsub, None
        with suppress(Exception):  # None, or already broken: only drop it
            pubsub.reset()
        self.confirmed.clear()

    def _subscribe(self, key: str) -> None:
        if key in self.subscribed:
            self.subscribed.move_to_end(key)
            return
        fresh = self.pubsub is None or self.pubsub.connection is None
        self.subscribed[key] = None
        skip = len(self.backend.task_keyprefix)
        while len(self.subscribed) > MAX_SUBSCRIPTIONS:
            oldest = next((k for k in self.subscribed if k[skip:] not in self.waiters), None)
            if oldest is None:
                break
            self._unsubscribe(oldest)
        pubsub = self._pubsub()
        if not fresh:
            pubsub.subscribe(key)

    def _unsubscribe(self, key: str) -> None:
        self.subscribed.pop(key, None)
        self.confirmed.pop(key, None)
        try:
            if self.pubsub is not None and self.pubsub.connection is not None:
                self.pubsub.unsubscribe(key)
        except CONNECTION_ERRORS as exc:
            self._reset(exc)  # a new connection subscribes only what is still wanted

    def _drain(self) -> bool:
        """Handle every message already received; True when something was read."""
        pubsub, got = self._pubsub(), False
        for _ in range(10_000):
            if pubsub.connection is None or not pubsub.connection.can_read(timeout=0):
                break
            message = pubsub.handle_message(pubsub.parse_response(block=False, timeout=READ_TIMEOUT))
            got = True
            if message:
                self._on_message(message)
        if got:
            self.failures = 0
            self.cond.notify_all()  # what was read may be other waiters' news
        return got

    def _on_message(self, message: dict[str, Any]) -> None:
        kind, channel = message.get("type"), bytes_to_str(message.get("channel") or b"")
        if kind == "subscribe":
            if channel in self.subscribed:
                self.sequence += 1
                self.confirmed[channel] = self.sequence
            else:
                self.pubsub.unsubscribe(channel)  # replayed by redis-py after we dropped it
            return
        prefix = self.backend.task_keyprefix
        if kind != "message" or not channel.startswith(prefix):
            return
        task_id = channel[len(prefix) :]
        try:
            meta = self.backend.decode_meta(task_id, message["data"])
        except BackendGetMetaError as exc:
            self.errors.update({task_id: exc} if task_id in self.waiters else {})
            return
        if meta["status"] in states.READY_STATES:
            self.ready.update({task_id: meta} if task_id in self.waiters else {})
            self._unsubscribe(channel)

    def subscribe(self, key: str, task_id: str | None = None) -> None:
        """Subscribe now (before the task is sent, or as a waiter of ``task_id``)."""
        with self.cond:
            try:
                self._subscribe(key)
                if not self.reading:
                    self._drain()  # keep the socket from filling up with confirmations
            except CONNECTION_ERRORS:
                self._reset()
                try:
                    self._pubsub()  # once more on a fresh connection: it subscribes every key
                except CONNECTION_ERRORS as exc:
                    self._reset()
                    url = self.backend.masked_url
                    raise OperationalError(f"cannot subscribe to results on {url}: {exc}") from exc
            if task_id is not None:  # a ready meta drained above is found by the waiter's GET
                self.waiters[task_id] = self.waiters.get(task_id, 0) + 1

    def leave(self, task_id: str, key: str, unsubscribe: bool) -> None:
        with self.cond:
            count = self.waiters.pop(task_id, 1) - 1
            if count > 0:
                self.waiters[task_id] = count
                return
            self.ready.pop(task_id, None)
            self.errors.pop(task_id, None)
            if unsubscribe and key in self.subscribed:
                self._unsubscribe(key)

    def step(self, task_id: str, key: str, checked: int, end: float) -> tuple[str, Any]:
        """Wait until ``end``: ``("meta", ready meta)``, ``("check", n)`` (subscription confirmed
        since the caller's last ``GET``: read again), ``("error", exc)`` or ``("timeout", None)``."""
        while True:
            with self.cond:
                if task_id in self.errors:
                    raise self.errors[task_id]
                if task_id in self.ready:
                    return "meta", self.ready[task_id]
                try:
                    self._subscribe(key)
                    if self.confirmed.get(key, 0) > checked:
                        return "check", self.confirmed[key]
                    remaining = end - time.monotonic()
                    if remaining <= 0:
                        return "timeout", None
                    if self.reading:
                        self.cond.wait(remaining)
                        continue
                    if self._drain():
                        continue
                    sock = getattr(self._pubsub().connection, "_sock", None)
                except CONNECTION_ERRORS as exc:
                    self._reset(exc)
                    if self.failures >= RECONNECTS:
                        url = self.backend.masked_url
                        raise OperationalError(f"lost the connection to result backend {url}: {exc}") from exc
                    return "error", exc
                self.reading = True
            try:
                _readable(sock, min(remaining, POLL_MAX))
            finally:
                with self.cond:
                    self.reading = False
                    self.cond.notify_all()


class RedisBackend(ResultBackend):
    """Results in Redis under Celery's ``celery-task-meta-<id>`` keys."""

    supports_native_wait = True
    supports_native_chord = True  # Celery 5.7's scripts, in redis_chord.py

    def __init__(self, app: App, url: str | None = None) -> None:
        super().__init__(app, url)
        conf = app.conf
        self.url = url or "redis://"
        self.connparams = connparams_from_url(self.url, conf)
        prefix = str((conf.get("result_backend_transport_options") or {}).get("global_keyprefix") or "")
        prefix += "_" if prefix and prefix[-1] not in ":_-." else ""  # as Celery does
        self.task_keyprefix, self.group_keyprefix = prefix + TASK_KEY_PREFIX, prefix + GROUP_KEY_PREFIX
        self.always_retry = bool(conf.get("result_backend_always_retry"))
        self.max_retries = conf.get("result_backend_max_retries")
        self.base_sleep = float(conf.get("result_backend_base_sleep_between_retries_ms") or 10) / 1000
        self.max_sleep = float(conf.get("result_backend_max_sleep_between_retries_ms") or 10000) / 1000
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()
        self._subscriber = _Subscriber(self)

    @property
    def client(self) -> redis.Redis:
        """The client over this backend's one connection pool (thread-safe)."""
        with self._lock:
            if self._client is None:
                self._client = redis.Redis(connection_pool=redis.ConnectionPool(**self.connparams))
            return self._client

    def key_for(self, task_id: str) -> str:
        return f"{self.task_keyprefix}{task_id}"

    def _call(self, what: str, fun: Callable[..., Any], *args: Any, store: bool = False) -> Any:
        """Run a command, retrying connection errors (``READ_RETRIES``, ``STORE_RETRIES``)."""
        limit = (self.max_retries if self.always_retry else None) if store else READ_RETRIES
        retries = float(STORE_RETRIES if limit is None else limit)
        error: type[Exception] = BackendStoreError if store else OperationalError
        for attempt in itertools.count(1):
            try:
                return fun(*args)
            except CONNECTION_ERRORS as exc:
                if attempt > retries or isinstance(exc, redis.AuthenticationError):
                    raise error(f"cannot {what} on result backend {self.masked_url}: {exc}") from exc
                sleep = min(self.max_sleep, self.base_sleep * 2**attempt) * random.uniform(0.5, 1.0)
                logger.warning("result backend %s: %s failed, retrying: %s", self.masked_url, what, exc)
                time.sleep(sleep if store or attempt > 1 else 0)  # a stale pooled connection: at once
            except redis.RedisError as exc:
                error = BackendStoreError if store else BackendGetMetaError
                raise error(f"cannot {what} on result backend {self.masked_url}: {exc}") from exc
        raise AssertionError("unreachable")

    def _get(self, key: str) -> bytes | str | None:
        return self._call("read", self.client.get, key)

    def store_result(
        self, task_id: str, result: Any, state: str, traceback: str | None = None, request: Any = None
    ) -> dict[str, Any]:
        if self.serializer != "json" or self.compression:  # the script reads JSON only
            return super().store_result(task_id, result, state, traceback, request)
        meta = self.make_meta(task_id, result, state, traceback, request)
        ttl = self.failure_expires if state == states.FAILURE and self.failure_expires else self.expires
        args = [self.encode(meta), max(1, int(ttl)) if ttl else 0]
        redis_chord.run_script(self, "store", STORE_LUA, [self.key_for(task_id)], args)
        return meta

    def _set(self, key: str, value: bytes | str, ttl: float | None) -> None:
        def write() -> None:  # Celery's exact commands: MULTI, SETEX (or SET), PUBLISH, EXEC
            pipe = self.client.pipeline(transaction=True)
            if ttl:  # (redis-py 8 deprecates pipe.setex, but SETEX is what Celery sends)
                pipe.execute_command("SETEX", key, max(1, int(ttl)), value)
            else:
                pipe.set(key, value)
            pipe.publish(key, value).execute()

        self._call("store", write, store=True)

    def _delete(self, key: str) -> None:
        self._call("delete", self.client.delete, key, store=True)

    def _incr(self, key: str, ttl: float | None) -> int:  # add_to_chord: a bare INCR, as Celery
        return int(self._call("increment", self.client.incr, key, store=True))

    def set_chord_size(self, group_id: str, size: int) -> None:
        redis_chord.set_chord_size(self, group_id, size)

    def on_chord_part_return(self, request: Any, state: str, result: Any) -> None:
        if self.supports_native_chord:
            redis_chord.on_chord_part_return(self, request, state, result)

    def on_task_call(self, task_id: str) -> None:
        self._subscriber.subscribe(self.key_for(task_id))

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        on_interval: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Wait for a ready state on pub/sub; ``GET`` whenever the subscription is (re)made."""
        deadline = None if timeout is None else time.monotonic() + timeout
        key, subscriber = self.key_for(task_id), self._subscriber
        subscriber.subscribe(key, task_id)
        done, checked, last_error = False, 0, None
        try:
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    if last_error is not None:
                        raise OperationalError(f"result backend {self.masked_url} unreachable: {last_error}")
                    raise ResultTimeout(f"the operation timed out after {timeout} s (task {task_id})")
                end = now + interval if deadline is None else min(deadline, now + interval)
                kind, value = subscriber.step(task_id, key, checked, end)
                if kind == "check":
                    checked, last_error = value, None
                    value = self.get_task_meta(task_id)
                if kind in ("meta", "check") and value["status"] in states.READY_STATES:
                    done = True
                    return value
                if kind == "error":
                    last_error = value
                    time.sleep(min(0.05 * 2**subscriber.failures, POLL_MAX, max(end - time.monotonic(), 0)))
                elif kind == "timeout" and on_interval is not None:
                    on_interval()
        finally:
            subscriber.leave(task_id, key, done)

    def close(self) -> None:
        with self._subscriber.cond:
            self._subscriber._reset()
            self._subscriber.subscribed.clear()
        with self._lock:
            client, self._client = self._client, None
            if client is not None:
                client.connection_pool.disconnect()
