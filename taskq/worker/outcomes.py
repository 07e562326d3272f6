"""What the worker records and acks once a run ends, or when a task is dropped without running.

The consumer's thread calls these (they ack, so they must run where the connection lives). A
task's own outcome was already stored by ``execute`` where it ran; what is decided here is the
message's fate (ack, reject, requeue) and the records for runs the task did not end itself: a
hard time limit, a lost pool process, a terminate, or a revoke/expiry before it started.
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, Any

from taskq import signals, states
from taskq.exceptions import TaskRevokedError, Terminated, TimeLimitExceeded, WorkerLostError
from taskq.worker.events import send_outcome
from taskq.worker.execute import Outcome, describe, fail

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.events import EventDispatcher
    from taskq.worker.request import Request

logger = logging.getLogger("taskq.worker")

#: ends of a run decided outside the task (pools report them instead of an Outcome)
OUTSIDE = (TimeLimitExceeded, WorkerLostError, Terminated)


def settle(
    app: App,
    request: Request,
    outcome: Outcome | BaseException,
    *,
    stopping: bool,
    events: EventDispatcher | None = None,
) -> None:
    """Log the run's end and ack or reject its message (Celery's rules)."""
    if isinstance(outcome, OUTSIDE):
        _ended_outside(app, request, outcome, stopping, events)
        return
    if isinstance(outcome, BaseException):  # execute() itself failed: a taskq bug
        signals.task_internal_error.send(
            sender=request.task, task_id=request.id, args=request.req.args, kwargs=request.req.kwargs,
            request=request, exception=outcome, traceback=outcome.__traceback__, einfo=None,
        )  # fmt: skip
        outcome = Outcome(states.FAILURE, exc=outcome)
    logger.log(*describe(outcome, request.name, request.id))
    if events is not None:
        send_outcome(events, request.id, outcome)
    if outcome.state == states.REJECTED:
        if outcome.requeue and request.acked:
            logger.warning(
                "Reject(requeue=True) by %s had no effect: its message was acked when it "
                "started (set acks_late=True to requeue)", request,
            )  # fmt: skip
        _reject(request, outcome.requeue, events)
    else:
        request.ack()


def _reject(request: Request, requeue: bool, events: EventDispatcher | None) -> None:
    if events is not None and not request.acked:  # Celery: only a reject that happens is told
        events.task("task-rejected", uuid=request.id, requeue=requeue)
    request.reject(requeue=requeue)


def _ended_outside(
    app: App, request: Request, exc: BaseException, stopping: bool, events: EventDispatcher | None = None
) -> None:
    if stopping:  # the shutdown stopped it: not the task's failure, so nothing is recorded
        logger.warning("%s was stopped by the shutdown (%r); not recorded", request, exc)
        _reject(request, True, events)  # only an acks_late message is still ours to give back
        return
    if isinstance(exc, Terminated):
        signum = request.job.terminated if request.job is not None else None
        discard(app, request, "terminated", signum=signum or signal.SIGTERM, events=events)
        return
    lost = isinstance(exc, WorkerLostError)
    if lost and _stored_success(app, request):
        logger.warning("%s succeeded before its pool process was lost: %r", request, exc)
        if events is not None:  # so monitors do not show it STARTED forever (as Celery)
            events.task("task-succeeded", uuid=request.id, result=None, runtime=None)
        request.ack()
        return
    if lost and request.acks_late and request.reject_on_worker_lost:
        logger.warning("%s: %s; its message is returned to the queue", request, exc)
        _reject(request, True, events)
        return
    assert request.job is not None
    outcome = fail(request.task, request.job.context, exc)
    logger.log(*describe(outcome, request.name, request.id))
    if events is not None:
        send_outcome(events, request.id, outcome)
    if request.acks_on_failure_or_timeout:
        request.ack()
    else:  # Celery: a timed-out task goes back to the queue, a lost one is dropped
        _reject(request, not lost, events)


def _stored_success(app: App, request: Request) -> bool:
    try:
        return bool(app.backend.get_task_meta(request.id)["status"] == states.SUCCESS)
    except Exception:  # results disabled or unreachable: assume it did not finish
        return False


def discard(
    app: App, request: Request, reason: str, signum: int | None = None, events: EventDispatcher | None = None
) -> None:
    """Ack without running (or after terminating), store REVOKED, release a waiting chord."""
    logger.info("Discarding %s task %s[%s]", reason, request.name, request.id)
    request.ack()
    signals.task_revoked.send(
        sender=request.task, request=request.context(), terminated=signum is not None, signum=signum,
        expired=reason == "expired",
    )  # fmt: skip
    if events is not None:
        events.task("task-revoked", uuid=request.id, terminated=signum is not None, signum=signum,
                    expired=reason == "expired")  # fmt: skip
    if not request.req.ignore_result:
        store_quietly(app, request.id, reason, states.REVOKED, request)
    if request.req.chord:  # a chord must not wait forever for a member that will not run
        try:
            app.backend.on_chord_part_return(request.context(), states.REVOKED, TaskRevokedError(reason))
        except Exception as exc:
            logger.warning("could not report %s chord member %s: %r", reason, request, exc)


def store_quietly(app: App, task_id: str, value: Any, state: str, request: Request | None = None) -> None:
    try:
        backend = app.backend
        if state == states.REVOKED:
            backend.mark_as_revoked(task_id, str(value), request=request.context() if request else None)
        else:
            backend.store_result(task_id, value, state)
    except Exception as exc:  # a result store problem must not stop consumption
        logger.warning("could not store %s for %s: %r", state, task_id, exc)
