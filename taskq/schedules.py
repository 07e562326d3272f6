"""When periodic tasks run: intervals, crontab expressions and solar events.

Celery's classes under Celery's names (``schedule``, ``crontab``, ``solar``), so a beat schedule
ports by changing its import. Every schedule answers ``is_due(last_run_at) -> (due, next_check)``
with ``next_check`` in seconds, and ``remaining_estimate(last_run_at)`` as a ``timedelta``.

Crontab times are wall-clock times in the app's time zone (UTC when ``enable_utc`` is on and no
``timezone`` is set), and the next run is computed as a real instant, so DST changes follow one
rule, the one cron users know: a schedule that runs every hour (``hour='*'``) follows real time
(wall times that a spring change skips do not run, a repeated autumn hour runs again), and a
schedule pinned to hours follows the calendar (a pinned time inside the skipped hour runs when it
ends, a pinned time in the repeated hour runs once, on its first pass).
"""

from __future__ import annotations

from calendar import monthrange
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any, Union

from taskq.cronspec import DAYS_IN_MONTH, MACROS, ParseException, crontab_parser

if TYPE_CHECKING:
    from taskq.app import App

__all__ = ["ParseException", "crontab", "crontab_parser", "maybe_schedule", "schedstate", "schedule"]

UTC = timezone.utc
schedstate = namedtuple("schedstate", ("is_due", "next"))
Cronspec = Union[int, str, Iterable[int]]  # noqa: UP007 - a runtime alias, Python 3.10 too
# Wider than any change of UTC offset (DST moves clocks by 2 h at most): candidate wall times are
# searched from this far back, so the second pass of a repeated hour is never missed.
MARGIN = timedelta(hours=3)
MINUTE = timedelta(minutes=1)


def humanize_seconds(secs: float) -> str:
    """Celery's wording (``<freq: 2.00 seconds>``), so logs and reprs read the same."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if secs >= size:
            return f"{secs / size:.2f} {unit}{'' if secs == size else 's'}"
    return "now"


def as_aware(dt: datetime, tz: tzinfo = UTC) -> datetime:
    """Naive datetimes are UTC, as Celery's ``maybe_make_aware`` takes them; aware ones stay."""
    return dt.replace(tzinfo=UTC).astimezone(tz) if dt.tzinfo is None else dt


def wall_instants(wall: datetime, tz: tzinfo) -> tuple[datetime, datetime]:
    """The UTC instants of a naive wall time read with fold=0 and fold=1.

    Equal for an ordinary time; first < second for a time an autumn change repeats; first >
    second for a time a spring change skips (then the transition lies between them).
    """
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    return first, wall.replace(tzinfo=tz, fold=1).astimezone(UTC)


def gap_end(before: datetime, after: datetime, tz: tzinfo) -> datetime:
    """The first second of the new offset, between two UTC instants straddling a transition."""
    new_offset = after.astimezone(tz).utcoffset()
    lo, hi = int(before.timestamp()), int(after.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == new_offset:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


class BaseSchedule:
    """What every schedule shares: the clock (``nowfun`` or the app's) and the time zone."""

    def __init__(self, nowfun: Callable[[], datetime] | None = None, app: App | None = None) -> None:
        self.nowfun = nowfun
        self._app = app

    @property
    def app(self) -> App:
        if self._app is None:
            from taskq._state import current_app

            return current_app()
        return self._app

    @app.setter
    def app(self, app: App | None) -> None:
        self._app = app

    @property
    def tz(self) -> tzinfo:
        return self.app.timezone

    def now(self) -> datetime:
        return as_aware((self.nowfun or self.app.now)(), self.tz)

    def maybe_make_aware(self, dt: datetime, naive_as_utc: bool = True) -> datetime:
        if dt.tzinfo is None and not naive_as_utc:
            return dt.replace(tzinfo=self.tz)
        return as_aware(dt, self.tz)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        raise NotImplementedError

    def is_due(self, last_run_at: datetime) -> schedstate:
        raise NotImplementedError

    def _due_by_next_run(self, last_run_at: datetime) -> schedstate:
        """For schedules with instants (crontab, solar): due when the next run has passed."""
        now = self.now()
        remaining = (self.next_run(last_run_at) - now).total_seconds()
        if remaining > 0:
            return schedstate(False, remaining)
        return schedstate(True, max((self.next_run(now) - now).total_seconds(), 0.0))

    def next_run(self, after: datetime) -> datetime:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BaseSchedule):
            return other.nowfun == self.nowfun
        return NotImplemented


class schedule(BaseSchedule):  # noqa: N801 - Celery's name
    """Every ``run_every`` (seconds or ``timedelta``); ``relative`` rounds to the interval's unit.

    With ``relative=True`` a 1-hour interval runs on the hour, a 1-day interval at local midnight,
    a 15-minute one on the minute: the deadline is the last such boundary at or before
    ``last_run_at + run_every``, never at or before ``last_run_at`` itself.
    """

    def __init__(
        self,
        run_every: float | timedelta | None = None,
        relative: bool = False,
        nowfun: Callable[[], datetime] | None = None,
        app: App | None = None,
    ) -> None:
        self.run_every = run_every if isinstance(run_every, timedelta) else timedelta(seconds=run_every or 0)
        self.relative = relative
        super().__init__(nowfun=nowfun, app=app)

    @property
    def seconds(self) -> float:
        return max(self.run_every.total_seconds(), 0.0)

    @property
    def human_seconds(self) -> str:
        return humanize_seconds(self.seconds)

    def deadline(self, start: datetime) -> datetime:
        """When the interval that began at ``start`` ends (an aware instant)."""
        start = as_aware(start, self.tz)
        end = start.astimezone(UTC) + self.run_every
        if not self.relative or self.run_every < MINUTE:
            return end.replace(microsecond=0) if self.relative else end  # Celery: whole seconds
        tz, delta = self.tz, self.run_every
        if delta >= timedelta(days=1):  # calendar days, so a DST day does not shift the date
            wall = start.astimezone(tz).replace(tzinfo=None) + delta
            return first_instant(wall.replace(hour=0, minute=0, second=0, microsecond=0), tz)
        unit = timedelta(hours=1) if delta >= timedelta(hours=1) else MINUTE
        wall = floor_wall(start.astimezone(tz), unit)
        boundaries: list[datetime] = []
        while wall <= floor_wall(end.astimezone(tz), unit) + unit:
            first, second = wall_instants(wall, tz)
            boundaries += [first, second] if first <= second else [gap_end(second, first, tz)]
            wall += unit
        later = [b for b in boundaries if b > start]
        in_time = [b for b in later if b <= end]
        return max(in_time) if in_time else min(later, default=end)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return self.deadline(last_run_at) - self.now()

    def is_due(self, last_run_at: datetime) -> schedstate:
        remaining = self.remaining_estimate(last_run_at).total_seconds()
        if remaining > 0:
            return schedstate(False, remaining)
        next_check = self.seconds
        if self.relative:
            now = self.now()
            next_check = (self.deadline(now) - now).total_seconds() or self.seconds
        return schedstate(True, next_check)

    def __repr__(self) -> str:
        return f"<freq: {self.human_seconds}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, schedule):
            return self.run_every == other.run_every and self.relative == other.relative
        return self.run_every == other

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.run_every, self.relative, self.nowfun)


def floor_wall(local: datetime, unit: timedelta) -> datetime:
    """The naive wall time of ``local`` rounded down to the hour or the minute."""
    wall = local.replace(tzinfo=None, second=0, microsecond=0)
    return wall.replace(minute=0) if unit >= timedelta(hours=1) else wall


def first_instant(wall: datetime, tz: tzinfo) -> datetime:
    """The first real instant showing ``wall`` (its first pass; the gap's end if it is skipped)."""
    first, second = wall_instants(wall, tz)
    return first if first <= second else gap_end(second, first, tz)


class crontab(BaseSchedule):  # noqa: N801 - Celery's name
    """Cron-like schedule: ``crontab(minute, hour, day_of_week, day_of_month, month_of_year)``.

    Fields take an int, a string in crontab syntax, or an iterable of ints. A day must match
    ``day_of_week`` and ``day_of_month`` and ``month_of_year`` (all three, as in Celery; plain
    cron ORs the two day fields). ``day_of_week`` 0 is Sunday; 7 is taken as Sunday too.
    """

    def __init__(
        self,
        minute: Cronspec = "*",
        hour: Cronspec = "*",
        day_of_week: Cronspec = "*",
        day_of_month: Cronspec = "*",
        month_of_year: Cronspec = "*",
        **kwargs: Any,
    ) -> None:
        self._orig = tuple(
            "*" if f is None else f for f in (minute, hour, day_of_week, day_of_month, month_of_year)
        )
        self._orig_kwargs = kwargs
        self.minute = self._expand(self._orig[0], 60)
        self.hour = self._expand(self._orig[1], 24)
        self.day_of_week = {d % 7 for d in self._expand(self._orig[2], 8)}
        self.day_of_month = self._expand(self._orig[3], 31, 1)
        self.month_of_year = self._expand(self._orig[4], 12, 1)
        if not any(day <= DAYS_IN_MONTH[m] for m in self.month_of_year for day in self.day_of_month):
            raise ValueError(
                f"Invalid crontab: day_of_month {self._orig[3]!r} never occurs in month_of_year {self._orig[4]!r}."
            )
        self._sorted = tuple(
            sorted(f) for f in (self.month_of_year, self.day_of_month, self.hour, self.minute)
        )
        super().__init__(**kwargs)

    @classmethod
    def from_string(cls, expression: str) -> crontab:
        """``'minute hour day_of_month month_of_year day_of_week'``, or ``@daily`` and friends."""
        fields = MACROS.get(expression.strip().lower(), expression).split()
        if len(fields) != 5:
            raise ValueError(f"a crontab expression has 5 fields, not {len(fields)}: {expression!r}")
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        return cls(minute, hour, day_of_week, day_of_month, month_of_year)

    @staticmethod
    def _expand(spec: Cronspec, max_: int, min_: int = 0) -> set[int]:
        if isinstance(spec, bool) or not isinstance(spec, (int, str, Iterable)):
            raise TypeError(f"crontab fields take an int, a str or an iterable of ints, not {type(spec)!r}")
        if isinstance(spec, int):
            values = {spec}
        elif isinstance(spec, str):
            values = crontab_parser(max_, min_).parse(spec)
        else:
            values = {int(v) for v in spec}
        for value in values:
            if not min_ <= value < max_ + min_:
                raise ValueError(
                    f"Invalid crontab pattern. Valid range is {min_}-{max_ - 1 + min_}. '{value}' was found."
                )
        return values

    @property
    def every_hour(self) -> bool:
        """Runs in every hour: then it follows real time across DST changes (see the module)."""
        return len(self.hour) == 24

    def walls(self, start: datetime) -> Iterator[datetime]:
        """Matching naive wall-clock minutes at or after ``start``, in order.

        Each field that does not match jumps straight to its next allowed value (the next
        month, day of month, hour, minute), so even Feb 29 on a Monday is found in a few steps.
        """
        months, days, hours, minutes = self._sorted
        t, limit = start.replace(second=0, microsecond=0), start.year + 400
        while t.year <= limit:
            if t.month not in self.month_of_year:
                m = next((m for m in months if m > t.month), None)
                t = datetime(t.year, m, 1) if m else datetime(t.year + 1, months[0], 1)
            elif t.day not in self.day_of_month:
                d = next((d for d in days if d > t.day), 32)
                if d <= monthrange(t.year, t.month)[1]:
                    t = datetime(t.year, t.month, d)
                else:
                    t = datetime(t.year + t.month // 12, t.month % 12 + 1, 1)
            elif t.isoweekday() % 7 not in self.day_of_week:
                t = datetime(t.year, t.month, t.day) + timedelta(days=1)
            elif t.hour not in self.hour:
                h, day = next((h for h in hours if h > t.hour), None), datetime(t.year, t.month, t.day)
                t = day.replace(hour=h) if h is not None else day + timedelta(days=1)
            elif t.minute not in self.minute:
                m = next((m for m in minutes if m > t.minute), None)
                t = t.replace(minute=m) if m is not None else t.replace(minute=0) + timedelta(hours=1)
            else:
                yield t
                t += MINUTE
        raise RuntimeError(f"{self!r} has no run in the 400 years after {start}")

    def instants(self, wall: datetime, tz: tzinfo) -> list[datetime]:
        """The real instants (UTC) at which the matching wall minute ``wall`` runs."""
        first, second = wall_instants(wall, tz)
        if first == second:
            return [first]
        if first < second:  # repeated by an autumn change
            return [first, second] if self.every_hour else [first]
        return [] if self.every_hour else [gap_end(second, first, tz)]  # skipped by a spring change

    def next_run(self, after: datetime) -> datetime:
        """The first run strictly after ``after``, in the schedule's time zone."""
        tz = self.tz
        after = as_aware(after, tz).astimezone(UTC)
        start = after.astimezone(tz).replace(tzinfo=None)
        offsets = {(after + k * MARGIN).astimezone(tz).utcoffset() for k in (-1, 0, 1)}
        if len(offsets) > 1:
            start -= MARGIN  # a change nearby: an earlier wall time may still come round again
        best: datetime | None = None
        best_wall = start
        for wall in self.walls(start):
            if best is not None and wall > best_wall + MARGIN:
                break
            for instant in self.instants(wall, tz):
                if instant > after and (best is None or instant < best):
                    best, best_wall = instant, wall
        assert best is not None
        return best.astimezone(tz)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return self.next_run(last_run_at) - self.now()

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Due once the next run after ``last_run_at`` has passed (once, however many were missed).

        With ``beat_cron_starting_deadline`` (seconds), a missed run older than the deadline is
        not caught up: the entry waits for its next run instead.
        """
        state = self._due_by_next_run(last_run_at)
        deadline = self.app.conf.beat_cron_starting_deadline
        if state.is_due and deadline is not None:
            now = self.now()
            if self.next_run(now - timedelta(seconds=deadline, microseconds=1)) > now:
                return schedstate(False, state.next)
        return state

    def __repr__(self) -> str:
        minute, hour, dow, dom, moy = self._orig
        return f"<crontab: {minute} {hour} {dom} {moy} {dow} (m/h/dM/MY/d)>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, crontab):
            return self._fields() == other._fields() and self.nowfun == other.nowfun
        return NotImplemented

    def _fields(self) -> tuple[set[int], ...]:
        return (self.minute, self.hour, self.day_of_week, self.day_of_month, self.month_of_year)

    def __reduce__(self) -> tuple[Any, ...]:
        minute, hour, dow, dom, moy = self._orig
        return self.__class__, (minute, hour, dow, dom, moy), self._orig_kwargs

    def __setstate__(self, state: dict[str, Any]) -> None:
        BaseSchedule.__init__(self, **state)


def maybe_schedule(
    value: float | timedelta | BaseSchedule | None, relative: bool = False, app: App | None = None
) -> BaseSchedule | None:
    """A schedule from a number of seconds, a ``timedelta`` or a schedule (bound to ``app``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("a schedule is a number of seconds, a timedelta or a schedule object, not a bool")
    if isinstance(value, (int, float, timedelta)):
        return schedule(value, relative, app=app)
    if not hasattr(value, "is_due"):
        raise TypeError(f"not a schedule: {value!r}")
    if app is not None:
        value.app = app
    return value


def __getattr__(name: str) -> Any:
    """``solar`` lives in ``taskq.solar`` (it needs ``ephem``); Celery code imports it from here."""
    if name == "solar":
        from taskq.solar import solar

        return solar
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
