"""The consume loop: receive, validate, schedule, dispatch, ack.

This loop owns the broker connection (kombu channels are not thread-safe). Pool threads hand
their outcomes back through ``self.completions``; the loop drains the broker only while the
pool has room, and otherwise waits on completions, so neither side starves the other.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import queue
import time
from collections import deque
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from kombu import Consumer as KombuConsumer
from kombu import Queue
from kombu.exceptions import ContentDisallowed, DecodeError

from taskq import signals, states
from taskq.broker import CONNECTION_ERRORS
from taskq.exceptions import NotRegistered, OperationalError, TaskRevokedError
from taskq.message import parse
from taskq.worker.control import Revoked
from taskq.worker.execute import Outcome, describe, execute
from taskq.worker.pools import Pool
from taskq.worker.request import Request

if TYPE_CHECKING:
    from kombu import Connection
    from kombu.message import Message

    from taskq.app import App

logger = logging.getLogger("taskq.worker")
# States a revoke may overwrite in the result backend (Celery 5.7): not started, or waiting to retry.
REVOCABLE_STATES = frozenset({states.PENDING, states.RECEIVED, states.RETRY, states.REJECTED})
ACTIVE_TICK = 0.005  # longest a finished task waits for its ack and for its slot to be refilled


class Consumer:
    """Receives task messages from ``queues`` and runs them on ``pool``."""

    def __init__(
        self,
        app: App,
        pool: Pool,
        queues: list[Queue],
        hostname: str,
        prefetch_multiplier: int = 4,
    ) -> None:
        self.app = app
        self.pool = pool
        self.queues = queues
        self.hostname = hostname
        self.prefetch_count = max(pool.limit * max(prefetch_multiplier, 0), 0)
        self.accept = set(app.conf.accept_content or ["json"])
        self.completions: queue.SimpleQueue[tuple[Request, Outcome | BaseException]] = queue.SimpleQueue()
        self.ready: deque[Request] = deque()
        self.eta_heap: list[tuple[float, int, Request]] = []
        self._seq = itertools.count()
        self.active: set[Request] = set()
        self.connection: Connection | None = None
        self._kombu_consumer: KombuConsumer | None = None
        self._qos_extra = 0
        self.stopping = False
        self.processed = 0
        #: longest a drain blocks while nothing runs: how soon an idle worker notices stop()
        self.idle_wait = 1.0
        self.revoked = Revoked()
        self.remote_control = bool(app.conf.worker_enable_remote_control)
        self._pidbox: KombuConsumer | None = None
        self.recoverable_errors: tuple[type[BaseException], ...] = CONNECTION_ERRORS

    # -- connection -------------------------------------------------------------------------
    def connect(self, startup: bool = False) -> None:
        """Connect (retrying with back-off, as configured) and start consuming."""
        broker, conf = self.app.broker, self.app.conf
        self.connection = broker.new_connection(conf.broker_read_url or None)
        retry = conf.broker_connection_retry
        if startup and conf.broker_connection_retry_on_startup is not None:
            retry = conf.broker_connection_retry_on_startup
        max_retries = conf.broker_connection_max_retries if retry else 0
        attempts = itertools.count(1)

        def errback(exc: BaseException, interval: float) -> None:
            logger.error(
                "Cannot connect to %s: %s. Trying again in %.1f s... (%d/%s)",
                broker.masked_url, exc, interval, next(attempts), max_retries or "inf",
            )  # fmt: skip

        try:
            self.connection.ensure_connection(
                errback=errback, max_retries=max_retries, interval_start=2, interval_step=2, interval_max=30
            )
        except CONNECTION_ERRORS + tuple(self.connection.connection_errors) as exc:
            raise OperationalError(f"cannot connect to {broker.masked_url}: {exc}") from exc
        self.recoverable_errors = tuple(self.connection.connection_errors) + CONNECTION_ERRORS
        channel = self.connection.default_channel
        self._qos_extra = 0
        self._kombu_consumer = KombuConsumer(
            channel, queues=self.queues, on_message=self.on_message, accept=self.accept
        )
        self._apply_qos()
        self._kombu_consumer.consume()
        if self.remote_control:
            from taskq.worker.control import listen

            self._pidbox = listen(self, self.connection)
        logger.info("Connected to %s", broker.masked_url)

    def _apply_qos(self) -> None:
        if self._kombu_consumer is not None and self.prefetch_count:
            self._kombu_consumer.qos(prefetch_count=self.prefetch_count + self._qos_extra)

    def close(self) -> None:
        if self._pidbox is not None:
            try:
                self._pidbox.cancel()
            except self.recoverable_errors:
                pass
            self._pidbox = None
        if self._kombu_consumer is not None:
            try:
                self._kombu_consumer.cancel()
            except self.recoverable_errors:
                pass
        if self.connection is not None:
            self.connection.release()
            self.connection = None

    # -- receiving --------------------------------------------------------------------------
    def on_message(self, message: Message) -> None:
        """Validate a message into a Request; anything broken is logged and dropped, never raised."""
        try:
            body = message.decode()
        except ContentDisallowed as exc:
            logger.error(
                "Refused message with content type %r: %s (accept_content is %s)",
                message.content_type,
                exc,
                sorted(self.accept),
            )
            message.reject(requeue=False)
            signals.task_rejected.send(sender=self, message=message, exc=exc)
            return
        except (DecodeError, Exception) as exc:
            logger.critical(
                "Cannot decode message body, dropping it: %r (content type %r)", exc, message.content_type
            )
            message.ack()
            signals.task_rejected.send(sender=self, message=message, exc=exc)
            return
        try:
            req = parse(message.headers, body, message.properties, message.delivery_info)
        except Exception as exc:  # InvalidTaskError, or a header of a type nobody expected
            logger.error("Invalid task message dropped: %s; headers=%r", exc, dict(message.headers or {}))
            message.ack()
            signals.task_rejected.send(sender=self, message=message, exc=exc)
            return
        try:
            task = self.app.tasks[req.name]
        except NotRegistered:
            self._unknown_task(message, req)
            return
        try:
            self._accept(message, req, task)
        except Exception:  # a bug must cost this one message, never the worker
            logger.exception("Internal error handling %s[%s]; the message is rejected", req.name, req.id)
            if not message.acknowledged:
                message.reject(requeue=False)

    def _accept(self, message: Message, req: Any, task: Any) -> None:
        request = Request(message, req, task, self.hostname)
        signals.task_received.send(sender=self, request=request)
        logger.info("Task %s[%s] received", request.name, request.id)
        if self._skip(request):
            return
        if req.eta is not None and req.eta > datetime.now(timezone.utc):
            heapq.heappush(self.eta_heap, (req.eta.timestamp(), next(self._seq), request))
            self._qos_extra += 1  # an ETA message must not hold a prefetch slot hostage
            self._apply_qos()
            return
        self.ready.append(request)

    def _unknown_task(self, message: Message, req: Any) -> None:
        logger.error(
            "Received unregistered task of type %r.\nThe message has been ignored and discarded.\n"
            "Did you remember to import the module containing this task (imports/include)?",
            req.name,
        )
        signals.task_unknown.send(
            sender=self, name=req.name, id=req.id, message=message, exc=NotRegistered(req.name)
        )
        message.reject(requeue=False)
        if not req.ignore_result:
            self._store_quietly(req.id, NotRegistered(req.name), states.FAILURE)

    def revoke(self, task_ids: list[str], terminate: bool = False) -> None:
        """Remember the ids, mark still-pending ones REVOKED, drop the ones held here unstarted."""
        for task_id in task_ids:
            self.revoked.add(task_id)
            try:
                if self.app.backend.get_task_meta(task_id)["status"] in REVOCABLE_STATES:
                    self.app.backend.mark_as_revoked(task_id, "revoked")
            except Exception as exc:  # results may be disabled or down; the revoke still holds here
                logger.debug("could not mark %s REVOKED: %r", task_id, exc)
        held = [r for r in self.ready if r.id in self.revoked]
        held += [r for _, _, r in self.eta_heap if r.id in self.revoked]
        for request in held:
            self._discard(request, "revoked")
        if held:
            self.ready = deque(r for r in self.ready if r not in held)
            self.eta_heap = [e for e in self.eta_heap if e[2] not in held]
            heapq.heapify(self.eta_heap)
        running = [r.id for r in self.active if r.id in self.revoked]
        if terminate and running:
            logger.warning("revoke(terminate=True): %s pool cannot stop running tasks %s", self.pool, running)

    def _skip(self, request: Request) -> bool:
        """Discard a request that must not run (revoked, or past its expiry); True if it was."""
        if request.id in self.revoked:
            reason = "revoked"
        elif request.req.expires is not None and request.req.expires <= datetime.now(timezone.utc):
            reason = "expired"
        else:
            return False
        self._discard(request, reason)
        return True

    def _discard(self, request: Request, reason: str) -> None:
        """Ack without running, store REVOKED, and release a chord waiting for this member."""
        logger.info("Discarding %s task %s[%s]", reason, request.name, request.id)
        request.ack()
        signals.task_revoked.send(
            sender=request.task, request=request.context(), terminated=False, signum=None,
            expired=reason == "expired",
        )  # fmt: skip
        if not request.req.ignore_result:
            self._store_quietly(request.id, reason, states.REVOKED, request)
        if request.req.chord:  # a chord must not wait forever for a member that will not run
            try:
                self.app.backend.on_chord_part_return(
                    request.context(), states.REVOKED, TaskRevokedError(reason)
                )
            except Exception as exc:
                logger.warning("could not report %s chord member %s: %r", reason, request, exc)

    def _store_quietly(self, task_id: str, value: Any, state: str, request: Request | None = None) -> None:
        try:
            backend = self.app.backend
            if state == states.REVOKED:
                backend.mark_as_revoked(task_id, str(value), request=request.context() if request else None)
            else:
                backend.store_result(task_id, value, state)
        except Exception as exc:  # a result store problem must not stop consumption
            logger.warning("could not store %s for %s: %r", state, task_id, exc)

    # -- dispatching ------------------------------------------------------------------------
    def _promote_due_etas(self) -> float | None:
        """Move due ETA tasks to the ready queue; seconds until the next one is due."""
        now = time.time()
        while self.eta_heap and self.eta_heap[0][0] <= now:
            _, _, request = heapq.heappop(self.eta_heap)
            self._qos_extra -= 1
            self._apply_qos()
            if not self._skip(request):
                self.ready.append(request)
        return self.eta_heap[0][0] - now if self.eta_heap else None

    def _dispatch(self) -> None:
        while self.ready and self.pool.free_slots > 0 and not self.stopping:
            request = self.ready.popleft()
            if self._skip(request):
                continue
            if not request.acks_late:
                request.ack()
            self.active.add(request)
            context = request.context()
            task = request.task
            self.pool.apply_async(
                functools.partial(execute, task, context),
                functools.partial(self._completed, request),
            )

    def _completed(self, request: Request, outcome: Outcome | BaseException) -> None:
        """Called in the pool's thread: hand the outcome over to the consumer's thread."""
        self.completions.put((request, outcome))

    def _finish(self, request: Request, outcome: Outcome | BaseException) -> None:
        self.active.discard(request)
        self.processed += 1
        if isinstance(outcome, BaseException):  # execute() itself failed: a taskq bug
            signals.task_internal_error.send(
                sender=request.task, task_id=request.id, args=request.req.args, kwargs=request.req.kwargs,
                request=request, exception=outcome, traceback=outcome.__traceback__, einfo=None,
            )  # fmt: skip
            outcome = Outcome(states.FAILURE, exc=outcome)
        level, line = describe(outcome, request.name, request.id)
        logger.log(level, line)
        try:
            if outcome.state == states.REJECTED:
                if outcome.requeue and request.acked:
                    logger.warning(
                        "Reject(requeue=True) by %s had no effect: its message was acked when it "
                        "started (set acks_late=True to requeue)", request,
                    )  # fmt: skip
                request.reject(requeue=outcome.requeue)
            else:
                request.ack()
        except self.recoverable_errors as exc:
            logger.warning("could not ack %s, the broker will redeliver it: %r", request, exc)

    def _drain_completions(self) -> None:
        while True:
            try:
                self._finish(*self.completions.get_nowait())
            except queue.Empty:
                return

    # -- the loop ---------------------------------------------------------------------------
    def step(self) -> None:
        """One turn: completions, due ETAs, dispatch, then wait for the broker."""
        assert self.connection is not None
        self._drain_completions()
        next_eta = self._promote_due_etas()
        self._dispatch()
        wait = self.idle_wait if next_eta is None else min(max(next_eta, 0.0), self.idle_wait)
        if self.active:
            # Running tasks report back through a queue this thread cannot block on while it
            # blocks on the broker, so it blocks on the broker only briefly.
            wait = min(wait, ACTIVE_TICK)
        self._drain_broker(wait)
        self.connection.heartbeat_check()

    def _drain_broker(self, timeout: float) -> None:
        assert self.connection is not None
        try:
            self.connection.drain_events(timeout=timeout)
        except TimeoutError:
            pass

    def loop(self) -> None:
        """Consume until ``stopping``; on connection loss, reconnect and carry on."""
        while not self.stopping:
            try:
                self.step()
            except self.recoverable_errors as exc:
                if self.stopping:
                    break
                self._on_connection_lost(exc)

    def _on_connection_lost(self, exc: BaseException) -> None:
        logger.error("Connection to broker lost: %r. Reconnecting...", exc)
        # Unacked messages return to the queue broker-side; forget our copies of them.
        self.ready.clear()
        self.eta_heap.clear()
        try:
            self.close()
        except Exception:  # the connection is already broken
            pass
        self.connect()

    def shutdown(self, graceful: bool = True) -> None:
        """Return waiting messages to the queue, let running tasks finish (warm), disconnect."""
        self.stopping = True
        waiting = list(self.ready) + [r for _, _, r in self.eta_heap]
        self.ready.clear()
        self.eta_heap.clear()
        for request in waiting:
            try:
                request.reject(requeue=True)
            except self.recoverable_errors:
                pass
        if waiting:
            logger.info("Returned %d unstarted task(s) to the queue", len(waiting))
        self.pool.stop(graceful=graceful)
        self._drain_completions()
        self.close()
