"""Remote control, worker side: the pidbox node that answers ``ping`` and obeys ``revoke``.

Commands arrive on the consumer's connection (another channel) and are handled in the consume
loop's thread, like task messages, so a handler may touch the consumer's state without locks.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from taskq.control import mailbox_for

if TYPE_CHECKING:
    from kombu import Connection
    from kombu import Consumer as KombuConsumer

    from taskq.worker.consumer import Consumer

REVOKES_MAX = 50_000  # Celery's bound on remembered revoked ids
REVOKE_EXPIRES = 3 * 3600.0  # and how long each is remembered (seconds)


class Revoked:
    """Revoked task ids, bounded in number and age, oldest dropped first."""

    def __init__(self, maxlen: int = REVOKES_MAX, expires: float = REVOKE_EXPIRES) -> None:
        self.maxlen = maxlen
        self.expires = expires
        self._ids: OrderedDict[str, float] = OrderedDict()

    def add(self, task_id: str) -> None:
        self._ids[task_id] = time.monotonic()
        self._ids.move_to_end(task_id)
        while len(self._ids) > self.maxlen:
            self._ids.popitem(last=False)

    def __contains__(self, task_id: object) -> bool:
        added = self._ids.get(task_id)  # type: ignore[call-overload]
        if added is None:
            return False
        if time.monotonic() - added > self.expires:
            del self._ids[task_id]  # type: ignore[arg-type]
            return False
        return True

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Any:
        return iter(list(self._ids))


def ping(consumer: Consumer, **kwargs: Any) -> dict[str, str]:
    return {"ok": "pong"}


def revoke(
    consumer: Consumer,
    task_id: str | Iterable[str],
    terminate: bool = False,
    signal: str | None = None,
    **kwargs: Any,
) -> dict[str, str]:
    ids = [task_id] if isinstance(task_id, str) else list(task_id)
    consumer.revoke(ids, terminate=terminate)
    return {"ok": f"tasks {', '.join(ids)} flagged as revoked"}


HANDLERS = {"ping": ping, "revoke": revoke}


def listen(consumer: Consumer, connection: Connection) -> KombuConsumer:
    """Start consuming this worker's pidbox queue (``<node>.celery.pidbox``) on ``connection``."""
    node = mailbox_for(consumer.app).Node(
        consumer.hostname, state=consumer, channel=connection.channel(), handlers=HANDLERS
    )
    kombu_consumer: KombuConsumer = node.listen()
    return kombu_consumer
