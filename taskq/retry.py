"""Retrying a task: ``Task.retry`` and ``autoretry_for``, with Celery's rules.

A retry re-sends the same task id with ``retries + 1`` and an ETA, then raises ``Retry`` so
the worker records RETRY for this run. Past ``max_retries`` the task fails instead, with the
exception given to ``retry(exc=...)`` or ``MaxRetriesExceededError``.
"""

from __future__ import annotations

import functools
import inspect
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from taskq.canvas import Signature
from taskq.exceptions import Ignore, Reject, Retry
from taskq.message import PROTOCOL_HEADERS

if TYPE_CHECKING:
    from taskq.task import Context, Task


def backoff_countdown(factor: float, retries: int, maximum: float, full_jitter: bool) -> int:
    """Exponential back-off: ``factor * 2**retries`` capped at ``maximum``, jittered below it."""
    countdown = min(maximum, factor * (2**retries))
    if full_jitter:
        countdown = random.randrange(int(countdown) + 1)
    return max(0, int(countdown))


def _execution_options(task: Task[Any, Any], request: Context) -> dict[str, Any]:
    """The send options that make a re-sent message continue this one (same id, workflow)."""
    hard, soft = request.timelimit or (None, None)
    headers = {k: v for k, v in (request.headers or {}).items() if k not in PROTOCOL_HEADERS}
    options: dict[str, Any] = {
        "task_id": request.id,
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "group_id": request.group,
        "group_index": request.group_index,
        "shadow": request.shadow,
        "chord": request.chord,
        "chain": request.chain,
        "link": request.callbacks,
        "link_error": request.errbacks,
        "expires": request.expires,
        "time_limit": hard,
        "soft_time_limit": soft,
        "headers": headers or None,
        "reply_to": request.reply_to,
        "origin": request.origin,
        "ignore_result": request.ignore_result or task.ignore_result,
    }
    delivery_info = request.delivery_info or {}
    if delivery_info.get("priority") is not None:
        options["priority"] = delivery_info["priority"]
    if delivery_info.get("exchange") == "" and delivery_info.get("routing_key"):
        options["queue"] = delivery_info["routing_key"]  # published to a queue: back to it
    elif delivery_info.get("exchange"):
        options["exchange"] = delivery_info["exchange"]
        options["routing_key"] = delivery_info.get("routing_key")
    return {k: v for k, v in options.items() if v is not None}


def retry(
    task: Task[Any, Any],
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    exc: BaseException | None = None,
    throw: bool = True,
    eta: Any = None,
    countdown: float | None = None,
    max_retries: int | None = None,
    **options: Any,
) -> Retry:
    """``Task.retry``: send the next attempt (or fail past the limit), then raise ``Retry``."""
    request = task.request
    if request.called_directly:
        # Outside a worker run there is nothing to re-send: behave like a plain exception.
        raise exc or Retry("Task can be retried", None)
    retries = request.retries + 1
    max_retries = task.max_retries if max_retries is None else max_retries
    if not eta and countdown is None:
        countdown = task.default_retry_delay
    args = request.args if args is None else args
    kwargs = request.kwargs if kwargs is None else kwargs
    send_options = {**_execution_options(task, request), **options, "retries": retries}
    if eta is not None:
        send_options["eta"] = eta
    else:
        send_options["countdown"] = countdown
    sig = Signature(task, args, kwargs, send_options, app=task.app)
    if max_retries is not None and retries > max_retries:
        if exc is not None:
            raise exc
        raise task.MaxRetriesExceededError(
            f"Can't retry {task.name}[{request.id}] args:{tuple(args)} kwargs:{dict(kwargs)}",
            task_args=args,
            task_kwargs=kwargs,
        )
    signal = Retry(exc=exc, when=eta or countdown, is_eager=request.is_eager, sig=sig)
    if not request.is_eager:  # eager runs re-run in Task.apply, nothing is sent
        try:
            sig.apply_async()
        except Exception as error:  # cannot re-send: the message must not be lost silently
            raise Reject(error, requeue=False) from error
    if throw:
        raise signal
    return signal


def _retry_for(task: Task[Any, Any], exc: BaseException) -> NoReturn:
    """What ``autoretry_for`` does with a matching exception: retry with ``retry_kwargs``."""
    options = dict(task.retry_kwargs or {})
    if task.retry_backoff:
        factor = int(max(1.0, float(task.retry_backoff)))  # Celery: a whole number of seconds >= 1
        options["countdown"] = backoff_countdown(
            factor, task.request.retries, int(task.retry_backoff_max), task.retry_jitter
        )
    raise retry(task, exc=exc, **options) from exc


def add_autoretry(task: Task[Any, Any]) -> None:
    """Wrap ``task.run`` so exceptions in ``autoretry_for`` call ``retry`` (with back-off)."""
    retry_on = tuple(task.autoretry_for or ())
    if not retry_on:
        return
    skip: tuple[type[BaseException], ...] = (Ignore, Retry, Reject, *tuple(task.dont_autoretry_for or ()))
    run: Callable[..., Any] = task.run

    if inspect.iscoroutinefunction(run):

        async def autoretrying_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await run(*args, **kwargs)
            except skip:
                raise
            except retry_on as exc:
                _retry_for(task, exc)

        task.run = functools.wraps(run)(autoretrying_async)
        return

    def autoretrying(*args: Any, **kwargs: Any) -> Any:
        try:
            return run(*args, **kwargs)
        except skip:
            raise
        except retry_on as exc:
            _retry_for(task, exc)

    task.run = functools.wraps(run)(autoretrying)
