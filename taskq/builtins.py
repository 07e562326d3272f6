"""Built-in tasks under Celery's names, so messages sent by Celery clients run on taskq workers.

- ``celery.chord_unlock``: the chord barrier of backends that cannot count parts themselves
  (``supports_native_chord`` False): polls the header results every
  ``result_chord_retry_interval`` and then sends the body, or fails it with ChordError.
  Message: args ``[group_id, body]``, kwargs ``{"interval", "max_retries", "result": [result
  tuples]}`` (Celery 5.7 may add ``_chord_unlock_exchange_type``), countdown 1 s.
- ``celery.backend_cleanup``: deletes expired results from stores that keep them (SQLite).
- ``celery.accumulate``: returns its arguments (``Task.replace`` with a group), or ``args[index]``.

``celery.chain``/``group``/``chord``/``map``/``starmap``/``chunks`` are registered by the canvas.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from taskq.backend import chord
from taskq.canvas import Signature
from taskq.exceptions import ChordError, Retry
from taskq.result import GroupResult, result_from_tuple

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.task import Task

logger = logging.getLogger("taskq.builtins")

ROUTING_OPTIONS = ("exchange", "exchange_type", "routing_key", "headers")


def register_builtins(app: App) -> None:
    """Register the built-in tasks in ``app`` (again: no-op). Call it from ``App.__init__``."""
    if "celery.chord_unlock" in app.tasks:
        return

    def unlock_chord(
        self: Task[Any, Any],
        group_id: str,
        callback: Any,
        interval: float | None = None,
        max_retries: int | None = None,
        result: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        _unlock_chord(app, self, group_id, callback, interval, max_retries, result or (), kwargs)

    def backend_cleanup() -> None:
        app.backend.cleanup()

    def accumulate(*args: Any, **kwargs: Any) -> Any:
        index = kwargs.get("index")
        return args[index] if index is not None else args

    app.task(
        name="celery.chord_unlock", bind=True, max_retries=None, ignore_result=True, lazy=False,
        default_retry_delay=app.conf.get("result_chord_retry_interval") or 1.0, shared=False,
    )(unlock_chord)  # fmt: skip
    app.task(name="celery.backend_cleanup", shared=False, lazy=False)(backend_cleanup)
    app.task(name="celery.accumulate", shared=False, lazy=False)(accumulate)


def _unlock_chord(
    app: App,
    task: Task[Any, Any],
    group_id: str,
    callback: Any,
    interval: float | None,
    max_retries: int | None,
    result: Sequence[Any],
    kwargs: dict[str, Any],
) -> None:
    """One poll: not ready -> retry later; ready -> send the body, or fail it (ChordError)."""
    backend = app.backend
    interval = task.default_retry_delay if interval is None else interval
    header = GroupResult(group_id, [result_from_tuple(r, app) for r in result], app=app)  # type: ignore[misc]
    body = Signature.from_dict(callback, app)
    retry_options = {}
    if kwargs.get("_chord_unlock_exchange_type") is not None:
        retry_options["exchange_type"] = kwargs["_chord_unlock_exchange_type"]
    ready_error: BaseException | None = None
    try:
        try:
            ready = header.ready()
        except Exception as exc:
            ready_error = exc
            raise task.retry(exc=exc, countdown=interval, max_retries=max_retries, **retry_options) from exc
        if not ready:
            raise task.retry(countdown=interval, max_retries=max_retries, **retry_options)
    except Retry:
        raise
    except Exception as exc:  # cannot poll again (retries exhausted, broker refused): fail now
        cause = getattr(exc, "reason", None) or exc
        reason = f"chord_unlock could not be retried: {cause!r}"
        if ready_error is not None and ready_error is not cause:
            reason += f" (after deps.ready() raised {ready_error!r})"
        logger.error("Chord %r: %s", group_id, reason)
        chord.fail_body(backend, body, _chord_error(reason, cause))
        raise
    try:
        values = chord.join(header.results, app.conf.get("result_chord_join_timeout"))
    except Exception as exc:
        culprit = next((r for r in header.results if not isinstance(r, GroupResult) and r.failed()), None)
        reason = f"Dependency {culprit.id} raised {exc!r}" if culprit is not None else repr(exc)
        logger.error("Chord %r raised: %s", group_id, reason)
        chord.fail_body(backend, body, _chord_error(reason, exc))
        return
    try:
        body.apply_async((values,))
    except Exception as exc:
        logger.exception("Chord %r raised: %r", group_id, exc)
        chord.fail_body(backend, body, _chord_error(f"Callback error: {exc!r}", exc))


def _chord_error(message: str, cause: Any) -> ChordError:
    error = ChordError(message)
    if isinstance(cause, Exception):
        error.__cause__ = cause
    return error


def send_chord_unlock(
    app: App,
    header: GroupResult,
    body: Signature,
    countdown: float = 1,
    interval: float | None = None,
    max_retries: int | None = None,
) -> None:
    """Start polling a chord's header (Celery's ``fallback_chord_unlock``), for the canvas.

    Routed where the body goes (its queue, or its task's route), with the body's priority.
    """
    body_task = app.tasks.get(body.task)
    kwargs: dict[str, Any] = {
        "interval": interval,
        "max_retries": max_retries,
        "result": [r.as_tuple() for r in header.results],
    }
    options: dict[str, Any] = {k: body.options[k] for k in ROUTING_OPTIONS if body.options.get(k) is not None}
    queue = body.options.get("queue") or getattr(body_task, "queue", None)
    if queue is None:
        queue = app.broker.router.route_options(body.task, (), {}, {}, task=body_task).get("queue")
    if queue is not None:
        options["queue"] = queue
    priority = body.options.get("priority", getattr(body_task, "priority", None))
    if priority is not None:
        options["priority"] = priority
    app.tasks["celery.chord_unlock"].apply_async((header.id, body), kwargs, countdown=countdown, **options)
