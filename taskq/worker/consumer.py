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
from collections import Counter, deque
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from kombu import Consumer as KombuConsumer
from kombu import Queue

from taskq import signals
from taskq.broker import CONNECTION_ERRORS
from taskq.events import EventDispatcher
from taskq.worker import broker_link, deliveries, intake, outcomes, prefetch
from taskq.worker.control import Revoked
from taskq.worker.events import received_fields
from taskq.worker.execute import Outcome
from taskq.worker.parking import Parking
from taskq.worker.pools import Job, Pool
from taskq.worker.ratelimit import RATE_LIMITED_HELD_MAX, RateLimits
from taskq.worker.request import Request

if TYPE_CHECKING:
    from kombu import Connection
    from kombu.message import Message

    from taskq.app import App
    from taskq.worker.autoscale import Autoscaler

logger = logging.getLogger("taskq.worker")
ACTIVE_TICK = 0.005  # longest a finished task waits for its ack and for its slot to be refilled
#: while the pool is full: how often the broker is still read (remote control, heartbeats)
CONTROL_TICK = 0.05


class Consumer:
    """Receives task messages from ``queues`` and runs them on ``pool``."""

    def __init__(
        self,
        app: App,
        pool: Pool,
        queues: list[Queue],
        hostname: str,
        prefetch_multiplier: int = 1,
    ) -> None:
        self.app = app
        self.pool = pool
        self.queues = queues
        self.hostname = hostname
        #: messages reserved per free pool slot; 0 means no bound (Celery's meaning)
        self.prefetch_multiplier = max(prefetch_multiplier, 0)
        self.prefetch_count = pool.limit * self.prefetch_multiplier
        self.eta_limit: int | None = app.conf.worker_eta_task_limit or None
        #: far-off ETA tasks wait on the broker, not here (parking.py)
        self.parking = Parking(app.conf.worker_eta_broker_threshold)
        self._broker_due = 0.0  # when a full pool's loop next reads the broker (step())
        #: a connection error an ack swallowed: the next turn reconnects (step())
        self._broken: BaseException | None = None
        self.rate_limits = RateLimits(app, enabled=not app.conf.worker_disable_rate_limits)
        self.warm_shutdown_timeout: float | None = app.conf.worker_warm_shutdown_timeout
        #: resizes the pool; the slots it may still add are fetched for too, or demand never shows
        self.autoscaler: Autoscaler | None = None
        self.heartbeat_rate = int(app.conf.broker_heartbeat_checkrate or 2)
        self.accept = set(app.conf.accept_content or ["json"])
        self.completions: queue.SimpleQueue[tuple[Request, Outcome | BaseException]] = queue.SimpleQueue()
        self.ready: deque[Request] = deque()
        self.eta_heap: list[tuple[float, int, Request]] = []
        self._seq = itertools.count()
        self.active: set[Request] = set()
        self.connection: Connection | None = None
        self._kombu_consumer: KombuConsumer | None = None
        self._qos_extra = 0
        #: Redis messages taken but not recorded as unacked when the connection died (prefetch.py)
        self._orphans: list[tuple[Any, str, str]] = []
        self.stopping = False
        self.processed = 0
        self.total: Counter[str] = Counter()  # tasks started, by name (inspect stats)
        self.started_at = time.time()
        #: longest a drain blocks while nothing runs: how soon an idle worker notices stop()
        self.idle_wait = 1.0
        self.revoked = Revoked()
        self.remote_control = bool(app.conf.worker_enable_remote_control)
        self._pidbox: KombuConsumer | None = None
        self._pidbox_retry_at = 0.0  # while remote control could not start: when to try again
        #: monitoring events (task events with -E; the worker starts its heartbeat)
        self.events = EventDispatcher(
            app, hostname, task_events=bool(app.conf.worker_send_task_events),
            worker_fields=lambda: {"active": len(self.active), "processed": self.processed},
        )  # fmt: skip
        self.recoverable_errors: tuple[type[BaseException], ...] = CONNECTION_ERRORS

    # -- connection -------------------------------------------------------------------------
    def connect(self, startup: bool = False) -> None:
        """Connect (retrying with back-off, as configured) and start consuming."""
        broker_link.connect(self, startup)

    def wants_more(self) -> bool:
        return self.fetch_budget() > 0

    def fetch_budget(self) -> int:
        """How many more messages to reserve now (see docs/worker.md, "Prefetch")."""
        if not self.prefetch_multiplier:
            return 1 << 30
        if self.rate_limits.held >= RATE_LIMITED_HELD_MAX:
            return 0
        # Rate-limited messages waiting for their token are not counted here: they must not
        # stop this worker from fetching the other tasks behind them.
        headroom = self.autoscaler.headroom if self.autoscaler is not None else 0
        # Multiplier 1: a message only for a free slot (fair). N > 1 also keeps (N - 1) x the
        # pool's size reserved ahead, Celery's prefetch, for fewer round trips.
        ahead = (self.prefetch_multiplier - 1) * self.pool.limit
        return self.pool.free_slots + headroom + ahead - len(self.ready)

    def _sync_qos(self) -> None:
        """Widen the prefetch window by the messages held waiting for a time (an ETA, up to
        ``eta_limit``, or a rate-limit token): they must not hold the pool's slots hostage."""
        eta = len(self.eta_heap) if self.eta_limit is None else min(len(self.eta_heap), self.eta_limit)
        held = eta + self.rate_limits.held
        if self._qos_extra != held:
            self._qos_extra = held
            self._apply_qos()

    def _apply_qos(self) -> None:
        if self._kombu_consumer is not None and self.prefetch_count:
            self._kombu_consumer.qos(
                prefetch_count=self.prefetch_count + self._qos_extra,
                apply_global=prefetch.qos_global(self.connection, self.queues),
            )

    def close(self) -> None:
        broker_link.close(self)

    # -- receiving --------------------------------------------------------------------------
    def on_message(self, message: Message) -> None:
        """Validate a message into a Request (intake.py); anything broken is refused, never raised."""
        received = intake.receive(self.app, message, self.accept, sender=self)
        if received is None:
            return
        req, task = received
        try:
            self._accept(message, req, task)
        except Exception:  # a bug must cost this one message, never the worker
            logger.exception("Internal error handling %s[%s]; the message is rejected", req.name, req.id)
            if not message.acknowledged:
                message.reject(requeue=False)

    def _accept(self, message: Message, req: Any, task: Any) -> None:
        request = Request(message, req, task, self.hostname)
        if deliveries.screen(self.app, request, self._kombu_consumer):
            return  # redelivered: re-queued with its count, or dead-lettered (deliveries.py)
        signals.task_received.send(sender=self, request=request)
        logger.info("Task %s[%s] received", request.name, request.id)
        if self._skip(request):
            return
        if self.events.task_events:  # the fields cost more than the rest of the check
            self.events.task("task-received", **received_fields(req))
        if req.eta is not None and req.eta > datetime.now(timezone.utc):
            if self.parking.park(request, self.connection, self._kombu_consumer, len(self.eta_heap)):
                return
            heapq.heappush(self.eta_heap, (req.eta.timestamp(), next(self._seq), request))
            # Past eta_limit an ETA message holds a prefetch slot, so a flood of ETA tasks
            # stops the fetching instead of growing memory.
            self._sync_qos()
            return
        self.ready.append(request)

    def _skip(self, request: Request) -> bool:
        """Discard a request that must not run (revoked, or past its expiry); True if it was."""
        if request.id in self.revoked or self.revoked.stamped(request.req.headers):
            reason = "revoked"
        elif request.req.expires is not None and request.req.expires <= datetime.now(timezone.utc):
            reason = "expired"
        else:
            return False
        outcomes.discard(self.app, request, reason, events=self.events)
        return True

    # -- dispatching ------------------------------------------------------------------------
    def _promote_due_etas(self) -> float | None:
        """Move due ETA tasks to the ready queue; seconds until the next one is due."""
        now = time.time()
        while self.eta_heap and self.eta_heap[0][0] <= now:
            _, _, request = heapq.heappop(self.eta_heap)
            self._sync_qos()
            if not self._skip(request):
                self.ready.append(request)
        return self.eta_heap[0][0] - now if self.eta_heap else None

    def _dispatch(self) -> None:
        while self.pool.free_slots > 0 and not self.stopping:
            request = self.rate_limits.pop_due()  # a token came: ahead of newer arrivals
            if request is None:
                if not self.ready:
                    return
                request = self.ready.popleft()
                if not self.rate_limits.admit(request):
                    self._sync_qos()
                    continue
            else:
                self._sync_qos()
            if self._skip(request):
                continue
            self._start(request)

    def _start(self, request: Request) -> None:
        if not request.acks_late:
            try:
                request.ack()
            except self.recoverable_errors as exc:
                # The connection is gone: the broker will deliver it again, so running it here
                # too would run it twice. The next turn notices the loss and reconnects.
                logger.info("could not ack %s before starting it (%r); left for redelivery", request, exc)
                self._ack_failed(request, exc)
                return
        self.active.add(request)
        self.total[request.req.name] += 1
        hard, soft = request.time_limits()
        request.job = Job(
            request.task,
            request.context(),
            functools.partial(self._completed, request),
            soft_limit=soft,
            hard_limit=hard,
        )
        self.events.task("task-started", uuid=request.id)
        self.pool.submit(request.job)

    def _completed(self, request: Request, outcome: Outcome | BaseException) -> None:
        """Called in the pool's thread: hand the outcome over to the consumer's thread."""
        self.completions.put((request, outcome))

    def _finish(self, request: Request, outcome: Outcome | BaseException) -> None:
        self.active.discard(request)
        self.processed += 1
        try:
            outcomes.settle(self.app, request, outcome, stopping=self.stopping, events=self.events)
        except self.recoverable_errors as exc:
            logger.info(
                "could not ack %s on a lost connection; the broker will redeliver it: %r", request, exc
            )
            self._ack_failed(request, exc)

    def _ack_failed(self, request: Request, exc: BaseException) -> None:
        """Remember a dead connection an ack found, unless it was one already replaced."""
        channel = getattr(request.message, "channel", None)
        current = self.connection
        if current is not None and getattr(channel, "connection", None) is current._connection:
            self._broken = self._broken or exc

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
        if self._broken is not None:
            # An ack found the connection dead. py-amqp raises that once, and the connection
            # then reads as merely quiet: reconnect now rather than wait on it forever.
            broken, self._broken = self._broken, None
            raise broken
        self.parking.upkeep(self._kombu_consumer)
        next_eta = self._promote_due_etas()
        self._dispatch()
        if self.autoscaler is not None:
            self.autoscaler.tick(len(self.active) + len(self.ready) + self.rate_limits.held)
        wait = self.idle_wait
        for due in (next_eta, self.rate_limits.next_wait()):
            if due is not None:
                wait = min(max(due, 0.0), wait)
        if self.active and not self.wants_more():
            # Nothing to fetch until a task ends: wait for that (woken the moment it happens),
            # and look at the broker without blocking, for control messages and heartbeats.
            self._await_completion(wait)
        else:
            if self.active:
                # Running tasks report back through a queue this thread cannot block on while
                # it blocks on the broker, so it blocks on the broker only briefly.
                wait = min(wait, ACTIVE_TICK)
            self._drain_broker(wait)
            self._broker_due = time.monotonic() + CONTROL_TICK
        self.connection.heartbeat_check(rate=self.heartbeat_rate)

    def _await_completion(self, wait: float) -> None:
        now = time.monotonic()
        try:
            self._finish(*self.completions.get(timeout=max(min(wait, self._broker_due - now), 0.0)))
        except queue.Empty:
            pass
        if time.monotonic() >= self._broker_due:
            self._drain_broker(0)
            self._broker_due = time.monotonic() + CONTROL_TICK

    def _drain_broker(self, timeout: float) -> None:
        assert self.connection is not None
        if self.remote_control:
            broker_link.keep_remote_control(self)
        try:
            self.connection.drain_events(timeout=timeout)
        except TimeoutError:
            pass

    def loop(self) -> None:
        """Consume until ``stopping``; on connection loss, reconnect and carry on.

        A reconnect can lose its new connection half-way (the broker flaps while queues are
        declared): that is one more loss, retried after a pause, not the end of the worker.
        """
        lost: BaseException | None = None
        while not self.stopping:
            try:
                if lost is None:
                    self.step()
                else:
                    broker_link.replace_lost(self, lost)
                    lost = None
            except self.recoverable_errors as exc:
                if lost is not None:
                    time.sleep(2.0)  # kombu's first back-off interval: no tight reconnect loop
                lost = exc

    def shutdown(self, graceful: bool = True) -> None:
        """Give back unstarted messages at once; warm: let running tasks finish, then disconnect.

        While running tasks finish, the loop keeps acking them and answering broker heartbeats;
        past ``worker_warm_shutdown_timeout`` the ones still running are stopped, unrecorded.
        """
        self.stopping = True
        if self._kombu_consumer is not None:
            try:
                self._kombu_consumer.cancel()  # nothing new arrives while we wait
            except Exception:  # a broken connection cannot cancel; closing will do
                pass
        self._return_unstarted()
        if graceful and self.active:
            logger.info("Waiting for %d running task(s) to finish", len(self.active))
            self._wait_for_active(self.warm_shutdown_timeout)
            if self.active:
                logger.warning(
                    "Warm shutdown timeout (%ss) passed: stopping %d running task(s)",
                    self.warm_shutdown_timeout, len(self.active),
                )  # fmt: skip
                graceful = False
        self.pool.stop(graceful=graceful)
        self._drain_completions()
        self._return_unstarted()  # whatever arrived while the cancel travelled
        self.close()

    def _return_unstarted(self) -> None:
        waiting = list(self.ready) + [r for _, _, r in self.eta_heap] + self.rate_limits.clear()
        self.ready.clear()
        self.eta_heap.clear()
        for request in waiting:
            try:
                request.reject(requeue=True)
            except self.recoverable_errors:
                pass
        if waiting:
            logger.info("Returned %d unstarted task(s) to the queue", len(waiting))

    def _wait_for_active(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.active and (deadline is None or time.monotonic() < deadline):
            try:
                self._finish(*self.completions.get(timeout=0.1))
            except queue.Empty:
                pass
            if self.connection is not None:
                try:
                    self._drain_broker(0)  # acks flush, pidbox answers, heartbeats go out
                    self.connection.heartbeat_check(rate=self.heartbeat_rate)
                except self.recoverable_errors:
                    pass  # lost now: the broker gives unacked messages back by itself
