"""crontab next runs against an independent calculation: croniter, and Celery's own parser.

The table crosses 40 expressions (steps, ranges, lists, names, month ends, Feb 29, day-of-week
AND day-of-month) with three time zones (UTC, Europe/Paris, America/New_York) and start
instants around month ends, leap days, a century year and the 2024/2025 DST changes of both
zones; for each, the next 8 runs must equal croniter's (``day_or=False``: Celery ANDs the day
fields). One documented difference is applied to croniter's answers: a schedule pinned to hours
runs once in an hour that an autumn change repeats (croniter runs it twice; cron runs it once).
Hypothesis adds random expressions and start instants on top of the fixed table.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import crontab as celery_crontab
from celery.schedules import crontab_parser as celery_parser
from croniter import croniter
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from taskq import App
from taskq.schedules import ParseException, crontab, crontab_parser

UTC = timezone.utc
RUNS = 8
EXPRESSIONS = [
    "* * * * *", "*/15 * * * *", "0 * * * *", "5 * * * *", "10,50 * * * *", "*/7 */3 * * *",
    "15,45 */2 * * *", "30 2 * * *", "0 0 * * *", "15 1-3 * * *", "0 1,2,3 * * *", "*/20 2 * * *",
    "30 1 * * *", "0 9-17 * * mon-fri", "30 8 * * 1-5", "0 12 * * sun", "0 0 * * sat,sun",
    "0 22 * * 1-5", "0 3 * * 0", "0 0 1 * *", "0 0 31 * *", "0 0 30 * *", "59 23 28-31 * *",
    "0 0 29 2 *", "0 0 28 2 *", "0 6 1 jan,jul *", "0 0 1 */3 *", "0 12 15 * mon", "0 0 1-7 * mon",
    "0 0 29 2 mon", "0 2 * mar,oct,nov *", "0 0 * 2 *", "0 0,12 1 * *", "0 4 8-14 * 2",
    "*/30 0-6 * * *", "0 0 */2 * *", "2-58/4 3 * * *", "0 0 31 dec *", "0 */6 * * *", "45 23 * * 6",
]  # fmt: skip
ZONES = ["UTC", "Europe/Paris", "America/New_York"]
FIXED_STARTS = [
    datetime(2024, 1, 31, 23, 59, tzinfo=UTC),  # month end
    datetime(2024, 2, 28, 23, 30, tzinfo=UTC),  # before a leap day
    datetime(2023, 2, 28, 23, 30, tzinfo=UTC),  # no leap day
    datetime(2100, 2, 27, 12, 0, tzinfo=UTC),  # a century year: no leap day
    datetime(2024, 4, 30, 23, 59, 30, tzinfo=UTC),
    datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC),  # year end
    datetime(2024, 3, 30, 22, 0, tzinfo=UTC),  # Paris spring forward (31 Mar 01:00 UTC)
    datetime(2024, 10, 26, 22, 0, tzinfo=UTC),  # Paris fall back (27 Oct 01:00 UTC)
    datetime(2024, 3, 10, 4, 0, tzinfo=UTC),  # New York spring forward (10 Mar 07:00 UTC)
    datetime(2024, 11, 3, 3, 0, tzinfo=UTC),  # New York fall back (3 Nov 06:00 UTC)
    datetime(2025, 3, 30, 0, 30, tzinfo=UTC),  # Paris, inside the night
    datetime(2025, 10, 26, 0, 10, tzinfo=UTC),  # Paris, first pass of the repeated hour
    datetime(2025, 11, 2, 5, 20, tzinfo=UTC),  # New York, first pass of the repeated hour
    datetime(2025, 11, 2, 6, 20, tzinfo=UTC),  # New York, second pass of the repeated hour
]
_random = random.Random(20240229)
RANDOM_STARTS = [
    datetime(2023, 1, 1, tzinfo=UTC) + timedelta(seconds=_random.randrange(0, 4 * 365 * 86400))
    for _ in range(6)
]
STARTS = FIXED_STARTS + RANDOM_STARTS


def expected_runs(expr: str, zone: str, start: datetime, count: int) -> list[datetime]:
    """croniter's runs, less the second pass of a repeated hour for hour-pinned schedules."""
    tz = ZoneInfo(zone)
    every_hour = expr.split()[1] == "*"
    runs: list[datetime] = []
    it = croniter(expr, start.astimezone(tz), day_or=False)
    while len(runs) < count:
        run = it.get_next(datetime)
        repeated = run.replace(fold=1 - run.fold).utcoffset() != run.utcoffset() and run.fold == 1
        if repeated and not every_hour:
            continue
        runs.append(run)
    return runs


def actual_runs(expr: str, zone: str, start: datetime, count: int) -> list[datetime]:
    schedule = crontab.from_string(expr)
    schedule.app = App("table", timezone=zone, set_as_current=False)
    runs, after = [], start
    for _ in range(count):
        after = schedule.next_run(after)
        runs.append(after)
    return runs


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_next_runs_match_croniter(expr: str, zone: str) -> None:
    for start in STARTS:
        expected = expected_runs(expr, zone, start, RUNS)
        actual = actual_runs(expr, zone, start, RUNS)
        # The same instants (compared in UTC), and shown with the zone's offset of that instant.
        assert [a.astimezone(UTC) for a in actual] == [e.astimezone(UTC) for e in expected], (
            expr,
            zone,
            start,
        )
        assert [a.utcoffset() for a in actual] == [e.utcoffset() for e in expected]


def test_table_size() -> None:
    """The issue asks for hundreds of cases: expressions x zones x starts, each 8 runs deep."""
    assert len(EXPRESSIONS) * len(ZONES) * len(STARTS) >= 1000


FIELD_SPECS = [
    ("*", 60, 0), ("*/15", 60, 0), ("1,13,30-45,50-59/2", 60, 0), ("0-59/7", 60, 0), ("5", 60, 0),
    ("*/3", 24, 0), ("0,8-17/2", 24, 0), ("23", 24, 0), ("mon-fri", 7, 0), ("sun", 7, 0),
    ("fri-mon", 7, 0), ("sat,sun", 7, 0), ("*/2", 7, 0), ("monday", 7, 0), ("*/3", 31, 1),
    ("1-7,15-21", 31, 1), ("2-30/2", 31, 1), ("31", 31, 1), ("*/2", 12, 1), ("2-12/2", 12, 1),
    ("jan,jul", 12, 1), ("mar-may", 12, 1), ("nov-feb", 12, 1), ("december", 12, 1),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "max_", "min_"), FIELD_SPECS)
def test_field_parser_matches_celery(spec: str, max_: int, min_: int) -> None:
    assert crontab_parser(max_, min_).parse(spec) == set(celery_parser(max_, min_).parse(spec))


@pytest.mark.parametrize(
    "fields",
    [
        {"minute": "*/15"},
        {"hour": 10, "minute": 50},
        {"minute": 0, "hour": "*/3", "day_of_week": "mon-fri"},
        {"minute": [0, 30], "hour": {1, 2}},
        {"day_of_month": "1-7,15-21", "day_of_week": 1},
        {"month_of_year": "*/3", "day_of_month": 1},
        {"day_of_week": "sat-sun"},
        {"day_of_week": "*/2"},
    ],
)
def test_expanded_fields_match_celery(fields: dict[str, object]) -> None:
    ours, theirs = crontab(**fields), celery_crontab(**fields)  # type: ignore[arg-type]
    for name in ("minute", "hour", "day_of_week", "day_of_month", "month_of_year"):
        assert getattr(ours, name) == set(getattr(theirs, name)), name


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"minute": "60"}, ValueError),
        ({"hour": 24}, ValueError),
        ({"day_of_month": 0}, ValueError),
        ({"month_of_year": "13"}, ValueError),
        ({"minute": "*/0"}, ParseException),
        ({"minute": "1,,2"}, ParseException),
        ({"minute": "-5"}, ParseException),
        ({"day_of_week": "funday"}, ValueError),
        ({"day_of_month": 30, "month_of_year": 2}, ValueError),  # never happens
        ({"minute": 1.5}, TypeError),
    ],
)
def test_invalid_fields_are_refused(fields: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        crontab(**fields)  # type: ignore[arg-type]


def test_from_string_and_macros() -> None:
    assert crontab.from_string("*/5 * * * *") == crontab(minute="*/5")
    assert crontab.from_string("0 4 1 * mon") == crontab(0, 4, day_of_week="mon", day_of_month=1)
    assert crontab.from_string("@daily") == crontab(0, 0)
    assert crontab.from_string("@hourly") == crontab(0)
    assert crontab.from_string("@weekly") == crontab(0, 0, day_of_week=0)
    assert crontab.from_string("@monthly") == crontab(0, 0, day_of_month=1)
    assert crontab.from_string("@yearly") == crontab(0, 0, day_of_month=1, month_of_year=1)
    with pytest.raises(ValueError, match="5 fields"):
        crontab.from_string("* * * *")


def test_seven_is_sunday_as_in_cron() -> None:
    assert crontab(day_of_week="7").day_of_week == {0}
    assert crontab(day_of_week="5-7").day_of_week == {5, 6, 0}


def _field(draw: st.DrawFn, low: int, high: int, names: list[str] | None = None) -> str:
    """One random crontab field in Celery's syntax that never selects every value by accident."""
    kind = draw(
        st.sampled_from(["star", "step", "range", "list", "one", "range-step"] + (["name"] if names else []))
    )
    a = draw(st.integers(low, high))
    b = draw(st.integers(a, high))
    if kind == "star":
        return "*"
    if kind == "step":
        return f"*/{draw(st.integers(2, max(2, (high - low) // 2)))}"
    if kind in ("range", "range-step") and (a == b or (a, b) == (low, high)):
        return str(a)  # croniter reads 5-5 as '*', and a full range as every value
    if kind == "range":
        return f"{a}-{b}"
    if kind == "range-step":
        return f"{a}-{b}/{draw(st.integers(2, 5))}"
    if kind == "list":
        return ",".join(str(v) for v in sorted(draw(st.sets(st.integers(low, high), min_size=2, max_size=4))))
    if kind == "name" and names:
        return draw(st.sampled_from(names))
    return str(a)


@st.composite
def expressions(draw: st.DrawFn) -> str:
    fields = (
        _field(draw, 0, 59),
        _field(draw, 0, 23),
        _field(draw, 1, 31),
        _field(draw, 1, 12, ["jan", "mar", "jun", "oct", "dec"]),
        _field(draw, 0, 6, ["mon", "fri", "sun", "mon-fri", "sat,sun"]),
    )
    return " ".join(fields)


@settings(max_examples=150, deadline=None)
@given(
    expr=expressions(),
    zone=st.sampled_from(ZONES),
    start=st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1), timezones=st.just(UTC)),
)
def test_random_expressions_match_croniter(expr: str, zone: str, start: datetime) -> None:
    try:
        crontab.from_string(expr)
    except ValueError:
        assume(False)  # e.g. day 31 in months that have none: refused, as Celery does
    assert actual_runs(expr, zone, start, 3) == expected_runs(expr, zone, start, 3)
