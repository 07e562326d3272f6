"""Beat: the service that sends periodic tasks (``taskq beat``, ``taskq worker -B``).

The loop is plain: hold the leader lease (or wait for it), ``tick()`` the scheduler, sleep until
the next entry may be due or the lease needs renewing. Any number of beats may run against one
broker; the lease (``beat_lease``) lets exactly one send, and every send is claimed in the lease
store first, so a beat taking over never repeats a tick the old leader sent. Stores: the app's
Redis, the embedded SQLite file, or the process for ``memory://``; with none (AMQP and no Redis
or SQLite result backend) beat runs unleased, as Celery's does: run one beat only.

This module is also ``celery.beat`` for ported code: ``Scheduler``, ``PersistentScheduler``,
``ScheduleEntry``, ``Service``, ``EmbeddedService`` under Celery's names, plus the app hooks
Celery documents for programmatic schedules: ``add_periodic_task`` and the ``on_after_configure``
/ ``on_after_finalize`` signals.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from taskq import _state, signals
from taskq.beat_lease import Lease, lease_for
from taskq.beat_scheduler import (
    DEFAULT_MAX_INTERVAL,
    BeatLazyFunc,
    LeaseLost,
    PersistentScheduler,
    ScheduleEntry,
    Scheduler,
    SchedulingError,
)
from taskq.config import import_object
from taskq.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from taskq.app import App

__all__ = [
    "DEFAULT_MAX_INTERVAL", "BeatLazyFunc", "EmbeddedService", "PersistentScheduler", "ScheduleEntry",
    "Scheduler", "SchedulingError", "Service", "add_periodic_task",
    "load_scheduler_class",
]  # fmt: skip

logger = logging.getLogger("taskq.beat")

SCHEDULER_ALIASES: dict[str, type[Scheduler]] = {
    "celery.beat:PersistentScheduler": PersistentScheduler,
    "celery.beat.PersistentScheduler": PersistentScheduler,
    "celery.beat:Scheduler": Scheduler,
    "celery.beat.Scheduler": Scheduler,
    "persistent": PersistentScheduler,
    "memory": Scheduler,
}
NO_LEASE_WARNING = (
    "beat: no shared store for the leader lease (%s): this beat sends on its own. Run only one "
    "beat (one worker with -B), as with Celery, or use a Redis or SQLite broker or result backend."
)


def load_scheduler_class(spec: str | type[Any] | None) -> type[Any]:
    """``--scheduler``/``beat_scheduler``: a class or its dotted path; Celery's names map to ours."""
    if spec is None or isinstance(spec, type):
        return spec or PersistentScheduler
    if spec in SCHEDULER_ALIASES:
        return SCHEDULER_ALIASES[spec]
    try:
        found = import_object(spec)
    except (ImportError, AttributeError) as exc:
        raise ImproperlyConfigured(f"cannot load scheduler class {spec!r}: {exc}") from exc
    if not isinstance(found, type) or not callable(getattr(found, "tick", None)):
        raise ImproperlyConfigured(f"{spec!r} is not a scheduler class (it needs a tick() method)")
    return found


class Service:
    """The beat loop: keep or wait for the lease, tick, sleep; on stop, sync and release.

    ``lease``: True finds the app's store (``lease_for``), False runs unleased, or a ``Lease``.
    ``remote_control`` is Celery's (beat answering ``inspect ping``), accepted and not built yet.
    """

    scheduler_cls: Any = PersistentScheduler

    def __init__(
        self,
        app: App,
        max_interval: float | None = None,
        schedule_filename: str | None = None,
        scheduler_cls: str | type[Any] | None = None,
        remote_control: bool | None = None,
        hostname: str | None = None,
        *,
        lease: Lease | bool = True,
    ) -> None:
        self.app = app
        self.max_interval = max_interval or app.conf.beat_max_loop_interval
        self.scheduler_cls = scheduler_cls or app.conf.beat_scheduler or self.scheduler_cls
        self.schedule_filename = schedule_filename or app.conf.beat_schedule_filename
        self.hostname = hostname
        self.remote_control = remote_control
        self.lease: Lease | None = lease if isinstance(lease, Lease) else None
        self._want_lease = lease is True
        self._scheduler: Any = None
        self._term: int | None = None  # the lease term whose shared state the scheduler adopted
        self._stop = threading.Event()
        self._stopped = threading.Event()

    # -- set-up -----------------------------------------------------------------------------
    @property
    def scheduler(self) -> Any:
        """Built on first use: task modules imported, app signals sent, lease found."""
        if self._scheduler is None:
            self.app.import_modules()
            self.app.finalize()
            if self._want_lease:
                self.lease = lease_for(self.app)
            self._scheduler = self.get_scheduler()
        return self._scheduler

    def get_scheduler(self, lazy: bool = False) -> Any:
        cls = load_scheduler_class(self.scheduler_cls)
        options: dict[str, Any] = {
            "schedule_filename": self.schedule_filename,
            "max_interval": self.max_interval,
        }
        if issubclass(cls, Scheduler):
            options["lease"] = self.lease
        elif self.lease is not None:
            logger.warning("beat: scheduler %s cannot use the leader lease; running unleased", cls.__name__)
            self.lease.close()
            self.lease = None
        return cls(app=self.app, lazy=lazy, **options)

    def describe_lease(self) -> str:
        lease = self.lease
        if lease is None:
            return "none (run a single beat)"
        return f"{lease.store} {lease.name!r}, {lease.seconds:g} s"

    # -- running ----------------------------------------------------------------------------
    def start(self, embedded_process: bool = False) -> None:
        """Run until ``stop()`` (or SIGTERM/SIGINT in ``taskq beat``)."""
        scheduler = self.scheduler
        logger.info("beat: Starting...")
        for name in ("beat_init", "beat_embedded_init") if embedded_process else ("beat_init",):
            signal = getattr(signals, name, None)
            if signal is not None:
                signal.send(sender=self)
        if self.lease is None:
            logger.warning(NO_LEASE_WARNING, self.app.broker.masked_url)
        logger.debug("beat: ticking with max interval %s s", getattr(scheduler, "max_interval", "?"))
        try:
            while not self._stop.is_set():
                delay = self.run_once()
                if delay > 0:
                    self._stop.wait(delay)
        except (KeyboardInterrupt, SystemExit):
            self._stop.set()
        finally:
            self.close()

    def run_once(self) -> float:
        """One pass: the lease, then a tick when leading; the seconds to sleep."""
        scheduler, lease = self.scheduler, self.lease
        if lease is not None:
            if not lease.ensure():
                return lease.next_check()
            if lease.token != self._term:
                try:  # a new tenure: start from what earlier leaders sent
                    scheduler.adopt(lease.shared_entries())
                except Exception as exc:
                    logger.error("beat: cannot read the lease store (%s): %s; not sending", lease.store, exc)
                    lease.token = None
                    return lease.retry_interval
                self._term = lease.token
        try:
            delay = float(scheduler.tick())
        except LeaseLost:
            return lease.next_check() if lease is not None else 0.0
        return min(delay, lease.next_check()) if lease is not None else delay

    def sync(self) -> None:
        """Write the schedule and close the scheduler (Celery's name for the shutdown step)."""
        if self._scheduler is not None:
            self._scheduler.close()

    def close(self) -> None:
        try:
            self.sync()
        except Exception:
            logger.exception("beat: could not save the schedule on shutdown")
        finally:
            if self.lease is not None:
                self.lease.release()
                self.lease.close()
            self._stopped.set()
            logger.info("beat: stopped")

    def stop(self, wait: bool = False, timeout: float | None = None) -> None:
        logger.info("beat: Shutting down...")
        self._stop.set()
        if wait:
            self._stopped.wait(timeout)


class EmbeddedService(threading.Thread):
    """Beat in a thread of a worker (``taskq worker -B``): started when the worker is ready."""

    def __init__(self, app: App, **kwargs: Any) -> None:
        super().__init__(name="Beat", daemon=True)
        self.app = app
        self.service = Service(app, **kwargs)

    def run(self) -> None:
        _state.set_current_app(self.app)
        try:
            self.service.start(embedded_process=True)
        except Exception:
            logger.exception("beat: the embedded beat stopped on an error; the worker goes on without it")

    def stop(self, timeout: float = 10.0) -> None:
        self.service.stop()
        if self.is_alive():
            self.join(timeout)


# -- the app hooks (App delegates to these) -------------------------------------------------
def add_periodic_task(
    app: App,
    schedule: Any,
    sig: Any,
    args: Any = (),
    kwargs: Any = (),
    name: str | None = None,
    **opts: Any,
) -> str:
    """Add ``sig`` (a signature, task or task name) to ``beat_schedule``; the entry's key.

    The key is ``name``, else the signature's repr (``proj.add(2, 2)``), so adding the same
    unnamed signature twice replaces the first, as in Celery.
    """
    from taskq.canvas import Signature

    signature = sig if isinstance(sig, Signature) else Signature(sig, app=app)
    signature = signature.clone(tuple(args or ()), dict(kwargs or {}))
    key = name or repr(signature)
    entry = {
        "schedule": schedule,
        "task": signature.task,
        "args": signature.args,
        "kwargs": signature.kwargs,
        "options": {**signature.options, **opts},
    }
    current: Mapping[str, Any] = app.conf.beat_schedule or {}
    if name is None and key in current:
        logger.warning(
            "Periodic task key=%r shadowed a previous unnamed periodic task. Pass a name kwarg to "
            "add_periodic_task to silence this warning.",
            key,
        )
    app.conf.beat_schedule = {**current, key: entry}  # a new dict: never change the shared default
    return key
