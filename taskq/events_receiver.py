"""Receiving events: what ``celery events`` and Flower do, on taskq's side.

A receiver owns a queue of its own (``celeryev.<uuid>``, bound with ``#``, auto-deleted, with
Celery's message TTL and expiry), so every monitor sees every event and a dead monitor's queue
goes away by itself. Both message forms are accepted: one event, or a list (Celery's
``task.multi`` batch).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from kombu import Connection, Queue
from kombu import Consumer as KombuConsumer
from kombu.clocks import LamportClock

from taskq.events import adjust_timestamp, event_exchange, events_of

if TYPE_CHECKING:
    from taskq.app import App

__all__ = ["EventReceiver"]

logger = logging.getLogger("taskq.events")


class EventReceiver:
    """Consumes every event (``celeryev.<uuid>`` bound with ``#``) and calls ``handlers[type]``.

    ``handlers['*']`` catches the types without a handler of their own. ``capture`` runs until
    ``limit`` events, ``timeout`` seconds or ``should_stop``; ``itercapture`` yields each event.
    """

    def __init__(
        self,
        app: App,
        handlers: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None,
        *,
        connection: Any = None,
        node_id: str | None = None,
        queue_prefix: str | None = None,
        routing_key: str = "#",
        accept: set[str] | None = None,
        queue_ttl: float | None = None,
        queue_expires: float | None = None,
        queue_exclusive: bool | None = None,
        queue_durable: bool | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        self.handlers = dict(handlers or {})
        self.channel = None if connection is None or hasattr(connection, "drain_events") else connection
        self.connection: Connection | None = connection.connection.client if self.channel else connection
        self.node_id = node_id or str(uuid.uuid4())
        durable = conf.event_queue_durable if queue_durable is None else queue_durable
        exclusive = conf.event_queue_exclusive if queue_exclusive is None else queue_exclusive
        if durable and exclusive:
            raise ValueError("an event queue cannot be both exclusive and durable")
        self.queue = Queue(
            f"{queue_prefix or conf.event_queue_prefix}.{self.node_id}",
            exchange=event_exchange(self.connection or app.broker.connection, conf.event_exchange),
            routing_key=routing_key, auto_delete=not durable, durable=durable, exclusive=exclusive,
            message_ttl=conf.event_queue_ttl if queue_ttl is None else queue_ttl,
            expires=conf.event_queue_expires if queue_expires is None else queue_expires,
        )  # fmt: skip
        self.accept = accept or {conf.event_serializer, "json"}
        self.clock: LamportClock = events_of(app).clock
        self.should_stop = False
        #: set once the queue is bound and consumed: events published after it are received
        self.ready = threading.Event()
        self._pending: deque[dict[str, Any]] = deque()

    def process(self, type: str, event: dict[str, Any]) -> None:  # noqa: A002
        handler = self.handlers.get(type) or self.handlers.get("*")
        if handler is not None:
            handler(event)

    def event_from_message(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Sync the Lamport clock, move the timestamp into this host's zone (Celery's rules)."""
        type_ = body["type"]
        if type_ == "task-sent":  # clients never sync their clock, so theirs means nothing
            body["clock"] = (self.clock.value or 1) - 1
            self.clock.adjust(body["clock"])
        elif "clock" in body:
            self.clock.adjust(body["clock"])
        else:
            body["clock"] = self.clock.forward()
        if "utcoffset" in body and "timestamp" in body:
            body["timestamp"] = adjust_timestamp(body["timestamp"], body["utcoffset"])
        body["local_received"] = time.time()
        return type_, body

    def _receive(self, body: Any, message: Any) -> None:
        for event in body if isinstance(body, list) else [body]:  # a list: Celery's task.multi
            if isinstance(event, dict) and "type" in event:
                self._pending.append(event)

    def itercapture(
        self, limit: int | None = None, timeout: float | None = None, wakeup: bool = True
    ) -> Iterator[dict[str, Any]]:
        """Yield events (after their handler ran) until ``limit``, ``timeout`` s or ``should_stop``."""
        own = self.connection is None
        connection = self.app.broker.new_connection() if own else self.connection
        assert connection is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        count = 0
        channel = self.channel
        consumer: KombuConsumer | None = None
        try:
            if channel is None:
                channel = connection.channel()
            consumer = KombuConsumer(
                channel, queues=[self.queue], callbacks=[self._receive], no_ack=True, accept=self.accept
            )
            consumer.consume()
            if wakeup:
                self.wakeup_workers()
            while not self.should_stop:
                while self._pending:
                    event_type, event = self.event_from_message(self._pending.popleft())
                    self.process(event_type, event)
                    count += 1
                    yield event
                    if (limit and count >= limit) or self.should_stop:
                        return
                left = 1.0 if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    return
                try:
                    connection.drain_events(timeout=min(left, 0.1 if not self.ready.is_set() else 1.0))
                except TimeoutError:
                    connection.heartbeat_check()
                self.ready.set()  # the first drain subscribed (Redis pub/sub starts there)
        finally:
            self._pending.clear()
            try:
                if consumer is not None:
                    consumer.cancel()
                if channel is not None and channel is not self.channel:
                    channel.close()
            except Exception as exc:  # a lost connection cannot cancel; its queue auto-deletes
                logger.debug("events: closing the receiver: %r", exc)
            if own:
                connection.release()

    def capture(self, limit: int | None = None, timeout: float | None = None, wakeup: bool = True) -> int:
        """Handle events until ``limit``, ``timeout`` s or ``should_stop``; how many were handled."""
        return sum(1 for _ in self.itercapture(limit, timeout, wakeup))

    __iter__ = itercapture

    def wakeup_workers(self) -> None:
        """Ask every worker for a heartbeat now, so a new monitor sees them at once (as Celery)."""
        try:
            self.app.control.broadcast("heartbeat")
        except Exception as exc:
            logger.debug("events: cannot wake workers up: %r", exc)
