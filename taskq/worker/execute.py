"""Running one task: what its outcome is and what gets stored, decided here only.

Every pool (and ``Task.apply`` for eager runs) calls ``execute``, so a task behaves the same
whether it runs in the worker's thread, a pool thread or eagerly in a test.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
import traceback as tb
from dataclasses import dataclass
from typing import Any

from taskq import _state, signals, states
from taskq.exceptions import Ignore, Reject, Retry
from taskq.message import saferepr
from taskq.task import Context, Task

logger = logging.getLogger("taskq.worker")


@dataclass
class Outcome:
    """How a run ended; the consumer uses it to ack or reject and to log."""

    state: str
    retval: Any = None
    exc: BaseException | None = None
    traceback: str | None = None
    runtime: float = 0.0
    requeue: bool = False


def _call(task: Task[Any, Any], context: Context) -> Any:
    result = task.run(*context.args, **context.kwargs)
    if inspect.iscoroutine(result):
        # A coroutine task outside an event-loop pool still runs: on a loop of its own.
        return asyncio.run(result)
    return result


def execute(task: Task[Any, Any], context: Context, *, store_result: bool = True) -> Outcome:
    """Run ``task`` under ``context`` and record the outcome in the result backend."""
    app = task.app
    backend = task.backend if store_result else None
    ignore_result = context.ignore_result or task.ignore_result
    track_started = task.track_started if task.track_started is not None else app.conf.task_track_started
    token = _state._current_request.set((task, context))
    started = time.monotonic()
    try:
        if backend is not None and track_started and not ignore_result:
            _store(
                backend.mark_as_started, context, request=context, pid=os.getpid(), hostname=context.hostname
            )
        signals.task_prerun.send(
            sender=task, task_id=context.id, task=task, args=context.args, kwargs=context.kwargs
        )
        try:
            retval = _call(task, context)
        except Ignore:
            outcome = Outcome(states.IGNORED)
        except Reject as exc:
            outcome = Outcome(states.REJECTED, exc=exc, requeue=exc.requeue)
        except Retry as exc:
            outcome = Outcome(states.RETRY, exc=exc, traceback=tb.format_exc())
            if backend is not None:
                _store(
                    backend.store_result, context, exc.exc or exc, states.RETRY, outcome.traceback, context
                )
        except Exception as exc:
            outcome = Outcome(states.FAILURE, exc=exc, traceback=tb.format_exc())
            _on_failure(task, context, outcome, backend, ignore_result)
        else:
            outcome = Outcome(states.SUCCESS, retval=retval)
            if backend is not None and not ignore_result:
                _store(backend.mark_as_done, context, retval, request=context)
            signals.task_success.send(sender=task, result=retval)
        outcome.runtime = time.monotonic() - started
        signals.task_postrun.send(
            sender=task, task_id=context.id, task=task, args=context.args,
            kwargs=context.kwargs, retval=outcome.retval if outcome.exc is None else outcome.exc,
            state=outcome.state,
        )  # fmt: skip
        return outcome
    finally:
        _state._current_request.reset(token)


def _on_failure(
    task: Task[Any, Any], context: Context, outcome: Outcome, backend: Any, ignore_result: bool
) -> None:
    exc = outcome.exc
    assert exc is not None
    store = (
        not ignore_result
        or task.store_errors_even_if_ignored
        or task.app.conf.task_store_errors_even_if_ignored
    )
    if backend is not None and store:
        _store(backend.mark_as_failure, context, exc, outcome.traceback, request=context)
    signals.task_failure.send(
        sender=task, task_id=context.id, exception=exc, args=context.args,
        kwargs=context.kwargs, traceback=exc.__traceback__, einfo=outcome.traceback,
    )  # fmt: skip


def _store(method: Any, context: Context, *args: Any, **kwargs: Any) -> None:
    """Write to the result backend; a backend outage is logged, never turned into a task error."""
    try:
        method(context.id or "", *args, **kwargs)
    except Exception:
        logger.exception("could not store the result of %s[%s]", context.task, context.id)


def describe(outcome: Outcome, name: str, task_id: str | None) -> tuple[int, str]:
    """The worker's log line for an outcome, in Celery's wording."""
    if outcome.state == states.SUCCESS:
        return (
            logging.INFO,
            f"Task {name}[{task_id}] succeeded in {outcome.runtime:.6f}s: {saferepr(outcome.retval)}",
        )
    if outcome.state == states.FAILURE:
        return (
            logging.ERROR,
            f"Task {name}[{task_id}] raised unexpected: {outcome.exc!r}\n{outcome.traceback}",
        )
    if outcome.state == states.RETRY:
        return logging.INFO, f"Task {name}[{task_id}] retry: {outcome.exc}"
    if outcome.state == states.REJECTED:
        return (
            logging.WARNING,
            f"Task {name}[{task_id}] rejected: {outcome.exc!r} (requeue={outcome.requeue})",
        )
    return logging.INFO, f"Task {name}[{task_id}] {outcome.state.lower()}"
