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
import pickle
import time
import traceback as tb
from dataclasses import dataclass
from typing import Any

from taskq import _state, signals, states
from taskq.backend.chord import fail_chain
from taskq.canvas import Signature
from taskq.exceptions import ExceptionInfo, Ignore, Reject, Retry, Terminated
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

    def portable(self) -> Outcome:
        """A copy that pickles whatever the task returned or raised (prefork children send it back).

        The result is already stored by then; the parent only logs it, so a repr is enough.
        """
        return Outcome(
            self.state,
            retval=Shown(saferepr(self.retval)) if self.retval is not None else None,
            exc=_portable_exc(self.exc) if self.exc is not None else None,
            traceback=self.traceback,
            runtime=self.runtime,
            requeue=self.requeue,
        )


class Shown(str):
    """A value's repr standing in for the value in the parent's log line."""

    def __repr__(self) -> str:
        return str(self)


class ShownError(Exception):
    """A task's exception that did not pickle, standing in for it (its str and repr)."""

    def __init__(self, text: str, rep: str) -> None:
        super().__init__(text)
        self.rep = rep

    def __repr__(self) -> str:
        return self.rep

    def __reduce__(self) -> tuple[Any, ...]:
        return ShownError, (str(self), self.rep)


def _portable_exc(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return ShownError(str(exc), repr(exc))
    exc.__traceback__ = None
    return exc


def _entry(task: Task[Any, Any]) -> Any:
    """``task`` itself when its class overrides ``__call__`` (a base class wrapping every run, e.g.
    in a database session, as Celery allows), else its ``run``: the call Celery's worker makes."""
    return task if type(task).__call__ is not Task.__call__ else task.run


def _call(task: Task[Any, Any], context: Context) -> Any:
    result = _entry(task)(*context.args, **context.kwargs)
    if inspect.iscoroutine(result):
        # A coroutine task outside an event-loop pool still runs: on a loop of its own.
        return asyncio.run(result)
    return result


class _Run:
    """One run of a task: what happens before the call, and how the call's ending is recorded.

    Split out of ``execute`` so the event-loop pool can await the call between the two halves.
    """

    def __init__(self, task: Task[Any, Any], context: Context, store_result: bool) -> None:
        self.task = task
        self.context = context
        self.backend = task.backend if store_result else None
        self.ignore_result = context.ignore_result or task.ignore_result
        self.started = time.monotonic()
        self.token = _state._current_request.set((task, context))

    def begin(self) -> None:
        task, context, app = self.task, self.context, self.task.app
        track_started = task.track_started if task.track_started is not None else app.conf.task_track_started
        if self.backend is not None and track_started and not self.ignore_result:
            _store(
                self.backend.mark_as_started,
                context,
                request=context,
                pid=os.getpid(),
                hostname=context.hostname,
            )
        signals.task_prerun.send(
            sender=task, task_id=context.id, task=task, args=context.args, kwargs=context.kwargs
        )
        task.before_start(context.id or "", context.args, context.kwargs)

    def ended(self, retval: Any = None, exc: Exception | None = None) -> Outcome:
        """Decide and record the outcome of the call: returned ``retval`` or raised ``exc``."""
        task, context, backend = self.task, self.context, self.backend
        if exc is None:
            outcome = _on_success(task, context, retval, backend, self.ignore_result, self._elapsed())
        elif isinstance(exc, Ignore):
            outcome = Outcome(states.IGNORED)
        elif isinstance(exc, Reject):
            outcome = _on_reject(task, context, exc, backend)
        elif isinstance(exc, Retry):
            outcome = _on_retry(task, context, exc, backend)
        else:
            outcome = _on_failure(task, context, exc, backend, self.ignore_result)
        outcome.runtime = self._elapsed()
        if outcome.state not in (states.RETRY, states.IGNORED, states.REJECTED):  # Celery's IGNORE_STATES
            _handler(task.after_return, outcome.state, outcome.exc or outcome.retval, context.id, context.args,
                     context.kwargs, _einfo(outcome))  # fmt: skip
        signals.task_postrun.send(
            sender=task, task_id=context.id, task=task, args=context.args,
            kwargs=context.kwargs, retval=outcome.retval if outcome.exc is None else outcome.exc,
            state=outcome.state,
        )  # fmt: skip
        return outcome

    def close(self) -> None:
        _state._current_request.reset(self.token)

    def _elapsed(self) -> float:
        return time.monotonic() - self.started


def execute(task: Task[Any, Any], context: Context, *, store_result: bool = True) -> Outcome:
    """Run ``task`` under ``context`` and record the outcome in the result backend."""
    run = _Run(task, context, store_result)
    try:
        try:
            run.begin()
            retval = _call(task, context)
        except Terminated:
            raise  # revoke(terminate=True) stopped it: the pool reports it, the worker stores REVOKED
        except Exception as exc:
            return run.ended(exc=exc)
        return run.ended(retval)
    finally:
        run.close()


async def execute_async(task: Task[Any, Any], context: Context, *, store_result: bool = True) -> Outcome:
    """``execute`` for a pool with an event loop: a coroutine task is awaited on that loop.

    ``asyncio.CancelledError`` is not caught: the pool cancels a coroutine for a time limit or
    a terminate, and decides the outcome itself (see ``fail``).
    """
    run = _Run(task, context, store_result)
    try:
        try:
            run.begin()
            retval = _entry(task)(*context.args, **context.kwargs)
            if inspect.isawaitable(retval):
                retval = await retval
        except Terminated:
            raise
        except Exception as exc:
            return run.ended(exc=exc)
        return run.ended(retval)
    finally:
        run.close()


def fail(task: Task[Any, Any], context: Context, exc: BaseException, traceback: str | None = None) -> Outcome:
    """Record a failure decided outside the task: a hard time limit, a lost child, a terminate.

    Runs in the worker, not where the task ran (that process may be dead), and gives the task
    the same follow-ups as a failure it raised itself: FAILURE stored, chord member counted,
    rest of the chain failed, errbacks run, ``on_failure`` and ``task_failure``.
    """
    token = _state._current_request.set((task, context))
    try:
        backend = task.backend
        ignore_result = context.ignore_result or task.ignore_result
        outcome = _on_failure(task, context, exc, backend, ignore_result, traceback or _format(exc))
        _handler(
            task.after_return, outcome.state, exc, context.id, context.args, context.kwargs, _einfo(outcome)
        )
        return outcome
    finally:
        _state._current_request.reset(token)


def _format(exc: BaseException) -> str:
    return "".join(tb.format_exception(type(exc), exc, exc.__traceback__))


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
    task: Task[Any, Any],
    context: Context,
    exc: BaseException,
    backend: Any,
    ignore_result: bool,
    traceback: str | None = None,
) -> Outcome:
    outcome = Outcome(states.FAILURE, exc=exc, traceback=traceback or _format(exc))
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
    outcome = Outcome(states.RETRY, exc=exc, traceback=_format(exc))
    einfo = ExceptionInfo(exc, outcome.traceback)
    reason = exc.exc if exc.exc is not None else exc
    if backend is not None:
        _store(backend.store_result, context, reason, states.RETRY, outcome.traceback, context)
    _handler(task.on_retry, reason, context.id, context.args, context.kwargs, einfo)
    signals.task_retry.send(sender=task, request=context, reason=exc, einfo=einfo)
    return outcome


def _on_reject(task: Task[Any, Any], context: Context, exc: Reject, backend: Any) -> Outcome:
    """Reject: requeued, nothing stored; dropped, a FAILURE so the task is not PENDING forever."""
    outcome = Outcome(states.REJECTED, exc=exc, requeue=exc.requeue, traceback=_format(exc))
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


def shown(value: Any) -> str:
    """A run's value as logs and events show it: a pool child's value is already its repr."""
    return str(value) if isinstance(value, Shown) else saferepr(value)


class _ShownLater:
    """A run's value, turned into its log text only if the line is written."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return shown(self.value)


def describe(outcome: Outcome, name: str, task_id: str | None) -> tuple[Any, ...]:
    """The worker's log line for an outcome, in Celery's wording: ``(level, format, *args)``.

    Formatted only when its level is on: a busy worker logs at WARNING, and building every
    success line it then drops cost more than the rest of settling the task.
    """
    if outcome.state == states.SUCCESS:
        return (
            logging.INFO,
            "Task %s[%s] succeeded in %.6fs: %s",
            name, task_id, outcome.runtime, _ShownLater(outcome.retval),
        )  # fmt: skip
    if outcome.state == states.FAILURE:
        return (
            logging.ERROR,
            "Task %s[%s] raised unexpected: %r\n%s",
            name,
            task_id,
            outcome.exc,
            outcome.traceback,
        )
    if outcome.state == states.RETRY:
        return logging.INFO, "Task %s[%s] retry: %s", name, task_id, outcome.exc
    if outcome.state == states.REJECTED:
        return (
            logging.WARNING,
            "Task %s[%s] rejected: %r (requeue=%s)",
            name, task_id, outcome.exc, outcome.requeue,
        )  # fmt: skip
    return logging.INFO, "Task %s[%s] %s", name, task_id, outcome.state.lower()
