"""The ``rpc://`` result backend: results travel as messages to the client's reply queue.

Wire format (Celery 5.7): the worker publishes each state's meta to the default exchange with
``routing_key=<reply_to of the task message>``, ``correlation_id=<task id>``, ``delivery_mode``
1 (2 with ``result_persistent``), no headers. The reply queue is named after the sending
thread (``app.thread_oid``) and declared by the client before it publishes a task:
``durable=True, auto_delete=True, x-expires=result_expires*1000``, bound to the default exchange.

What that means for readers, as in Celery: nothing is stored server side, so a result can only
be read by the thread that sent the task (it arrives on that thread's queue), and only once --
after it is consumed it lives in that thread's in-memory buffer, which keeps the latest state of
at most ``MAX_BUFFERED`` (10 000) task ids (the oldest are dropped first) until ``forget()``.
Another thread, process or a restarted client sees such a task as PENDING.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kombu import Connection, Consumer, Exchange, Queue
from kombu.message import Message

from taskq import states
from taskq.backend.base import ResultBackend
from taskq.broker import CONNECTION_ERRORS
from taskq.exceptions import BackendGetMetaError, BackendStoreError, OperationalError
from taskq.exceptions import TimeoutError as ResultTimeout

if TYPE_CHECKING:
    from taskq.app import App

logger = logging.getLogger("taskq.backend.rpc")

MAX_BUFFERED = 10_000  # task ids whose latest state one thread keeps
RECONNECTS = 5  # failed reconnects in a row before reading gives up
STORE_RETRIES = 3  # publish retries for a result (unless result_backend_always_retry)


class _Reader:
    """One thread's reply queue: its own connection, consumer and received metas."""

    def __init__(self, backend: RPCBackend, oid: str) -> None:
        self.backend = backend
        self.oid = oid
        self.connection: Connection | None = None
        self.errors: tuple[type[BaseException], ...] = (OSError,)
        self.metas: OrderedDict[str, dict[str, Any] | BackendGetMetaError] = OrderedDict()
        self.failures = 0
        self.waiting: str | None = None  # the id this thread waits for: never dropped

    def start(self) -> None:
        """Connect, declare the reply queue and consume from it (once per connection)."""
        if self.connection is not None:
            return
        connection = self.backend.app.broker.new_connection()
        self.errors = (*connection.connection_errors, *connection.channel_errors, OSError)
        # This connection is only read when the user asks for a result, so it could not answer
        # heartbeats in between; a missed heartbeat would close it and auto-delete the queue.
        connection.heartbeat = 0  # type: ignore[assignment]
        try:
            channel = connection.channel()
            queue = self.backend.binding(self.oid)(channel)
            queue.declare()
            accept = sorted(self.backend.accept)  # never decode what result_accept_content refuses
            consumer = Consumer(channel, [queue], no_ack=True, on_message=self.on_message, accept=accept)
            consumer.consume()
        except BaseException:
            connection.release()
            raise
        self.connection = connection

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # already broken
                pass

    def on_message(self, message: Message) -> None:
        task_id = message.properties.get("correlation_id")
        try:
            meta = message.decode()
            if not isinstance(meta, dict) or "status" not in meta:
                raise ValueError(f"not a result meta: {meta!r:.200}")
        except Exception as exc:
            if task_id:
                where = f"result of task {task_id} from {self.backend.app.broker.masked_url}"
                self.put(
                    task_id, BackendGetMetaError(f"{where} cannot be decoded: {type(exc).__name__}: {exc}")
                )
            logger.error("rpc result backend: undecodable reply on %s: %s", self.oid, exc)
            return
        task_id = task_id or meta.get("task_id")
        if task_id:
            self.put(str(task_id), meta)

    def put(self, task_id: str, meta: dict[str, Any] | BackendGetMetaError) -> None:
        """Keep the latest state, except that a ready state is never replaced by a later one."""
        current = self.metas.get(task_id)
        if isinstance(current, dict) and current.get("status") in states.READY_STATES:
            return
        self.metas[task_id] = meta
        self.metas.move_to_end(task_id)
        while len(self.metas) > MAX_BUFFERED:
            dropped, value = self.metas.popitem(last=False)
            if dropped == self.waiting:
                self.metas[dropped] = value
                continue
            logger.warning(
                "rpc result backend: more than %d unread results, dropped %s", MAX_BUFFERED, dropped
            )

    def drain(self, timeout: float) -> bool:
        """Receive replies for up to ``timeout`` seconds; True if any arrived."""
        try:
            self.start()
            assert self.connection is not None
            try:
                self.connection.drain_events(timeout=timeout)
            except TimeoutError:
                self.failures = 0  # the connection works, there was just nothing to read
                return False
            for _ in range(MAX_BUFFERED):  # and everything else already received
                try:
                    self.connection.drain_events(timeout=0)
                except TimeoutError:
                    break
            self.failures = 0
            return True
        except self.errors as exc:
            self.close()
            self.failures += 1
            url = self.backend.app.broker.masked_url
            if self.failures >= RECONNECTS:
                raise OperationalError(f"lost the connection to {url} reading results: {exc}") from exc
            # reconnect at once: the broker deletes the auto_delete queue once our consumer is gone
            logger.warning("rpc result backend: connection to %s lost (%s), reconnecting", url, exc)
            time.sleep(min(0.1 * 2**self.failures, 1.0, timeout) if self.failures > 1 else 0)
            return False

    def meta(self, task_id: str) -> dict[str, Any] | None:
        value = self.metas.get(task_id)
        if isinstance(value, BackendGetMetaError):
            raise value
        return value


class RPCBackend(ResultBackend):
    """Celery's ``rpc://`` backend (results as messages; see the module docstring)."""

    persistent = False
    supports_native_wait = True
    keeps_state = False

    def __init__(self, app: App, url: str | None = None) -> None:
        super().__init__(app, url)
        conf = app.conf
        self.delivery_mode = 2 if conf.get("result_persistent") else 1
        retries = conf.get("result_backend_max_retries") if conf.get("result_backend_always_retry") else None
        self.retry_policy = {
            "max_retries": STORE_RETRIES if retries is None else retries,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 1,
        }
        self._local = threading.local()
        self._readers: weakref.WeakSet[_Reader] = weakref.WeakSet()
        self._lock = threading.Lock()

    # -- no chords, no saved groups: results are nowhere to be counted or read back -------------
    def _no_chords(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "the rpc:// result backend cannot run chords or save groups, as in Celery (results "
            "are messages to the sender only); use redis://, sqlite:// or another stored backend "
            "for chords, groups chained to a task and GroupResult.save()"
        )

    ensure_chords_allowed = save_group = restore_group = delete_group = _no_chords
    set_chord_size = add_to_chord = on_chord_part_return = _no_chords

    def binding(self, oid: str) -> Queue:
        """The reply queue, declared exactly as Celery 5.7 declares it."""
        return Queue(oid, Exchange(""), oid, durable=True, auto_delete=True, expires=self.expires)

    def _reader(self, start: bool = True) -> _Reader:
        oid = self.app.thread_oid
        reader: _Reader | None = getattr(self._local, "reader", None)
        if reader is None or reader.oid != oid:
            reader = _Reader(self, oid)
            self._local.reader = reader
            with self._lock:
                self._readers.add(reader)
        if start:
            try:
                reader.start()
            except Exception as exc:
                url = self.app.broker.masked_url
                raise OperationalError(f"cannot declare the result queue {oid} on {url}: {exc}") from exc
        return reader

    # -- worker side --------------------------------------------------------------------------
    def store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
    ) -> dict[str, Any]:
        """Publish the meta to the client's reply queue (``request.reply_to``)."""
        meta = self.make_meta(task_id, result, state, traceback, request)
        reply_to = getattr(request, "reply_to", None)
        if not reply_to:
            logger.warning(
                "rpc result backend: task %s has no reply_to, its %s state is not sent", task_id, state
            )
            return meta
        correlation_id = getattr(request, "correlation_id", None) or task_id
        broker = self.app.broker
        try:
            with broker.producers.acquire(
                block=True, timeout=broker.conf.broker_connection_timeout
            ) as producer:
                producer.publish(
                    meta,
                    exchange="",
                    routing_key=reply_to,
                    correlation_id=correlation_id,
                    delivery_mode=self.delivery_mode,
                    serializer=self.serializer,
                    retry=True,
                    retry_policy=self.retry_policy,
                )
        except (
            *CONNECTION_ERRORS,
            *broker.connection.connection_errors,
            *broker.connection.channel_errors,
        ) as exc:
            raise BackendStoreError(
                f"cannot send the result of task {task_id} to {broker.masked_url}: {exc}"
            ) from exc
        return meta

    # -- client side --------------------------------------------------------------------------
    def on_task_call(self, task_id: str) -> None:
        """Declare this thread's reply queue (and start consuming it) before the task is sent."""
        self._reader()

    def get_task_meta(self, task_id: str) -> dict[str, Any]:
        reader = self._reader()
        reader.drain(0)
        return reader.meta(task_id) or {"status": states.PENDING, "result": None, "task_id": task_id}

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        on_interval: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        reader = self._reader()
        reader.waiting = task_id
        try:
            while True:
                meta = reader.meta(task_id)
                if meta is not None and meta["status"] in states.READY_STATES:
                    return meta
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ResultTimeout(f"the operation timed out after {timeout} s (task {task_id})")
                if (
                    not reader.drain(interval if remaining is None else min(interval, remaining))
                    and on_interval
                ):
                    on_interval()
        finally:
            reader.waiting = None

    def forget(self, task_id: str) -> None:
        self._reader(start=False).metas.pop(task_id, None)

    def close(self) -> None:
        with self._lock:
            readers, self._readers = list(self._readers), weakref.WeakSet()
            self._local = threading.local()
        for reader in readers:
            reader.close()
