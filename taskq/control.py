"""Remote control, client side: broadcast commands to workers over kombu's pidbox.

Celery's ``app.control`` speaks kombu's mailbox protocol on the ``celery.pidbox`` fanout
exchange, so using the same mailbox makes taskq's commands reach Celery workers and the reverse.
This first slice carries ``revoke`` and ``ping``; the rest of ``inspect``/``control`` follows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kombu.pidbox import Mailbox

if TYPE_CHECKING:
    from taskq.app import App


def mailbox_for(app: App) -> Mailbox:
    """The app's pidbox mailbox with Celery's names, serializer and queue lifetimes."""
    conf = app.conf
    return Mailbox(
        conf.control_exchange,
        type="fanout",
        accept=list(conf.accept_content or ["json"]),
        serializer=conf.task_serializer,
        queue_ttl=conf.control_queue_ttl,
        reply_queue_ttl=conf.control_queue_ttl,
        queue_expires=conf.control_queue_expires,
        reply_queue_expires=conf.control_queue_expires,
    )


class Control:
    """``app.control``: commands broadcast to every worker (or the ``destination`` nodes)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.mailbox = mailbox_for(app)

    def broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        destination: Iterable[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]] | None:
        """Send ``command`` to the workers; with ``reply``, their answers within ``timeout``."""
        with self.app.broker.new_connection() as conn:
            replies: list[dict[str, Any]] | None = self.mailbox(conn)._broadcast(
                command,
                arguments or {},
                list(destination) if destination else None,
                reply,
                timeout,
                limit=limit,
            )
        return replies

    def ping(self, destination: Iterable[str] | None = None, timeout: float = 1.0) -> list[dict[str, Any]]:
        """``[{node: {"ok": "pong"}}, ...]`` from every worker that answered in time."""
        return self.broadcast("ping", destination=destination, reply=True, timeout=timeout) or []

    def revoke(
        self,
        task_id: str | Iterable[str],
        destination: Iterable[str] | None = None,
        terminate: bool = False,
        signal: str = "SIGTERM",
        reply: bool = False,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]] | None:
        """Tell the workers not to run these tasks (their results become REVOKED)."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        arguments = {"task_id": ids, "terminate": terminate, "signal": signal}
        return self.broadcast("revoke", arguments, destination=destination, reply=reply, timeout=timeout)

    def rate_limit(
        self,
        task_name: str,
        rate_limit: str | float | None,
        destination: Iterable[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]] | None:
        """Change a task's rate limit in running workers (``None`` or ``0`` lifts it)."""
        arguments = {"task_name": task_name, "rate_limit": rate_limit}
        return self.broadcast("rate_limit", arguments, destination=destination, reply=reply, timeout=timeout)
