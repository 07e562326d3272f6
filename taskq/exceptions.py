"""Exceptions a taskq user catches or raises, under Celery's names.

Results written by a taskq worker name these classes with ``exc_module`` ``celery.exceptions``
(see ``taskq.backend.base``) so a Celery client reads the same type, and a Celery result naming
``celery.exceptions.X`` is read back as ``taskq.exceptions.X``.
"""

from __future__ import annotations

from typing import Any

import billiard.exceptions as _billiard_exceptions


class TaskqError(Exception):
    """Base of taskq's own errors."""


CeleryError = TaskqError


class ImproperlyConfigured(TaskqError, ImportError):
    """The configuration cannot work (bad URL, unknown pool, unloadable config module)."""


class OperationalError(TaskqError):
    """The broker or result backend could not be reached in time."""


class PublishError(OperationalError):
    """A task message could not be handed to the broker within ``publish_timeout``."""


class DeliveryLimitExceeded(TaskqError):
    """The message was delivered ``task_max_deliveries`` times without finishing: dead-lettered."""


class SecurityError(TaskqError):
    """Stored or received data asked for something taskq refuses to do."""


class NotRegistered(KeyError, TaskqError):
    """No task of that name is registered in this app."""

    def __repr__(self) -> str:
        return f"NotRegistered({self.args[0] if self.args else ''!r})"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class QueueNotFound(KeyError, TaskqError):
    """A task was routed to a queue that is not declared and may not be created."""


class TimeoutError(TaskqError):  # noqa: A001 - Celery's name, users catch it by this name
    """Waiting for a result took longer than the given timeout."""


class BackendError(TaskqError):
    """The result backend failed or cannot do what was asked."""


class BackendGetMetaError(BackendError):
    """Reading a task's meta from the result backend failed."""


class BackendStoreError(BackendError):
    """Storing a task's meta in the result backend failed."""


class DisabledBackend(BackendError, NotImplementedError):
    """Results were asked for but no result backend is configured."""


class InvalidTaskError(TaskqError):
    """A received message is not a valid task message."""


class TaskPredicate(TaskqError):
    """Base of the exceptions that change a task's flow rather than report an error."""


class Retry(TaskPredicate):
    """Raised by ``Task.retry`` to end this run and schedule another one."""

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: Any = None,
        is_eager: bool = False,
        sig: Any = None,
        **kwargs: Any,
    ) -> None:
        self.message = message
        self.exc = exc
        self.when = when
        self.is_eager = is_eager
        self.sig = sig
        super().__init__(message, exc, when)

    def humanize(self) -> str:
        return f"in {self.when}s" if isinstance(self.when, (int, float)) else f"at {self.when}"

    def __str__(self) -> str:
        if self.message:
            return self.message
        if self.exc:
            return f"Retry {self.humanize()}: {self.exc!r}"
        return f"Retry {self.humanize()}"


RetryTaskError = Retry


class Ignore(TaskPredicate):
    """Raised by a task so the worker records nothing more for this run."""


class Reject(TaskPredicate):
    """Raised by a task to reject its message, optionally back onto the queue."""

    def __init__(self, reason: Any = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)


class MaxRetriesExceededError(TaskqError):
    """``Task.retry`` was called after ``max_retries`` was reached."""

    def __init__(self, *args: Any, task_args: Any = None, task_kwargs: Any = None) -> None:
        self.task_args = task_args
        self.task_kwargs = task_kwargs
        super().__init__(*args)


class TaskRevokedError(TaskqError):
    """The task was revoked (``revoked``, ``expired`` or ``terminated``)."""


class ChordError(TaskqError):
    """A task of a chord header failed, so the chord body cannot run."""


# billiard's own classes, as in Celery: the prefork pool raises them inside the child (soft
# limit) or hands them to the parent (hard limit, lost child), and user code catches them by these
# names. Terminated is what a task killed by ``revoke(terminate=True)`` ends with.
SoftTimeLimitExceeded = _billiard_exceptions.SoftTimeLimitExceeded
TimeLimitExceeded = _billiard_exceptions.TimeLimitExceeded
WorkerLostError = _billiard_exceptions.WorkerLostError
Terminated = _billiard_exceptions.Terminated


class WorkerShutdown(SystemExit):
    """Raised to stop the worker warmly."""


class WorkerTerminate(SystemExit):
    """Raised to stop the worker at once."""


# exc_module of the classes above in results, as Celery writes them.
CELERY_MODULE_OF: dict[str, str] = {
    name: "celery.exceptions"
    for name in (
        "NotRegistered",
        "Retry",
        "Ignore",
        "Reject",
        "MaxRetriesExceededError",
        "TaskRevokedError",
        "ChordError",
        "QueueNotFound",
        "ImproperlyConfigured",
        "OperationalError",
        "SecurityError",
        "TimeoutError",
        "InvalidTaskError",
    )
}
CELERY_MODULE_OF.update(
    {
        "SoftTimeLimitExceeded": "billiard.exceptions",
        "TimeLimitExceeded": "billiard.exceptions",
        "WorkerLostError": "billiard.exceptions",
        "Terminated": "billiard.exceptions",
    }
)


class ExceptionInfo:
    """``einfo`` passed to ``on_failure``/``on_retry`` and the failure signals (billiard's shape)."""

    def __init__(self, exception: BaseException, traceback: str | None = None) -> None:
        self.exception = exception
        self.type = type(exception)
        self.tb = exception.__traceback__
        self.traceback = traceback or ""

    @property
    def exc_info(self) -> tuple[type[BaseException], BaseException, Any]:
        return self.type, self.exception, self.tb

    def __str__(self) -> str:
        return self.traceback

    def __repr__(self) -> str:
        return f"<ExceptionInfo: {self.exception!r}>"
