"""In-process result backend, for tests, eager mode and the ``memory://`` transport.

Results live in one dict per process shared by every app using ``memory://``, so a worker
thread and the test that started it see the same store; waiting is a condition wake-up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from taskq import states
from taskq.backend.base import ResultBackend
from taskq.exceptions import TimeoutError

_STORE: dict[str, tuple[bytes | str, float | None]] = {}
_CHANGED = threading.Condition()


class MemoryBackend(ResultBackend):
    """Key/value store in a process-wide dict; TTLs honoured on read."""

    persistent = False
    supports_native_wait = True
    supports_native_chord = True

    def _get(self, key: str) -> bytes | str | None:
        item = _STORE.get(key)
        if item is None:
            return None
        value, deadline = item
        if deadline is not None and deadline < time.monotonic():
            _STORE.pop(key, None)
            return None
        return value

    def _set(self, key: str, value: bytes | str, ttl: float | None) -> None:
        with _CHANGED:
            _STORE[key] = (value, time.monotonic() + ttl if ttl else None)
            _CHANGED.notify_all()

    def _delete(self, key: str) -> None:
        _STORE.pop(key, None)

    # -- chord primitives: one process-wide lock (re-entrant) makes a step atomic ----------------
    @contextmanager
    def _atomic(self) -> Iterator[None]:
        with _CHANGED:
            yield

    def _incr(self, key: str, ttl: float | None) -> int:
        with _CHANGED:
            value = int(self._get(key) or 0) + 1
            self._set(key, str(value), ttl)
            return value

    def _add(self, key: str, value: bytes | str, ttl: float | None) -> bool:
        with _CHANGED:
            if self._get(key) is not None:
                return False
            self._set(key, value, ttl)
            return True

    def _expire(self, key: str, ttl: float | None) -> None:
        with _CHANGED:
            value = self._get(key)
            if value is not None:
                _STORE[key] = (value, time.monotonic() + ttl if ttl else None)

    def _expire_prefix(self, prefix: str, ttl: float | None) -> None:
        with _CHANGED:
            for key in [k for k in list(_STORE) if k.startswith(prefix)]:
                self._expire(key, ttl)

    def _delete_prefix(self, prefix: str) -> None:
        with _CHANGED:
            for key in [k for k in list(_STORE) if k.startswith(prefix)]:
                _STORE.pop(key, None)

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        on_interval: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with _CHANGED:
            while True:
                meta = self.get_task_meta(task_id)
                if meta["status"] in states.READY_STATES:
                    return meta
                if on_interval is not None:
                    on_interval()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"the operation timed out after {timeout} s (task {task_id})")
                _CHANGED.wait(interval if remaining is None else min(interval, remaining))

    @staticmethod
    def clear() -> None:
        """Drop every stored result (between tests)."""
        _STORE.clear()
