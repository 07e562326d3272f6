"""The worker's events: which task event a request or a run's end gives, and the heartbeat.

Kept apart from ``taskq.events`` (the wire, shared with clients and monitors) because these
rules read the worker's own objects: a parsed ``TaskRequest`` and an ``execute.Outcome``.
"""

from __future__ import annotations

import threading
from typing import Any

from taskq import states
from taskq.events import EventDispatcher
from taskq.worker.execute import Outcome, shown

__all__ = ["Heart", "outcome_events", "received_fields", "send_outcome"]


def safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as exc:  # a user __repr__ may raise; an event must still go out
        return f"<unrepresentable {type(value).__name__}: {exc!r}>"


def received_fields(req: Any) -> dict[str, Any]:
    """``task-received`` fields of a ``message.TaskRequest``, in Celery's order."""
    return {
        "uuid": req.id, "name": req.shadow or req.name, "args": req.argsrepr, "kwargs": req.kwargsrepr,
        "root_id": req.root_id, "parent_id": req.parent_id, "retries": req.retries,
        "eta": req.eta.isoformat() if req.eta else None,
        "expires": req.expires.isoformat() if req.expires else None,
    }  # fmt: skip


def outcome_events(outcome: Outcome) -> list[tuple[str, dict[str, Any]]]:
    """The task events a run's ``execute.Outcome`` stands for (none for ``Ignore``)."""
    state, exc = outcome.state, outcome.exc
    error = {"exception": safe_repr(exc), "traceback": outcome.traceback or ""}
    if state == states.SUCCESS:
        return [("task-succeeded", {"result": shown(outcome.retval), "runtime": outcome.runtime})]
    if state == states.FAILURE:
        return [("task-failed", error)]
    if state == states.RETRY:
        return [("task-retried", error)]
    if state == states.REJECTED and not outcome.requeue:  # Celery records it as a failure too
        return [("task-failed", error)]
    return []


def send_outcome(events: EventDispatcher, task_id: str, outcome: Outcome) -> None:
    """The events of a run's end (succeeded, failed, retried), while task events are on."""
    if events.task_events:
        for type_, fields in outcome_events(outcome):
            events.send(type_, uuid=task_id, **fields)


class Heart:
    """``worker-online`` now, ``worker-heartbeat`` every ``interval`` s, ``worker-offline`` at stop."""

    def __init__(self, dispatcher: EventDispatcher, interval: float | None = None) -> None:
        self.dispatcher = dispatcher
        self.interval = float(interval or dispatcher.freq)
        dispatcher.freq = self.interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.dispatcher.heartbeat("worker-online")
        self._thread = threading.Thread(target=self._beat, name="taskq-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self.dispatcher.heartbeat()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 1.0)
            self._thread = None
            self.dispatcher.heartbeat("worker-offline")
