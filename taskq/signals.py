"""Signals under Celery's names, with Celery's argument names and ``sender`` semantics.

A receiver that raises is logged and skipped: a monitoring hook must never change what
happens to a task.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("taskq.signals")

Receiver = Callable[..., Any]


class Signal:
    """A named hook receivers connect to, optionally only for one sender."""

    def __init__(self, name: str, providing_args: tuple[str, ...] = ()) -> None:
        self.name = name
        self.providing_args = providing_args
        self._receivers: list[tuple[Any, Any, Any]] = []  # (key, sender, ref-or-fn)
        self._lock = threading.Lock()

    def connect(
        self,
        receiver: Receiver | None = None,
        *,
        sender: Any = None,
        weak: bool = True,
        dispatch_uid: Any = None,
    ) -> Any:
        """Connect ``receiver``; with no receiver, return a decorator (``@sig.connect(...)``)."""
        if receiver is None:

            def decorate(fn: Receiver) -> Receiver:
                self.connect(fn, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
                return fn

            return decorate
        key = dispatch_uid if dispatch_uid is not None else _receiver_id(receiver)
        ref: Any = receiver
        if weak:
            ref = weakref.WeakMethod(receiver) if hasattr(receiver, "__self__") else weakref.ref(receiver)
        with self._lock:
            if not any(k == key and s is sender for k, s, _ in self._receivers):
                self._receivers.append((key, sender, ref))
        return receiver

    def disconnect(
        self, receiver: Receiver | None = None, *, sender: Any = None, dispatch_uid: Any = None
    ) -> bool:
        key = dispatch_uid if dispatch_uid is not None else _receiver_id(receiver)
        with self._lock:
            before = len(self._receivers)
            self._receivers = [r for r in self._receivers if not (r[0] == key and r[1] is sender)]
            return len(self._receivers) != before

    def receivers_for(self, sender: Any) -> list[Receiver]:
        out = []
        for _, wanted, ref in list(self._receivers):
            fn = ref() if isinstance(ref, (weakref.ref, weakref.WeakMethod)) else ref
            if fn is not None and (
                wanted is None or wanted is sender or wanted == getattr(sender, "name", sender)
            ):
                out.append(fn)
        return out

    def send(self, sender: Any, **named: Any) -> list[tuple[Receiver, Any]]:
        """Call every receiver; exceptions are logged and returned, never raised."""
        if not self._receivers:
            return []
        responses = []
        for fn in self.receivers_for(sender):
            try:
                responses.append((fn, fn(signal=self, sender=sender, **named)))
            except Exception as exc:
                logger.exception("signal %s: receiver %r raised", self.name, fn)
                responses.append((fn, exc))
        return responses

    def __repr__(self) -> str:
        return f"<Signal: {self.name}>"


def _receiver_id(receiver: Any) -> Any:
    if hasattr(receiver, "__func__"):
        return (id(receiver.__self__), id(receiver.__func__))
    return id(receiver)


before_task_publish = Signal("before_task_publish")
after_task_publish = Signal("after_task_publish")
task_received = Signal("task_received")
task_prerun = Signal("task_prerun")
task_postrun = Signal("task_postrun")
task_success = Signal("task_success")
task_failure = Signal("task_failure")
task_retry = Signal("task_retry")
task_revoked = Signal("task_revoked")
task_rejected = Signal("task_rejected")
task_unknown = Signal("task_unknown")
task_internal_error = Signal("task_internal_error")
celeryd_init = Signal("celeryd_init")
celeryd_after_setup = Signal("celeryd_after_setup")
import_modules = Signal("import_modules")
worker_init = Signal("worker_init")
worker_ready = Signal("worker_ready")
worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown")
heartbeat_sent = Signal("heartbeat_sent")
worker_shutting_down = Signal("worker_shutting_down")
worker_shutdown = Signal("worker_shutdown")
beat_init = Signal("beat_init")
beat_embedded_init = Signal("beat_embedded_init")
setup_logging = Signal("setup_logging")
after_setup_logger = Signal("after_setup_logger")
after_setup_task_logger = Signal("after_setup_task_logger")
