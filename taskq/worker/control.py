"""Remote control, worker side: the pidbox node that answers ``ping`` and obeys ``revoke``.

Commands arrive on the consumer's connection (another channel) and are handled in the consume
loop's thread, like task messages, so a handler may touch the consumer's state without locks.
"""

from __future__ import annotations

import signal as signal_module
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
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
        #: called once per revoke command, so --statedb saves what a restart must not forget
        self.on_change: Callable[[], None] | None = None

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

    def changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def snapshot(self) -> dict[str, float]:
        """Live ids with the wall-clock time of their revoke, oldest first (what --statedb saves).

        The stamps are monotonic, immune to clock changes but meaningless to another process, so
        they leave as wall-clock times and come back through ``restore`` with their age intact.
        """
        mono, wall = time.monotonic(), time.time()
        return {
            tid: wall - (mono - added) for tid, added in self._ids.items() if mono - added <= self.expires
        }

    def restore(self, saved: Mapping[str, float]) -> None:
        """Merge ids from ``snapshot`` (maybe of an earlier run): expired ones dropped, bounds kept."""
        mono, wall = time.monotonic(), time.time()
        merged = dict(self._ids)
        for tid, revoked_at in saved.items():
            age = max(wall - revoked_at, 0.0)  # a future time (clock set back) counts as now
            if age <= self.expires and mono - age > merged.get(tid, float("-inf")):
                merged[tid] = mono - age
        self._ids = OrderedDict(sorted(merged.items(), key=lambda item: item[1]))
        while len(self._ids) > self.maxlen:
            self._ids.popitem(last=False)


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
    consumer.revoke(ids, terminate=terminate, signal=signal)
    consumer.revoked.changed()
    return {"ok": f"tasks {', '.join(ids)} flagged as revoked"}


def rate_limit(
    consumer: Consumer, task_name: str, rate_limit: str | float | None, **kwargs: Any
) -> dict[str, str]:
    """Celery's ``rate_limit`` command: change a task's limit in this worker, now."""
    if task_name not in consumer.app.tasks:
        return {"error": f"unknown task {task_name!r}"}
    try:
        consumer.rate_limits.set(task_name, rate_limit)
    except ValueError as exc:
        return {"error": f"invalid rate limit string: {exc}"}
    consumer.app.tasks[task_name].rate_limit = rate_limit
    if not rate_limit:
        return {"ok": f"rate limit disabled successfully for {task_name}"}
    return {"ok": f"new rate limit set successfully for {task_name}"}


HANDLERS = {"ping": ping, "revoke": revoke, "rate_limit": rate_limit}


def listen(consumer: Consumer, connection: Connection) -> KombuConsumer:
    """Start consuming this worker's pidbox queue (``<node>.celery.pidbox``) on ``connection``."""
    node = mailbox_for(consumer.app).Node(
        consumer.hostname, state=consumer, channel=connection.channel(), handlers=HANDLERS
    )
    kombu_consumer: KombuConsumer = node.listen()
    return kombu_consumer


def signal_number(value: str | int | None) -> int:
    """Celery's ways to name a signal: ``15``, ``'SIGKILL'``, ``'KILL'``, ``'kill'``; default TERM."""
    if value is None or value == "":
        return int(signal_module.SIGTERM)
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    name = str(value).upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return int(getattr(signal_module, name))
    except AttributeError:
        raise ValueError(f"unknown signal {value!r}") from None
