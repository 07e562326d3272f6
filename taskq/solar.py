"""Solar event schedules: run at sunrise, sunset, dawn or dusk for a place on Earth.

Celery computes these with ``ephem`` and so does taskq, with Celery's horizons and settings, so a
taskq beat and a Celery beat for the same observer fire at the same second. ``ephem`` is optional
(``pip install ephem``); only creating a ``solar`` schedule needs it.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from taskq.exceptions import ImproperlyConfigured
from taskq.schedules import BaseSchedule, as_aware, schedstate

__all__ = ["solar"]

UTC = timezone.utc


class solar(BaseSchedule):  # noqa: N801 - Celery's name
    """At a solar event for an observer at ``lat``/``lon`` (needs ``ephem``: pip install ephem).

    Computed as Celery computes it (same horizons, refraction off, the sun's centre for twilight
    events), so a taskq beat and a Celery beat fire at the same second.
    """

    # event -> (horizon, ephem method, use the centre of the disc)
    EVENTS = {
        "dawn_astronomical": ("-18", "next_rising", True),
        "dawn_nautical": ("-12", "next_rising", True),
        "dawn_civil": ("-6", "next_rising", True),
        "sunrise": ("-0:34", "next_rising", False),
        "solar_noon": ("0", "next_transit", False),
        "sunset": ("-0:34", "next_setting", False),
        "dusk_civil": ("-6", "next_setting", True),
        "dusk_nautical": ("-12", "next_setting", True),
        "dusk_astronomical": ("-18", "next_setting", True),
    }
    max_search_days = 366  # a polar event may not happen for months: look this far

    def __init__(self, event: str, lat: float, lon: float, **kwargs: Any) -> None:
        try:
            import ephem
        except ImportError as exc:
            raise ImproperlyConfigured("solar schedules need the ephem package: pip install ephem") from exc
        if event not in self.EVENTS:
            raise ValueError(
                f'Argument event "{event}" is invalid, must be one of {", ".join(sorted(self.EVENTS))}.'
            )
        if not -90 <= lat <= 90:
            raise ValueError(f"Argument latitude {lat} is invalid, must be between -90 and 90.")
        if not -180 <= lon <= 180:
            raise ValueError(f"Argument longitude {lon} is invalid, must be between -180 and 180.")
        self.ephem = ephem
        self.event, self.lat, self.lon = event, lat, lon
        horizon, self.method, self.use_center = self.EVENTS[event]
        self.cal = ephem.Observer()
        self.cal.lat, self.cal.lon, self.cal.elev = str(lat), str(lon), 0
        self.cal.horizon, self.cal.pressure = horizon, 0
        super().__init__(**kwargs)

    def next_run(self, after: datetime) -> datetime:
        """The first event after ``after``; if none within a year, the time to look again."""
        start = self.ephem.Date(as_aware(after).astimezone(UTC).replace(tzinfo=None))
        sun = self.ephem.Sun()
        extra = {"use_center": True} if self.use_center else {}
        for _ in range(self.max_search_days):
            try:
                found = getattr(self.cal, self.method)(sun, start=start, **extra)
                break
            except self.ephem.CircumpolarError:  # not today at this latitude: from the next night
                start = self.cal.next_antitransit(sun, start=start)
        else:
            found = start
        return found.datetime().replace(tzinfo=UTC).astimezone(self.tz)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return self.next_run(last_run_at) - self.now()

    def is_due(self, last_run_at: datetime) -> schedstate:
        return self._due_by_next_run(last_run_at)

    def __repr__(self) -> str:
        return f"<solar: {self.event} at latitude {self.lat}, longitude: {self.lon}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, solar):
            return (self.event, self.lat, self.lon) == (other.event, other.lat, other.lon)
        return NotImplemented

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.event, self.lat, self.lon)
