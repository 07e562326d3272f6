"""Schedules: intervals (plain and relative), crontab ``is_due`` and DST, solar events."""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from celery import Celery as CeleryApp
from celery.schedules import schedule as celery_schedule
from celery.schedules import solar as celery_solar

from taskq import App
from taskq.schedules import crontab, maybe_schedule, schedule, solar

from .conftest import FakeClock

UTC = timezone.utc
PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def app_in(zone: str | None = None, **settings: object) -> App:
    if zone:
        settings["timezone"] = zone
    return App("sched", set_as_current=False, **settings)


# -- intervals ---------------------------------------------------------------------------------
def test_interval_is_due_and_remaining() -> None:
    now = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    every = schedule(timedelta(seconds=30), nowfun=lambda: now, app=app_in())
    assert every.is_due(now - timedelta(seconds=31)) == (True, 30.0)
    assert every.is_due(now - timedelta(seconds=30)) == (True, 30.0)
    assert every.is_due(now - timedelta(seconds=10)) == (False, 20.0)
    assert every.remaining_estimate(now - timedelta(seconds=10)) == timedelta(seconds=20)
    # A naive last_run_at is UTC (Celery's rule), whatever the app's time zone.
    paris = schedule(60, nowfun=lambda: now, app=app_in("Europe/Paris"))
    assert paris.remaining_estimate(datetime(2024, 1, 1, 11, 59, 30)) == timedelta(seconds=30)


def test_interval_counts_real_time_across_dst() -> None:
    """Two hours after 01:30 CET on the spring-forward night is 04:30 CEST, not 03:30."""
    start = datetime(2024, 3, 31, 1, 30, tzinfo=PARIS)
    two_hours = schedule(timedelta(hours=2), app=app_in("Europe/Paris"))
    assert two_hours.deadline(start) == datetime(2024, 3, 31, 4, 30, tzinfo=PARIS)


def test_numbers_and_timedeltas_become_intervals() -> None:
    app = app_in()
    assert maybe_schedule(30, app=app) == schedule(30)
    assert maybe_schedule(timedelta(minutes=1), app=app) == schedule(60.0)
    assert maybe_schedule(None) is None
    assert schedule(90).human_seconds == "1.50 minutes"
    assert repr(schedule(3600)) == "<freq: 1.00 hour>"  # Celery's wording
    assert repr(schedule(2)) == "<freq: 2.00 seconds>"
    with pytest.raises(TypeError):
        maybe_schedule("every minute")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("every", "last_run_at"),
    [
        (timedelta(hours=1), datetime(2024, 5, 10, 10, 20, 5, tzinfo=UTC)),
        (timedelta(hours=2), datetime(2024, 5, 10, 10, 59, 59, tzinfo=UTC)),
        (timedelta(minutes=15), datetime(2024, 5, 10, 10, 7, 30, tzinfo=UTC)),
        (timedelta(minutes=1), datetime(2024, 5, 10, 10, 7, 30, tzinfo=UTC)),
        (timedelta(days=1), datetime(2024, 5, 10, 10, 7, 30, tzinfo=UTC)),
        (timedelta(days=2), datetime(2024, 5, 31, 23, 59, tzinfo=UTC)),
        (timedelta(seconds=30), datetime(2024, 5, 10, 10, 7, 30, 500, tzinfo=UTC)),
        (timedelta(hours=1), datetime(2024, 7, 1, 9, 45, tzinfo=PARIS)),
        (timedelta(days=1), datetime(2024, 7, 1, 23, 45, tzinfo=PARIS)),
    ],
)
def test_relative_intervals_agree_with_celery(every: timedelta, last_run_at: datetime) -> None:
    zone = "Europe/Paris" if last_run_at.tzinfo is PARIS else "UTC"
    now = last_run_at + timedelta(seconds=1)
    ours = schedule(every, relative=True, nowfun=lambda: now, app=app_in(zone))
    celery_app = CeleryApp(set_as_current=False)
    celery_app.conf.timezone = zone
    theirs = celery_schedule(every, relative=True, nowfun=lambda: now, app=celery_app)
    assert ours.remaining_estimate(last_run_at) == theirs.remaining_estimate(last_run_at)


def test_relative_day_rounds_to_local_midnight_across_dst() -> None:
    app = app_in("Europe/Paris")
    daily = schedule(timedelta(days=1), relative=True, app=app)
    assert daily.deadline(datetime(2024, 3, 30, 10, 0, tzinfo=PARIS)) == datetime(
        2024, 3, 31, 0, 0, tzinfo=PARIS
    )
    hourly = schedule(timedelta(hours=1), relative=True, app=app)
    # 01:20 CET + 1 h = 03:20 CEST: the last whole hour at or before it is 03:00 CEST.
    assert hourly.deadline(datetime(2024, 3, 31, 1, 20, tzinfo=PARIS)) == datetime(
        2024, 3, 31, 3, 0, tzinfo=PARIS
    )


def test_relative_interval_is_due_checks_again_at_the_next_boundary() -> None:
    now = datetime(2024, 5, 10, 11, 0, 2, tzinfo=UTC)
    hourly = schedule(timedelta(hours=1), relative=True, nowfun=lambda: now, app=app_in())
    due, next_check = hourly.is_due(datetime(2024, 5, 10, 10, 0, 1, tzinfo=UTC))
    assert due
    assert next_check == pytest.approx(3598.0)


# -- crontab is_due --------------------------------------------------------------------------
def test_crontab_is_due_once_after_downtime(clock: FakeClock) -> None:
    """Three missed 10:50 runs are one due answer; after it, the next check is tomorrow 10:50."""
    tutorial = crontab(hour=10, minute=50, nowfun=clock, app=app_in())
    clock.set(datetime(2024, 1, 15, 12, 0, tzinfo=UTC))
    last = datetime(2024, 1, 12, 9, 0, tzinfo=UTC)
    due, next_check = tutorial.is_due(last)
    assert due
    assert next_check == (datetime(2024, 1, 16, 10, 50, tzinfo=UTC) - clock()).total_seconds()
    assert tutorial.is_due(clock()) == (False, next_check)


def test_crontab_starting_deadline_skips_stale_runs(clock: FakeClock) -> None:
    app = app_in(beat_cron_starting_deadline=600)
    every_hour = crontab(minute=0, nowfun=clock, app=app)
    clock.set(datetime(2024, 1, 15, 12, 5, tzinfo=UTC))
    assert every_hour.is_due(datetime(2024, 1, 15, 11, 30, tzinfo=UTC))[0]  # 12:00 is 5 min old
    clock.set(datetime(2024, 1, 15, 12, 20, tzinfo=UTC))
    due, next_check = every_hour.is_due(datetime(2024, 1, 15, 11, 30, tzinfo=UTC))
    assert not due  # 12:00 is 20 min old: wait for 13:00
    assert next_check == 40 * 60


def test_crontab_remaining_estimate(clock: FakeClock) -> None:
    quarter = crontab(minute="*/15", nowfun=clock, app=app_in())
    clock.set(datetime(2024, 1, 15, 12, 7, tzinfo=UTC))
    assert quarter.remaining_estimate(clock()) == timedelta(minutes=8)


# Hand-checked DST cases: (zone, schedule, after, the next runs in local time with offsets).
DST_CASES = [
    # Paris, 31 Mar 2024, 02:00 CET -> 03:00 CEST. A pinned 02:30 runs when the gap ends.
    (
        "Europe/Paris",
        crontab(30, 2),
        "2024-03-30T12:00+01:00",
        ["2024-03-31T03:00+02:00", "2024-04-01T02:30+02:00"],
    ),
    # An hourly job keeps real time: 01:05 CET, then 03:05 CEST (one hour later).
    (
        "Europe/Paris",
        crontab(5),
        "2024-03-31T00:30+01:00",
        ["2024-03-31T01:05+01:00", "2024-03-31T03:05+02:00"],
    ),
    # Paris, 27 Oct 2024, 03:00 CEST -> 02:00 CET. A pinned 02:30 runs once, on the first pass.
    (
        "Europe/Paris",
        crontab(30, 2),
        "2024-10-26T12:00+02:00",
        ["2024-10-27T02:30+02:00", "2024-10-28T02:30+01:00"],
    ),
    # An every-20-minutes job runs in both passes of the repeated hour.
    (
        "Europe/Paris",
        crontab("*/20"),
        "2024-10-27T02:30+02:00",
        [
            "2024-10-27T02:40+02:00",
            "2024-10-27T02:00+01:00",
            "2024-10-27T02:20+01:00",
            "2024-10-27T02:40+01:00",
        ],
    ),
    # New York, 10 Mar 2024, 02:00 EST -> 03:00 EDT; 3 Nov 2024, 02:00 EDT -> 01:00 EST.
    (
        "America/New_York",
        crontab(30, 2),
        "2024-03-09T12:00-05:00",
        ["2024-03-10T03:00-04:00", "2024-03-11T02:30-04:00"],
    ),
    (
        "America/New_York",
        crontab(30, 1),
        "2024-11-02T12:00-04:00",
        ["2024-11-03T01:30-04:00", "2024-11-04T01:30-05:00"],
    ),
    (
        "America/New_York",
        crontab(0),
        "2024-11-03T00:30-04:00",
        ["2024-11-03T01:00-04:00", "2024-11-03T01:00-05:00"],
    ),
    # Midnight jobs on DST days are unaffected (the changes are at night but not at midnight).
    (
        "America/New_York",
        crontab(0, 0),
        "2024-03-09T12:00-05:00",
        ["2024-03-10T00:00-05:00", "2024-03-11T00:00-04:00"],
    ),
]


@pytest.mark.parametrize(("zone", "cron", "after", "expected"), DST_CASES)
def test_crontab_across_dst(zone: str, cron: crontab, after: str, expected: list[str]) -> None:
    cron.app = app_in(zone)
    runs, when = [], datetime.fromisoformat(after)
    for _ in expected:
        when = cron.next_run(when)
        runs.append(when.isoformat(timespec="minutes"))
    assert runs == expected


def test_crontab_uses_utc_unless_a_timezone_is_set() -> None:
    after = datetime(2024, 6, 1, 0, 0, tzinfo=UTC)
    assert crontab(50, 10, app=app_in()).next_run(after) == datetime(2024, 6, 1, 10, 50, tzinfo=UTC)
    paris = crontab(50, 10, app=app_in("Europe/Paris")).next_run(after)
    assert paris == datetime(2024, 6, 1, 8, 50, tzinfo=UTC)
    assert paris.tzinfo == PARIS


def test_schedules_pickle_and_compare() -> None:
    cron = crontab("*/5", "9-17", "mon-fri")
    again = pickle.loads(pickle.dumps(cron))
    assert again == cron
    assert repr(again) == "<crontab: */5 9-17 * * mon-fri (m/h/dM/MY/d)>"
    assert pickle.loads(pickle.dumps(schedule(30, relative=True))) == schedule(30, relative=True)
    assert crontab(5) != crontab(6)


# -- solar ------------------------------------------------------------------------------------
# Published times (timeanddate.com / NOAA), to the minute, as UTC.
PUBLISHED = [
    ("sunrise", 51.5074, -0.1278, "2024-06-20T00:00", "2024-06-20T03:43"),  # London 04:43 BST
    ("sunset", 51.5074, -0.1278, "2024-06-20T12:00", "2024-06-20T20:21"),  # London 21:21 BST
    ("sunrise", 40.7128, -74.0060, "2024-12-21T00:00", "2024-12-21T12:16"),  # New York 07:16 EST
    ("sunset", 40.7128, -74.0060, "2024-12-21T12:00", "2024-12-21T21:32"),  # New York 16:32 EST
    ("sunset", -33.8688, 151.2093, "2024-01-01T00:00", "2024-01-01T09:09"),  # Sydney 20:09 AEDT
    ("solar_noon", 51.5074, -0.1278, "2024-06-20T00:00", "2024-06-20T12:02"),
]


@pytest.mark.parametrize(("event", "lat", "lon", "after", "expected"), PUBLISHED)
def test_solar_matches_published_times(event: str, lat: float, lon: float, after: str, expected: str) -> None:
    found = solar(event, lat, lon, app=app_in()).next_run(datetime.fromisoformat(after).replace(tzinfo=UTC))
    target = datetime.fromisoformat(expected).replace(tzinfo=UTC)
    assert abs(found - target) < timedelta(minutes=2), found


@pytest.mark.parametrize("event", sorted(solar.EVENTS))
def test_solar_matches_celery_to_the_second(event: str) -> None:
    start = datetime(2024, 9, 1, 6, 0, tzinfo=UTC)
    ours = solar(event, 48.85, 2.35, nowfun=lambda: start, app=app_in())
    theirs = celery_solar(event, 48.85, 2.35, nowfun=lambda: start, app=CeleryApp(set_as_current=False))
    assert abs(ours.remaining_estimate(start) - theirs.remaining_estimate(start)) < timedelta(seconds=1)


def test_solar_polar_night_and_midnight_sun() -> None:
    tromso = app_in()
    sunrise = solar("sunrise", 69.65, 18.96, app=tromso).next_run(datetime(2024, 12, 1, tzinfo=UTC))
    assert datetime(2025, 1, 14, tzinfo=UTC) < sunrise < datetime(2025, 1, 18, tzinfo=UTC)
    dawn = solar("dawn_astronomical", 69.65, 18.96, app=tromso).next_run(datetime(2024, 6, 1, tzinfo=UTC))
    assert dawn > datetime(2024, 8, 1, tzinfo=UTC)


def test_solar_is_due(clock: FakeClock) -> None:
    sunset = solar("sunset", 51.5074, -0.1278, nowfun=clock, app=app_in())
    clock.set(datetime(2024, 6, 20, 20, 30, tzinfo=UTC))
    due, next_check = sunset.is_due(datetime(2024, 6, 20, 12, 0, tzinfo=UTC))
    assert due
    assert timedelta(hours=23) < timedelta(seconds=next_check) < timedelta(hours=24)
    assert not sunset.is_due(clock())[0]


@pytest.mark.parametrize(
    ("args", "match"),
    [(("noon", 0, 0), "event"), (("sunset", 91, 0), "latitude"), (("sunset", 0, -181), "longitude")],
)
def test_solar_refuses_bad_arguments(args: tuple[str, float, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        solar(*args)
