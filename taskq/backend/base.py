"""Result backends: Celery's meta format and state rules, written once over a few primitives.

A backend subclass stores and fetches bytes by key (``_get``/``_set``/``_delete``); how a meta
looks, how exceptions travel, which write wins and how a client waits are decided here, so
every store reads and writes exactly what a Celery worker would.
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from kombu.serialization import dumps, loads, prepare_accept_content, registry
from kombu.utils.encoding import bytes_to_str
from kombu.utils.url import maybe_sanitize_url

from taskq import exceptions, states
from taskq.backend import chord
from taskq.exceptions import SecurityError, TimeoutError
from taskq.message import saferepr

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.result import GroupResult

TASK_KEY_PREFIX = "celery-task-meta-"
GROUP_KEY_PREFIX = "celery-taskset-meta-"
COMPRESSED_MARKER = b"\x00celery-compressed\x00"
_STANDINS: dict[tuple[str, str], type[Exception]] = {}


def _standin_exception(module: str, name: str) -> type[Exception]:
    """A placeholder class for an exception type this process cannot see.

    Never imports anything: stored data must not decide which code runs here.
    """
    key = (module, name)
    if key not in _STANDINS:
        _STANDINS[key] = type(name, (Exception,), {"__module__": module})
    return _STANDINS[key]


def exception_to_dict(exc: BaseException, encode: Callable[[Any], Any]) -> dict[str, Any]:
    """Celery's JSON form: ``{"exc_type", "exc_message", "exc_module"}``."""
    cls = type(exc)
    module = cls.__module__
    if module == "taskq.exceptions":
        module = exceptions.CELERY_MODULE_OF.get(cls.__name__, "celery.exceptions")
    args = []
    for arg in exc.args:
        try:
            encode(arg)
            args.append(arg)
        except Exception:  # not serializable: keep what a human can read
            args.append(saferepr(arg))
    return {"exc_type": cls.__qualname__, "exc_message": args, "exc_module": module}


def exception_from_dict(data: Mapping[str, Any]) -> BaseException:
    """Rebuild an exception from its stored dict, only ever as an exception class.

    The class is looked up in modules already imported (``celery.exceptions`` names map to
    taskq's own classes); a name that is not found becomes a stand-in class of that name, and
    a name that resolves to something other than an exception class is refused.
    """
    name = str(data.get("exc_type") or "Exception")
    module = str(data.get("exc_module") or "builtins")
    cls: Any = None
    if module in ("celery.exceptions", "billiard.exceptions"):
        cls = getattr(exceptions, name, None)
    if cls is None and module in sys.modules:
        cls = sys.modules[module]
        for part in name.split("."):
            # getattr_static: a module's __getattr__ (lazy imports) or a property never runs here
            cls = inspect.getattr_static(cls, part, None)
            if cls is None:
                break
    if cls is None:
        cls = _standin_exception(module, name)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        raise SecurityError(f"stored exception type {module}.{name} is not an exception class")
    message = data.get("exc_message")
    args = list(message) if isinstance(message, (list, tuple)) else [message]
    try:
        return cls(*args)
    except Exception:  # constructor wants other arguments: keep the type name, lose nothing
        return _standin_exception(module, name)(*args)


class ResultBackend:
    """Base of every result backend; subclasses implement the storage primitives."""

    #: whether results outlive the process (rpc and memory do not)
    persistent = True
    #: whether ``get()`` can wait without polling
    supports_native_wait = False
    #: whether a task's state can be looked up by id (rpc:// only sends replies to the caller)
    keeps_state = True

    def __init__(self, app: App, url: str | None = None) -> None:
        self.app = app
        self.url = url
        conf = app.conf
        self.serializer: str = conf.result_serializer
        self.content_type, self.content_encoding, _ = registry._encoders[self.serializer]
        self.accept = prepare_accept_content(conf.result_accept_content or conf.accept_content or ["json"])
        self.expires: float | None = _seconds(conf.result_expires)
        self.failure_expires: float | None = _seconds(conf.result_failure_expires)
        self.extended: bool = bool(conf.result_extended)
        self.compression: str | None = conf.result_compression

    @property
    def masked_url(self) -> str:
        """The backend URL with its password hidden, for messages."""
        return str(maybe_sanitize_url(self.url or "", mask="**"))

    # -- storage primitives (subclasses) ----------------------------------------------------
    def _get(self, key: str) -> bytes | str | None:
        raise NotImplementedError

    def _set(self, key: str, value: bytes | str, ttl: float | None) -> None:
        raise NotImplementedError

    def _delete(self, key: str) -> None:
        raise NotImplementedError

    # -- encoding ---------------------------------------------------------------------------
    def encode(self, obj: Any) -> bytes | str:
        _, _, payload = dumps(obj, serializer=self.serializer)
        if self.compression:
            from kombu import compression

            body, ctype = compression.compress(
                payload if isinstance(payload, bytes) else payload.encode(), self.compression
            )
            return COMPRESSED_MARKER + ctype.encode() + b"\x00" + body
        return payload

    def decode(self, payload: bytes | str) -> Any:
        if isinstance(payload, bytes) and payload.startswith(COMPRESSED_MARKER):
            from kombu import compression

            ctype, _, body = payload[len(COMPRESSED_MARKER) :].partition(b"\x00")
            payload = compression.decompress(body, ctype.decode())
        if self.content_encoding == "utf-8" and isinstance(payload, bytes):
            payload = bytes_to_str(payload)
        return loads(payload, self.content_type, self.content_encoding, accept=self.accept)

    def prepare_result(self, state: str, result: Any) -> Any:
        if state in states.EXCEPTION_STATES and isinstance(result, BaseException):
            if self.serializer == "pickle":
                return result
            return exception_to_dict(result, self.encode)
        if self.serializer != "pickle":
            from taskq.result import AsyncResult, GroupResult

            if isinstance(result, (AsyncResult, GroupResult)):  # a task returned a result: its tuple
                return result.as_tuple()
        return result

    def exception_from_meta(self, meta: Mapping[str, Any]) -> BaseException:
        result = meta.get("result")
        if isinstance(result, BaseException):
            return result
        if isinstance(result, Mapping) and "exc_type" in result:
            return exception_from_dict(result)
        return exceptions.TaskqError(repr(result))

    # -- meta -------------------------------------------------------------------------------
    def key_for(self, task_id: str) -> str:
        return f"{TASK_KEY_PREFIX}{task_id}"

    def make_meta(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
    ) -> dict[str, Any]:
        """The meta dict in Celery's key order (order matters to byte-level readers)."""
        date_done = self.app.now().isoformat() if state in states.READY_STATES else None
        children = None
        if request is not None:
            children = [c.as_tuple() for c in getattr(request, "children", ()) or ()]
        meta: dict[str, Any] = {
            "status": state,
            "result": self.prepare_result(state, result),
            "traceback": traceback,
            "children": children,
            "date_done": date_done,
        }
        if request is not None:
            if getattr(request, "group", None):
                meta["group_id"] = request.group
            if getattr(request, "parent_id", None):
                meta["parent_id"] = request.parent_id
            if self.extended:
                delivery_info = getattr(request, "delivery_info", None) or {}
                meta.update(
                    name=getattr(request, "task", None),
                    args=getattr(request, "args", None),
                    kwargs=getattr(request, "kwargs", None),
                    worker=getattr(request, "hostname", None),
                    retries=getattr(request, "retries", None),
                    queue=delivery_info.get("routing_key"),
                )
        meta["task_id"] = task_id
        return meta

    # -- public API -------------------------------------------------------------------------
    def store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
    ) -> dict[str, Any]:
        """Write a state; a stored SUCCESS is never overwritten (a late duplicate loses)."""
        meta = self.make_meta(task_id, result, state, traceback, request)
        key = self.key_for(task_id)
        if self._stored_state(key) == states.SUCCESS:
            return meta
        ttl = self.failure_expires if state == states.FAILURE and self.failure_expires else self.expires
        self._set(key, self.encode(meta), ttl)
        return meta

    def _stored_state(self, key: str) -> str | None:
        """The state stored under ``key``; None when absent or unreadable (then a write repairs it)."""
        current = self._get(key)
        if current is None:
            return None
        try:
            meta = self.decode(current)
        except Exception:
            return None
        return meta.get("status") if isinstance(meta, dict) else None

    def mark_as_started(self, task_id: str, request: Any = None, **fields: Any) -> dict[str, Any]:
        return self.store_result(task_id, fields, states.STARTED, request=request)

    def mark_as_done(self, task_id: str, result: Any, request: Any = None) -> dict[str, Any]:
        return self.store_result(task_id, result, states.SUCCESS, request=request)

    def mark_as_failure(
        self, task_id: str, exc: BaseException, traceback: str | None = None, request: Any = None
    ) -> dict[str, Any]:
        return self.store_result(task_id, exc, states.FAILURE, traceback, request)

    def mark_as_revoked(self, task_id: str, reason: str = "revoked", request: Any = None) -> dict[str, Any]:
        exc = exceptions.TaskRevokedError(reason)
        return self.store_result(task_id, exc, states.REVOKED, None, request)

    def get_task_meta(self, task_id: str) -> dict[str, Any]:
        """The stored meta, or a synthesized PENDING one when nothing is stored."""
        raw = self._get(self.key_for(task_id))
        if raw is None:
            return {"status": states.PENDING, "result": None, "task_id": task_id}
        return self.decode_meta(task_id, raw)

    def decode_meta(self, task_id: str, raw: bytes | str) -> dict[str, Any]:
        """Decode one stored or received meta; anything malformed is ``BackendGetMetaError``."""
        where = f"result of task {task_id} in {self.masked_url}"
        try:
            meta = self.decode(raw)
        except Exception as exc:
            raise exceptions.BackendGetMetaError(
                f"{where} cannot be decoded: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(meta, dict) or "status" not in meta:
            raise exceptions.BackendGetMetaError(f"{where} is malformed: {meta!r:.200}")
        return meta

    #: the longest pause between two reads while a client waits, for stores that cannot
    #: notify (None: the caller's ``interval``, Celery's 0.5 s)
    poll_cap: float | None = None

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        on_interval: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Block until the task is ready; poll with back-off where a store cannot notify."""
        if self.poll_cap is not None:
            interval = min(interval, self.poll_cap)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(0.005, interval)
        while True:
            meta = self.get_task_meta(task_id)
            if meta["status"] in states.READY_STATES:
                return meta
            if on_interval is not None:
                on_interval()
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"the operation timed out after {timeout} s (task {task_id})")
            sleep = delay if deadline is None else min(delay, max(deadline - time.monotonic(), 0))
            time.sleep(sleep)
            delay = min(delay * 2, interval)

    def forget(self, task_id: str) -> None:
        self._delete(self.key_for(task_id))

    def on_task_call(self, task_id: str) -> None:
        """Called before a task is published (the Redis backend subscribes here)."""

    # -- groups and chords (the protocol is in taskq/backend/chord.py) ------------------------
    supports_native_chord = False  # counts parts itself (else: celery.chord_unlock polls)
    group_keyprefix = GROUP_KEY_PREFIX

    def group_key_for(self, group_id: str) -> str:
        return f"{self.group_keyprefix}{group_id}"

    def save_group(self, group_id: str, result: GroupResult) -> GroupResult:
        """``celery-taskset-meta-<gid>`` = ``{"result": <result tuple>}``, like a task meta."""
        self._set(self.group_key_for(group_id), self.encode({"result": result.as_tuple()}), self.expires)
        return result

    def restore_group(self, group_id: str) -> GroupResult | None:
        return chord.restore_group(self, group_id, self._get(self.group_key_for(group_id)))

    def delete_group(self, group_id: str) -> None:
        self._delete(self.group_key_for(group_id))

    def ensure_chords_allowed(self) -> None:
        """Raise when this backend cannot run chords at all (rpc://, no backend)."""

    def set_chord_size(self, group_id: str, size: int) -> None:
        """Before a chord's header is sent: its size (and a fresh run: no "done" mark)."""
        self._delete(self.group_key_for(group_id) + ".c")
        self._set(self.group_key_for(group_id) + ".s", str(int(size)), chord.chord_expires(self) or None)

    def add_to_chord(self, group_id: str, result: Any) -> None:
        """One more header task joined the chord (``Task.add_to_chord``)."""
        self._incr(self.group_key_for(group_id) + ".t", chord.chord_expires(self) or None)

    def on_chord_part_return(self, request: Any, state: str, result: Any) -> None:
        """A header task of a chord stored its final state (SUCCESS, FAILURE or REVOKED)."""
        if self.supports_native_chord and getattr(request, "chord", None):
            chord.part_return(self, request, state, result)

    def cleanup(self) -> None:
        """``celery.backend_cleanup``: drop expired results where the store keeps them."""

    def _atomic(self) -> AbstractContextManager[Any]:  # primitives inside: one atomic step
        raise NotImplementedError

    def _incr(self, key: str, ttl: float | None) -> int:
        raise NotImplementedError

    def _add(self, key: str, value: bytes | str, ttl: float | None) -> bool:
        """Set unless present (expired counts as absent); True when set."""
        raise NotImplementedError

    def _expire(self, key: str, ttl: float | None) -> None:
        raise NotImplementedError

    def _expire_prefix(self, prefix: str, ttl: float | None) -> None:
        raise NotImplementedError

    def _delete_prefix(self, prefix: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; the backend may be used again afterwards."""


class DisabledBackend(ResultBackend):
    """No result backend configured: storing is a no-op, reading is a clear error."""

    persistent = False
    keeps_state = False

    def __init__(self, app: App, url: str | None = None) -> None:
        self.app = app
        self.url = url

    def store_result(
        self, task_id: str, result: Any, state: str, traceback: str | None = None, request: Any = None
    ) -> dict[str, Any]:
        return {"status": state, "result": result, "task_id": task_id}

    def _unavailable(self, *args: Any, **kwargs: Any) -> Any:
        raise exceptions.DisabledBackend(
            "No result backend is configured. Set result_backend (for example "
            "'redis://localhost:6379/1') or pass backend=... to the app to read results."
        )

    get_task_meta = wait_for = forget = _unavailable
    save_group = restore_group = delete_group = set_chord_size = ensure_chords_allowed = _unavailable


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if hasattr(value, "total_seconds"):
        return float(value.total_seconds())
    return float(value) or None


__all__ = [
    "GROUP_KEY_PREFIX",
    "TASK_KEY_PREFIX",
    "DisabledBackend",
    "ResultBackend",
    "exception_from_dict",
    "exception_to_dict",
]
