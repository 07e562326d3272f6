"""Running one task: what its outcome is, what gets stored, what runs next. Decided here only.

Every pool (and ``Task.apply`` for eager runs) calls ``execute``, so a task behaves the same
whether it runs in the worker's thread, a pool thread or eagerly in a test: the same states,
handlers (``before_start``/``on_success``/``on_failure``/``on_retry``/``after_return``),
signals, and follow-ups (``link`` callbacks, ``link_error`` errbacks, the next chain step).
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
from taskq.backend.chord import fail_chain
from taskq.canvas import Signature
from taskq.exceptions import ExceptionInfo, Ignore, Reject, Retry
from taskq.saferepr import saferepr
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
            task.before_start(context.id or "", context.args, context.kwargs)
            retval = _call(task, context)
        except Ignore:
            outcome = Outcome(states.IGNORED)
        except Reject as exc:
            outcome = _on_reject(task, context, exc, backend)
        except Retry as exc:
            outcome = _on_retry(task, context, exc, backend)
        except Exception as exc:
            outcome = _on_failure(task, context, exc, backend, ignore_result)
        else:
            outcome = _on_success(task, context, retval, backend, ignore_result, time.monotonic() - started)
        outcome.runtime = time.monotonic() - started
        if outcome.state not in (states.RETRY, states.IGNORED, states.REJECTED):  # Celery's IGNORE_STATES
            _handler(task.after_return, outcome.state, outcome.exc or outcome.retval, context.id, context.args,
                     context.kwargs, _einfo(outcome))  # fmt: skip
        signals.task_postrun.send(
            sender=task, task_id=context.id, task=task, args=context.args,
            kwargs=context.kwargs, retval=outcome.retval if outcome.exc is None else outcome.exc,
            state=outcome.state,
        )  # fmt: skip
        return outcome
    finally:
        _state._current_request.reset(token)


def _on_success(
    task: Task[Any, Any], context: Context, retval: Any, backend: Any, ignore_result: bool, runtime: float
) -> Outcome:
    # Follow-ups are sent before the result is stored, so the stored meta lists them as children.
    _send_callbacks(task, context, retval)
    if backend is not None and not ignore_result:
        _store(backend.mark_as_done, context, retval, request=context)
    if context.chord and backend is not None:
        _follow_up(lambda: backend.on_chord_part_return(context, states.SUCCESS, retval))
    _handler(task.on_success, retval, context.id, context.args, context.kwargs)
    signals.task_success.send(sender=task, result=retval, runtime=runtime)
    return Outcome(states.SUCCESS, retval=retval)


def _on_failure(
    task: Task[Any, Any], context: Context, exc: BaseException, backend: Any, ignore_result: bool
) -> Outcome:
    outcome = Outcome(states.FAILURE, exc=exc, traceback=tb.format_exc())
    einfo = ExceptionInfo(exc, outcome.traceback)
    store = (
        not ignore_result
        or task.store_errors_even_if_ignored
        or task.app.conf.task_store_errors_even_if_ignored
    )
    if backend is not None and store:
        _store(backend.mark_as_failure, context, exc, outcome.traceback, request=context)
    if backend is not None:
        if context.chord:
            _follow_up(lambda: backend.on_chord_part_return(context, states.FAILURE, exc))
        if context.chain:  # the steps after a failed one will never run: say so in their results
            _follow_up(lambda: fail_chain(backend, context.chain, exc, outcome.traceback))
    _handler(task.on_failure, exc, context.id, context.args, context.kwargs, einfo)
    signals.task_failure.send(
        sender=task, task_id=context.id, exception=exc, args=context.args,
        kwargs=context.kwargs, traceback=exc.__traceback__, einfo=einfo,
    )  # fmt: skip
    _send_errbacks(task, context, exc, outcome.traceback)
    return outcome


def _on_retry(task: Task[Any, Any], context: Context, exc: Retry, backend: Any) -> Outcome:
    outcome = Outcome(states.RETRY, exc=exc, traceback=tb.format_exc())
    einfo = ExceptionInfo(exc, outcome.traceback)
    reason = exc.exc if exc.exc is not None else exc
    if backend is not None:
        _store(backend.store_result, context, reason, states.RETRY, outcome.traceback, context)
    _handler(task.on_retry, reason, context.id, context.args, context.kwargs, einfo)
    signals.task_retry.send(sender=task, request=context, reason=exc, einfo=einfo)
    return outcome


def _on_reject(task: Task[Any, Any], context: Context, exc: Reject, backend: Any) -> Outcome:
    """Reject: requeued, nothing stored; dropped, a FAILURE so the task is not PENDING forever."""
    outcome = Outcome(states.REJECTED, exc=exc, requeue=exc.requeue, traceback=tb.format_exc())
    if not exc.requeue:
        if backend is not None:
            _store(backend.mark_as_failure, context, exc, outcome.traceback, request=context)
        signals.task_failure.send(
            sender=task, task_id=context.id, exception=exc, args=context.args,
            kwargs=context.kwargs, traceback=exc.__traceback__, einfo=ExceptionInfo(exc, outcome.traceback),
        )  # fmt: skip
    return outcome


def _send_callbacks(task: Task[Any, Any], context: Context, retval: Any) -> None:
    """``link`` callbacks get the return value first in their args; then the next chain step."""
    app = task.app
    callbacks = [Signature.from_dict(cb, app) for cb in context.callbacks or ()]
    if len(callbacks) == 1:
        _follow_up(lambda: callbacks[0].apply_async((retval,)))
    elif callbacks:  # Celery 5.7: groups on their own, the other callbacks together as one group
        from taskq.workflows import group

        plain = [cb for cb in callbacks if not isinstance(cb, group)]
        for grouped in (cb for cb in callbacks if isinstance(cb, group)):
            _follow_up(lambda g=grouped: g.apply_async((retval,)))
        if plain:
            _follow_up(lambda: group(*plain, app=app).apply_async((retval,)))
    if context.chain:
        rest = list(context.chain)
        step = Signature.from_dict(rest.pop(), app)
        _follow_up(lambda: step.apply_async((retval,), chain=rest))


def _send_errbacks(task: Task[Any, Any], context: Context, exc: BaseException, traceback: str | None) -> None:
    """Errbacks taking (request, exc, traceback) run here, inline; old ones get the task id."""
    app = task.app
    old_style = []
    for errback in context.errbacks or ():
        sig = Signature.from_dict(errback, app)
        handler = app.tasks.get(sig.task)
        if handler is not None and _positional_count(handler.run) > 1:
            _follow_up(lambda s=sig: s(context, exc, traceback))
        else:
            old_style.append(sig)
    if old_style:  # Celery 5.7 sends them together, as one group, with the failed task's id
        from taskq.workflows import group

        _follow_up(lambda: group(*old_style, app=app).apply_async((context.id,)))


def _positional_count(fn: Any) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 0
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 99
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _follow_up(action: Any) -> None:
    """A callback that cannot be sent is logged; it never changes the task's own outcome."""
    try:
        action()
    except Exception:
        logger.exception("could not run or send a follow-up (link/link_error/chain)")


def _handler(method: Any, *args: Any) -> None:
    try:
        method(*args)
    except Exception:
        logger.exception("task handler %s raised", getattr(method, "__name__", method))


def _einfo(outcome: Outcome) -> ExceptionInfo | None:
    return ExceptionInfo(outcome.exc, outcome.traceback) if outcome.exc is not None else None


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
