"""Beat's schedulers: the periodic entries, and ``tick()``, which sends the due ones.

``Scheduler.tick()`` sends every due entry and says how long to sleep; ``PersistentScheduler``
keeps each entry's last run in the schedule file (``beat_store``), so a restart neither repeats
nor forgets runs, and a run missed during downtime is sent once, not once per missed period.
The messages are ordinary task messages with the header ``celery_beat_task: True``, as Celery
5.7 sends them. ``taskq.beat`` re-exports all of this under Celery's module name.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from taskq import _state
from taskq.beat_lease import Lease
from taskq.beat_store import EntryState, ScheduleFile, StoredSchedule
from taskq.exceptions import ImproperlyConfigured
from taskq.schedules import BaseSchedule, maybe_schedule

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.result import AsyncResult

__all__ = [
    "DEFAULT_MAX_INTERVAL", "BeatLazyFunc", "LeaseLost", "PersistentScheduler", "ScheduleEntry",
    "Scheduler", "SchedulingError",
]  # fmt: skip

logger = logging.getLogger("taskq.beat")
DEFAULT_MAX_INTERVAL = 300.0  # beat_max_loop_interval 0 means this, as in Celery
ENTRY_FIELDS = frozenset({"task", "schedule", "args", "kwargs", "options", "relative", "last_run_at", "total_run_count"})  # fmt: skip
# Task attributes that apply_async would add as send options (it is not used: it would turn the
# args list into a tuple, changing argsrepr, and run eagerly under task_always_eager).
TASK_OPTIONS = ("queue", "routing_key", "exchange", "priority", "shadow", "expires", "delivery_mode")


class SchedulingError(Exception):
    """An entry could not be sent."""


class LeaseLost(Exception):
    """Another beat leads now: this one must not send."""


class BeatLazyFunc:
    """An argument computed when the entry is sent: ``BeatLazyFunc(datetime.now)`` (Celery's)."""

    def __init__(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._func, self._args, self._kwargs = func, args, kwargs

    def __call__(self) -> Any:
        return self.delay()

    def delay(self) -> Any:
        return self._func(*self._args, **self._kwargs)


class ScheduleEntry:
    """One periodic task: what to send, its schedule, and when it was last sent."""

    def __init__(
        self,
        name: str | None = None,
        task: str | None = None,
        last_run_at: datetime | None = None,
        total_run_count: int | None = None,
        schedule: float | Any = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        relative: bool = False,
        app: App | None = None,
    ) -> None:
        self.app = app or _state.current_app()
        self.name = name
        self.task = task
        self.args = args
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})
        self.schedule: BaseSchedule = maybe_schedule(schedule, relative, app=self.app)  # type: ignore[assignment]
        self.last_run_at = last_run_at or self.default_now()
        self.total_run_count = total_run_count or 0

    def default_now(self) -> datetime:
        return self.schedule.now() if self.schedule is not None else self.app.now()

    def _next_instance(self, last_run_at: datetime | None = None) -> ScheduleEntry:
        """A copy run once more: ``last_run_at`` now (or as given), the count one higher."""
        entry = ScheduleEntry(
            self.name, self.task, last_run_at or self.default_now(), self.total_run_count + 1,
            self.schedule, self.args, self.kwargs, self.options, app=self.app,
        )  # fmt: skip
        return entry

    next = __next__ = _next_instance

    def update(self, other: ScheduleEntry) -> None:
        """Take the editable fields of ``other`` (a changed config), keeping the run history."""
        self.task, self.schedule, self.args = other.task, other.schedule, other.args
        self.kwargs, self.options = other.kwargs, other.options

    def is_due(self) -> tuple[bool, float]:
        due, next_check = self.schedule.is_due(self.last_run_at)
        return bool(due), float(next_check)

    def state(self) -> EntryState:
        return EntryState(self.last_run_at, self.total_run_count, self.task)

    def editable_fields_equal(self, other: ScheduleEntry) -> bool:
        fields = ("task", "args", "kwargs", "options", "schedule")
        return all(getattr(self, f) == getattr(other, f) for f in fields)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ScheduleEntry):
            return self.editable_fields_equal(other)
        return NotImplemented

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        call = ", ".join([*(repr(a) for a in self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"<ScheduleEntry: {self.name} {self.task}({call}) {self.schedule!r}>"


def _evaluate(value: Any) -> Any:
    return value() if isinstance(value, BeatLazyFunc) else value


class Scheduler:
    """Holds the entries and sends the due ones; history lives only in memory (see Persistent).

    ``lease``: when set, every send is first claimed in the lease store (``Lease.claim``) and a
    refused claim stops the tick with ``LeaseLost``.
    """

    Entry = ScheduleEntry
    max_interval = DEFAULT_MAX_INTERVAL
    sync_every = 180.0  # seconds: unsynced changes are written at least this often
    # Paces the loop (which entries to look at again when); not the schedules' time, which is
    # the app's clock. Tests with a fake app clock swap this too.
    clock: Callable[[], float] = time.monotonic

    def __init__(
        self,
        app: App,
        schedule: dict[str, ScheduleEntry] | None = None,
        max_interval: float | None = None,
        lazy: bool = False,
        sync_every_tasks: int | None = None,
        lease: Lease | None = None,
        **kwargs: Any,
    ) -> None:
        self.app = app
        self.data: dict[str, ScheduleEntry] = {} if schedule is None else schedule
        self.max_interval = float(max_interval or app.conf.beat_max_loop_interval or self.max_interval)
        self.sync_every_tasks = app.conf.beat_sync_every if sync_every_tasks is None else sync_every_tasks
        self.lease = lease
        self._due_at: dict[str, float] = {}  # entry -> monotonic time to look at it again
        self._tasks_since_sync = 0
        self._last_sync = self.clock()
        if not lazy:
            self.setup_schedule()

    # -- the schedule -----------------------------------------------------------------------
    @property
    def schedule(self) -> dict[str, ScheduleEntry]:
        return self.data

    def setup_schedule(self) -> None:
        self.merge_inplace(self.app.conf.beat_schedule)

    def entry_from_config(self, name: str, fields: Any) -> ScheduleEntry:
        """An entry from a ``beat_schedule`` item, with errors that name the entry."""
        if isinstance(fields, ScheduleEntry):
            fields.app = self.app
            return fields
        if not isinstance(fields, Mapping):
            raise ImproperlyConfigured(f"beat_schedule[{name!r}] must be a dict, not {type(fields).__name__}")
        unknown = set(fields) - ENTRY_FIELDS
        if unknown:
            raise ImproperlyConfigured(f"beat_schedule[{name!r}]: unknown field(s) {sorted(unknown)}")
        for required in ("task", "schedule"):
            if fields.get(required) is None:
                raise ImproperlyConfigured(f"beat_schedule[{name!r}] has no {required!r}")
        try:
            return self.Entry(**dict(fields), name=name, app=self.app)
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"beat_schedule[{name!r}]: {exc}") from exc

    def merge_inplace(self, config: Mapping[str, Any]) -> None:
        """Make the entries those of ``config``: drop removed ones, update changed ones in place."""
        config = {**self.default_entries(), **config}
        for name in set(self.schedule) - set(config):
            del self.schedule[name]
        for name, fields in config.items():
            entry = self.entry_from_config(name, fields)
            if name in self.schedule:
                self.schedule[name].update(entry)
            else:
                self.schedule[name] = entry
        self._due_at.clear()

    def default_entries(self) -> dict[str, Any]:
        """Celery's ``celery.backend_cleanup`` at 4 a.m. daily, where results expire but the
        result store does not drop them itself (``supports_autoexpire`` False: SQL databases)."""
        if not self.app.conf.result_expires or getattr(self.app.backend, "supports_autoexpire", True):
            return {}
        from taskq.schedules import crontab

        cleanup = {"task": "celery.backend_cleanup", "schedule": crontab("0", "4", "*"), "options": {"expires": 12 * 3600}}  # fmt: skip
        return {"celery.backend_cleanup": cleanup}

    def update_from_dict(self, config: Mapping[str, Any]) -> None:
        self.schedule.update({name: self.entry_from_config(name, f) for name, f in config.items()})
        self._due_at.clear()

    def add(self, **fields: Any) -> ScheduleEntry:
        entry = self.Entry(app=self.app, **fields)
        self.schedule[str(entry.name)] = entry
        self._due_at.pop(str(entry.name), None)
        return entry

    def adopt(self, states: Mapping[str, EntryState]) -> None:
        """Take newer run times from ``states`` (another beat's sends, a file) for known entries."""
        for name, state in states.items():
            entry = self.schedule.get(name)
            if entry is not None and state.last_run_at > entry.last_run_at:
                entry.last_run_at = state.last_run_at
                entry.total_run_count = max(entry.total_run_count, state.total_run_count)
                self._due_at.pop(name, None)

    # -- ticking ----------------------------------------------------------------------------
    def is_due(self, entry: ScheduleEntry) -> tuple[bool, float]:
        return entry.is_due()

    def tick(self) -> float:
        """Send every due entry; the seconds until one may be due next (at most max_interval)."""
        for name in list(self._due_at):
            if name not in self.schedule:
                del self._due_at[name]
        now = self.clock()
        waiting = sorted((self._due_at.get(name, -math.inf), name) for name in self.schedule)
        for due_at, name in waiting:
            if due_at > now:
                break
            entry = self.schedule[name]
            try:
                due, next_check = self.is_due(entry)
            except Exception:  # one broken schedule must not stop every other entry
                logger.exception("beat: cannot compute the next run of %r; trying again later", name)
                due, next_check = False, self.max_interval
            if due:
                self.apply_entry(entry)
            self._due_at[name] = self.clock() + min(max(next_check, 0.0), self.max_interval)
        if self.should_sync():
            self._do_sync()
        soonest = min(self._due_at.values(), default=now + self.max_interval)
        return min(max(soonest - self.clock(), 0.0), self.max_interval)

    def reserve(self, entry: ScheduleEntry) -> ScheduleEntry:
        """Advance the entry before sending, so a failing send is not retried in a tight loop."""
        new_entry = self.schedule[str(entry.name)] = entry._next_instance()
        return new_entry

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        """Send one due entry: advance it, claim it in the lease store, publish."""
        logger.info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
        new_entry = self.reserve(entry)
        if self.lease is not None and not self.lease.claim(str(entry.name), new_entry.state()):
            self.schedule[str(entry.name)] = entry  # not ours to send: the new leader will
            raise LeaseLost(entry.name)
        try:
            result = self.apply_async(new_entry, advance=False)
        except Exception as exc:
            logger.error("Message Error: %s", exc, exc_info=True)
        else:
            logger.debug("%s sent. id->%s", entry.task, result.id)

    def apply_async(self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kw: Any) -> AsyncResult[Any]:  # fmt: skip
        entry = self.reserve(entry) if advance else entry
        try:
            task = self.app.tasks.get(str(entry.task))
            options = dict(entry.options)
            options["headers"] = {**(options.get("headers") or {}), "celery_beat_task": True}
            if task is not None:
                options["task"] = task
                for attr in TASK_OPTIONS:
                    if options.get(attr) is None and getattr(task, attr, None) is not None:
                        options[attr] = getattr(task, attr)
            args = [_evaluate(a) for a in entry.args or ()]
            kwargs = {k: _evaluate(v) for k, v in (entry.kwargs or {}).items()}
            return self.send_task(str(entry.task), args, kwargs, **options)
        except Exception as exc:
            raise SchedulingError(f"Couldn't apply scheduled task {entry.name}: {exc}") from exc
        finally:
            self._tasks_since_sync += 1

    def send_task(
        self, name: str, args: list[Any], kwargs: dict[str, Any], **options: Any
    ) -> AsyncResult[Any]:
        return self.app.send_task(name, args=args, kwargs=kwargs, **options)

    # -- persistence hooks ------------------------------------------------------------------
    def should_sync(self) -> bool:
        """After sends: every tick by default, every ``beat_sync_every`` sends when it is set."""
        if not self._tasks_since_sync:
            return False
        every = self.sync_every_tasks
        return (
            not every or self._tasks_since_sync >= every or self.clock() - self._last_sync > self.sync_every
        )

    def _do_sync(self) -> None:
        try:
            self.sync()
        except OSError as exc:
            logger.error("beat: cannot write the schedule: %s", exc)
        finally:
            self._last_sync = self.clock()
            self._tasks_since_sync = 0

    def sync(self) -> None:
        """Write the entries' state somewhere lasting (nothing, for this in-memory scheduler)."""

    def close(self) -> None:
        self.sync()

    @property
    def info(self) -> str:
        return ""


class PersistentScheduler(Scheduler):
    """A scheduler whose history lives in the schedule file (``-s``, ``beat_schedule_filename``)."""

    def __init__(self, app: App, *args: Any, schedule_filename: str | None = None, **kwargs: Any) -> None:
        self.schedule_filename = schedule_filename or app.conf.beat_schedule_filename
        self.store = ScheduleFile(self.schedule_filename)
        self._written: StoredSchedule | None = None
        super().__init__(app, *args, **kwargs)

    def setup_schedule(self) -> None:
        self.store.check_writable()
        stored = self.store.load()
        tz, utc = _tz_name(self.app), bool(self.app.conf.enable_utc)
        if stored.entries and (stored.tz, stored.utc_enabled) != (tz, utc):
            logger.warning(
                "beat: time zone changed from %s (utc %s) to %s (utc %s); stored run times are "
                "absolute instants and are kept",
                stored.tz, stored.utc_enabled, tz, utc,
            )  # fmt: skip
        self.merge_inplace(self.app.conf.beat_schedule)
        for name, state in stored.entries.items():
            entry = self.schedule.get(name)
            if entry is not None:
                entry.last_run_at, entry.total_run_count = state.last_run_at, state.total_run_count
        self.sync()
        logger.debug("beat: current schedule:\n%s", "\n".join(repr(e) for e in self.schedule.values()))

    def sync(self) -> None:
        """Write the file when something changed: a standby beat never overwrites the leader's."""
        stored = StoredSchedule(
            {name: entry.state() for name, entry in self.schedule.items()},
            _tz_name(self.app),
            bool(self.app.conf.enable_utc),
        )
        if stored != self._written:
            self.store.save(stored)
            self._written = stored

    @property
    def info(self) -> str:
        return f"    . db -> {self.store.path}"


def _tz_name(app: App) -> str:
    return str(getattr(app.timezone, "key", None) or app.timezone)
