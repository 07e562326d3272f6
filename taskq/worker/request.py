"""One received task: its parsed message, its task, and when its message is acked.

The ack policy lives here so the consumer asks one question ("ack now?") instead of
re-deriving early/late acking at every call site.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from taskq.message import PROTOCOL_HEADERS, TaskRequest
from taskq.task import Context, Task

if TYPE_CHECKING:
    from kombu.message import Message

    from taskq.worker.pools import Job

logger = logging.getLogger("taskq.worker")


class Request:
    """A task message accepted by the consumer and waiting for, or in, the pool."""

    __slots__ = ("acked", "hostname", "job", "message", "req", "task")

    def __init__(self, message: Message, req: TaskRequest, task: Task[Any, Any], hostname: str) -> None:
        self.message = message
        self.req = req
        self.task = task
        self.hostname = hostname
        self.acked = False
        #: the pool job while it runs (for terminate and the outcome)
        self.job: Job | None = None

    @property
    def id(self) -> str:
        return self.req.id

    @property
    def name(self) -> str:
        return self.req.shadow or self.req.name

    @property
    def eta(self) -> datetime | None:
        return self.req.eta

    @property
    def acks_late(self) -> bool:
        value = self.task.acks_late
        return bool(self.task.app.conf.task_acks_late if value is None else value)

    @property
    def reject_on_worker_lost(self) -> bool:
        value = self.task.reject_on_worker_lost
        return bool(self.task.app.conf.task_reject_on_worker_lost if value is None else value)

    @property
    def acks_on_failure_or_timeout(self) -> bool:
        value = getattr(self.task, "acks_on_failure_or_timeout", None)
        return bool(self.task.app.conf.task_acks_on_failure_or_timeout if value is None else value)

    def time_limits(self) -> tuple[float | None, float | None]:
        """(hard, soft) seconds: the message's ``timelimit`` header, else the task's, else the worker's."""
        hard, soft = (*(self.req.timelimit or ()), None, None)[:2]
        conf = self.task.app.conf
        hard = hard or self.task.time_limit or conf.task_time_limit or None
        soft = soft or self.task.soft_time_limit or conf.task_soft_time_limit or None
        return hard, soft

    def context(self) -> Context:
        """The ``task.request`` this run sees; unknown headers become attributes too."""
        r = self.req
        extra = {k: v for k, v in r.headers.items() if not hasattr(Context, k)}
        custom = {k: v for k, v in extra.items() if k not in PROTOCOL_HEADERS}  # Celery's request.headers
        return Context(
            **extra,
            id=r.id,
            task=r.name,
            args=r.args,
            kwargs=r.kwargs,
            retries=r.retries,
            is_eager=False,
            eta=r.eta.isoformat() if r.eta else None,
            expires=r.expires.isoformat() if r.expires else None,
            hostname=self.hostname,
            # Celery's shape: the broker's fields plus the priority and redelivered flag
            delivery_info={
                **r.delivery_info,
                "priority": r.properties.get("priority"),
                "redelivered": bool(r.delivery_info.get("redelivered")),
            },
            root_id=r.root_id,
            parent_id=r.parent_id,
            group=r.group,
            group_index=r.group_index,
            chord=r.chord,
            chain=r.chain,
            callbacks=r.callbacks,
            errbacks=r.errbacks,
            correlation_id=r.correlation_id,
            reply_to=r.reply_to,
            headers=custom or None,
            called_directly=False,
            timelimit=r.timelimit,
            origin=r.origin,
            ignore_result=r.ignore_result,
            shadow=r.shadow,
            properties=r.properties,
        )

    def ack(self) -> None:
        if not self.acked:
            self.acked = True
            self.message.ack()

    def reject(self, requeue: bool = False) -> None:
        if not self.acked:
            self.acked = True
            self.message.reject(requeue=requeue)

    def __repr__(self) -> str:
        return f"<Request {self.name}[{self.id}]>"
