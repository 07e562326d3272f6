"""Scheduler.tick(): what is sent, when, and what beat's messages look like on the wire."""

from __future__ import annotations

import json
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from taskq import App
from taskq.beat import (
    BeatLazyFunc,
    PersistentScheduler,
    ScheduleEntry,
    Scheduler,
    add_periodic_task,
    load_scheduler_class,
)
from taskq.exceptions import ImproperlyConfigured
from taskq.schedules import crontab, schedule

from .conftest import FakeClock, sent_messages

UTC = timezone.utc
VECTORS = Path(__file__).resolve().parents[1] / "data" / "vectors"


def make(app: App, clock: FakeClock, entries: dict[str, Any], **kwargs: Any) -> Scheduler:
    app.conf.beat_schedule = entries
    scheduler = Scheduler(app, max_interval=kwargs.pop("max_interval", 300), **kwargs)
    scheduler.clock = clock.monotonic  # type: ignore[method-assign]
    return scheduler


def test_tick_sends_due_entries_and_says_how_long_to_sleep(beat_app: App, clock: FakeClock) -> None:
    scheduler = make(beat_app, clock, {"add": {"task": "proj.add", "schedule": 30.0, "args": (1, 2)}})
    assert scheduler.tick() == pytest.approx(30.0)  # a new entry waits one interval, as in Celery
    assert sent_messages(beat_app) == []
    clock.advance(seconds=30)
    assert scheduler.tick() == pytest.approx(30.0)
    (message,) = sent_messages(beat_app)
    assert message.headers["task"] == "proj.add"
    assert message.headers["argsrepr"] == "[1, 2]"  # args travel as a list, as Celery sends them
    assert message.headers["celery_beat_task"] is True
    assert message.decode()[:2] == [[1, 2], {}]
    assert scheduler.schedule["add"].total_run_count == 1


def test_sleep_is_bounded_by_max_interval(beat_app: App, clock: FakeClock) -> None:
    scheduler = make(
        beat_app, clock, {"n": {"task": "t", "schedule": crontab(hour=3, minute=30)}}, max_interval=7
    )
    assert scheduler.tick() == pytest.approx(7.0)
    assert make(beat_app, clock, {}, max_interval=7).tick() == pytest.approx(7.0)
    beat_app.conf.beat_max_loop_interval = 0
    assert Scheduler(beat_app, lazy=True).max_interval == 300.0  # 0 means Celery's 5 minutes


def test_runs_missed_during_downtime_are_sent_once(beat_app: App, clock: FakeClock) -> None:
    scheduler = make(
        beat_app,
        clock,
        {
            "often": {"task": "proj.often", "schedule": timedelta(seconds=10)},
            "hourly": {"task": "proj.hourly", "schedule": crontab(minute=0)},
        },
    )
    scheduler.tick()
    clock.advance(hours=5)  # 1800 intervals and 5 hourly runs missed
    scheduler.tick()
    assert sorted(m.headers["task"] for m in sent_messages(beat_app)) == ["proj.hourly", "proj.often"]
    assert scheduler.tick() == pytest.approx(10.0)
    assert sent_messages(beat_app) == []


def test_send_options_reach_the_message(beat_app: App, clock: FakeClock) -> None:
    entries = {
        "routed": {
            "task": "proj.report",
            "schedule": 1.0,
            "kwargs": {"day": "mon"},
            "options": {"queue": "reports", "priority": 7, "expires": 30, "headers": {"x-team": "ops"}},
        }
    }
    scheduler = make(beat_app, clock, entries)
    clock.advance(seconds=1)
    scheduler.tick()
    (message,) = sent_messages(beat_app, "reports")
    headers = message.headers
    assert headers["x-team"] == "ops" and headers["celery_beat_task"] is True
    assert headers["kwargsrepr"] == "{'day': 'mon'}"
    assert datetime.fromisoformat(headers["expires"]) == clock() + timedelta(seconds=30)
    assert message.properties["priority"] == 7
    assert entries["routed"]["options"]["headers"] == {"x-team": "ops"}  # the config is not changed


def test_registered_task_options_apply(beat_app: App, clock: FakeClock) -> None:
    @beat_app.task(name="proj.slow", queue="slow")
    def slow(n: int) -> int:
        return n

    scheduler = make(beat_app, clock, {"s": {"task": "proj.slow", "schedule": 1.0, "args": [3]}})
    clock.advance(seconds=1)
    scheduler.tick()
    assert [m.headers["argsrepr"] for m in sent_messages(beat_app, "slow")] == ["[3]"]


def test_always_eager_does_not_run_beat_tasks_in_beat(beat_app: App, clock: FakeClock) -> None:
    calls = []

    @beat_app.task(name="proj.eager")
    def eager() -> None:
        calls.append(1)

    beat_app.conf.task_always_eager = True
    scheduler = make(beat_app, clock, {"e": {"task": "proj.eager", "schedule": 1.0}})
    clock.advance(seconds=1)
    scheduler.tick()
    assert calls == [] and len(sent_messages(beat_app)) == 1


def test_lazy_arguments_are_computed_at_send_time(beat_app: App, clock: FakeClock) -> None:
    entries = {"l": {"task": "t", "schedule": 1.0, "args": (BeatLazyFunc(lambda: clock().isoformat()),)}}
    scheduler = make(beat_app, clock, entries)
    clock.advance(seconds=1)
    scheduler.tick()
    assert sent_messages(beat_app)[0].decode()[0] == [clock().isoformat()]


def test_a_broken_entry_does_not_stop_the_others(
    beat_app: App, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(schedule):
        def is_due(self, last_run_at: datetime) -> Any:
            raise ZeroDivisionError("bad schedule")

    scheduler = make(
        beat_app,
        clock,
        {"bad": {"task": "t.bad", "schedule": Broken(1)}, "good": {"task": "t.good", "schedule": 1.0}},
    )
    clock.advance(seconds=1)
    scheduler.tick()
    assert [m.headers["task"] for m in sent_messages(beat_app)] == ["t.good"]
    assert "cannot compute the next run of 'bad'" in caplog.text


def test_a_failed_send_is_logged_and_not_retried_in_a_loop(
    beat_app: App, clock: FakeClock, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = make(beat_app, clock, {"a": {"task": "t.a", "schedule": 10.0}})

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("broker down")

    monkeypatch.setattr(beat_app, "send_task", broken)
    clock.advance(seconds=10)
    assert scheduler.tick() == pytest.approx(10.0)
    assert "Couldn't apply scheduled task a: broker down" in caplog.text
    assert scheduler.schedule["a"].total_run_count == 1


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"task": "t", "schedule": 1, "arg": (1,)}, "unknown field"),
        ({"schedule": 1}, "has no 'task'"),
        ({"task": "t"}, "has no 'schedule'"),
        ({"task": "t", "schedule": "often"}, "not a schedule"),
        ("t every second", "must be a dict"),
    ],
)
def test_bad_entries_are_refused_by_name(beat_app: App, clock: FakeClock, entry: Any, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message) as info:
        make(beat_app, clock, {"broken-entry": entry})
    assert "broken-entry" in str(info.value)


def test_entry_repr_and_equality(beat_app: App) -> None:
    entry = ScheduleEntry(
        "greet", "specapp.greet", schedule=2.0, args=("beat",), kwargs={"greeting": "tick"}, app=beat_app
    )
    assert repr(entry) == "<ScheduleEntry: greet specapp.greet('beat', greeting='tick') <freq: 2.00 seconds>>"
    assert entry == ScheduleEntry(
        "other", "specapp.greet", schedule=2.0, args=("beat",), kwargs={"greeting": "tick"}, app=beat_app
    )
    nxt = entry.next()
    assert nxt.total_run_count == 1 and nxt.last_run_at >= entry.last_run_at


# -- add_periodic_task and the app signals ----------------------------------------------------
def test_add_periodic_task_from_on_after_configure(beat_app: App, clock: FakeClock) -> None:
    @beat_app.task(name="proj.test")
    def test(arg: str) -> str:
        return arg

    @beat_app.on_after_configure.connect
    def setup_periodic_tasks(sender: App, **kwargs: Any) -> None:
        add_periodic_task(sender, 10.0, test.s("hello"), name="add every 10")
        add_periodic_task(sender, 30.0, test.s("world"), expires=10)
        add_periodic_task(sender, crontab(hour=7, minute=30, day_of_week=1), test.s("Happy Mondays!"))

    beat_app.finalize()
    beat_app.finalize()  # once per app
    assert beat_app.conf.beat_schedule == {
        "add every 10": {"schedule": 10.0, "task": "proj.test", "args": ("hello",), "kwargs": {}, "options": {}},
        "proj.test('world')": {
            "schedule": 30.0, "task": "proj.test", "args": ("world",), "kwargs": {}, "options": {"expires": 10},
        },
        "proj.test('Happy Mondays!')": {
            "schedule": crontab(30, 7, 1), "task": "proj.test", "args": ("Happy Mondays!",), "kwargs": {}, "options": {},
        },
    }  # fmt: skip
    assert App("other", set_as_current=False).conf.beat_schedule == {}  # the default was not changed
    scheduler = make(beat_app, clock, dict(beat_app.conf.beat_schedule))
    clock.advance(seconds=10)
    scheduler.tick()
    assert [m.headers["argsrepr"] for m in sent_messages(beat_app)] == ["['hello']"]


def test_add_periodic_task_by_name_and_shadowing(beat_app: App, caplog: pytest.LogCaptureFixture) -> None:
    assert add_periodic_task(beat_app, 5, "proj.remote", args=(1,)) == "proj.remote(1)"
    add_periodic_task(beat_app, 6, "proj.remote", args=(1,))
    assert beat_app.conf.beat_schedule["proj.remote(1)"]["schedule"] == 6
    assert "shadowed a previous unnamed periodic task" in caplog.text


# -- the tutorial config, after the import swap ---------------------------------------------------
TUTORIAL_CONFIG = """
from datetime import timedelta
from taskq.schedules import crontab

CELERYBEAT_SCHEDULE = {
    "add-every-30-seconds": {
        "task": "tasks.add",
        "schedule": timedelta(seconds=30),
        "args": (16, 16),
    },
    "add-at-10-50": {
        "task": "tasks.add",
        "schedule": crontab(hour=10, minute=50),
        "args": (4, 4),
    },
}
CELERY_TIMEZONE = "UTC"
"""


def test_tutorial_celerybeat_schedule(beat_app: App, clock: FakeClock, tmp_path: Path) -> None:
    (tmp_path / "tutorialconfig.py").write_text(textwrap.dedent(TUTORIAL_CONFIG))
    sys.path.insert(0, str(tmp_path))
    try:
        beat_app.config_from_object("tutorialconfig")
    finally:
        sys.path.remove(str(tmp_path))
    clock.set(datetime(2024, 1, 15, 10, 49, 40, tzinfo=UTC))
    scheduler = PersistentScheduler(beat_app, schedule_filename=str(tmp_path / "sched"))
    scheduler.clock = clock.monotonic  # type: ignore[method-assign]
    sent = []
    for _ in range(5):  # 10:49:40 .. 10:51:40 in 30 s steps
        scheduler.tick()
        sent += sorted((clock().time().isoformat(), m.headers["argsrepr"]) for m in sent_messages(beat_app))
        clock.advance(seconds=30)
    assert sent == [
        ("10:50:10", "[16, 16]"),
        ("10:50:10", "[4, 4]"),
        ("10:50:40", "[16, 16]"),
        ("10:51:10", "[16, 16]"),
        ("10:51:40", "[16, 16]"),
    ]


# -- --scheduler ------------------------------------------------------------------------------
def test_scheduler_classes_by_name() -> None:
    assert load_scheduler_class("celery.beat:PersistentScheduler") is PersistentScheduler
    assert load_scheduler_class("celery.beat.PersistentScheduler") is PersistentScheduler
    assert load_scheduler_class("taskq.beat:Scheduler") is Scheduler
    assert load_scheduler_class(None) is PersistentScheduler
    with pytest.raises(ImproperlyConfigured, match="cannot load scheduler"):
        load_scheduler_class("nowhere.module:Sched")
    with pytest.raises(ImproperlyConfigured, match="not a scheduler class"):
        load_scheduler_class("taskq.beat:add_periodic_task")


# -- the wire: beat's messages against Celery 5.7's ------------------------------------------------
VOLATILE_HEADERS = {"id", "root_id", "origin", "expires"}
VOLATILE_PROPERTIES = {"correlation_id", "reply_to", "delivery_tag", "expiration"}


def masked(envelope: dict[str, Any]) -> dict[str, Any]:
    headers = {k: ("<volatile>" if k in VOLATILE_HEADERS else v) for k, v in envelope["headers"].items()}
    properties = {
        k: ("<volatile>" if k in VOLATILE_PROPERTIES else v) for k, v in envelope["properties"].items()
    }
    return {**envelope, "headers": headers, "properties": properties}


@pytest.mark.redis
def test_beat_messages_match_celery_beat(redis_url: str, redis_client: Any, tmp_path: Path) -> None:
    vector = json.loads((VECTORS / "messages" / "beat_sent_messages.json").read_text())
    theirs = {}
    for message in vector["messages"]:
        envelope = json.loads(message["raw"])
        theirs.setdefault(envelope["headers"]["task"], envelope)
    app = App("specapp", broker=redis_url, set_as_current=False)  # the tasks registered, as in Celery's run
    app.task(name="specapp.add")(lambda x, y: x + y)
    app.task(name="specapp.greet")(lambda name, greeting="hello": f"{greeting} {name}")
    app.conf.beat_schedule = {
        "add-every-second": {"task": "specapp.add", "schedule": 1.0, "args": (1, 2), "options": {"expires": 30}},
        "greet-every-2s": {
            "task": "specapp.greet", "schedule": timedelta(seconds=2), "args": ("beat",), "kwargs": {"greeting": "tick"},
        },
        "nightly": {"task": "specapp.add", "schedule": crontab(hour=3, minute=30), "args": (0, 0)},
    }  # fmt: skip
    scheduler = PersistentScheduler(app, schedule_filename=str(tmp_path / "sched"))
    try:
        for name in ("add-every-second", "greet-every-2s"):
            scheduler.apply_entry(scheduler.schedule[name])
        raw = [json.loads(item) for item in reversed(redis_client.lrange("celery", 0, -1))]
    finally:
        app.close()
    ours = {envelope["headers"]["task"]: envelope for envelope in raw}
    assert set(ours) == set(theirs) == {"specapp.add", "specapp.greet"}
    for task, envelope in ours.items():
        assert list(envelope) == list(theirs[task])
        assert list(envelope["headers"]) == list(theirs[task]["headers"])
        assert list(envelope["properties"]) == list(theirs[task]["properties"])
        assert masked(envelope) == masked(theirs[task])
    assert ours["specapp.add"]["properties"]["expiration"] in ("30000", "29999")


class CountingScheduler(Scheduler):
    """A scheduler of one's own (``--scheduler``): it keeps ticking and the lease."""

    ticks = 0

    def tick(self) -> float:
        CountingScheduler.ticks += 1
        return super().tick()


class Foreign:
    """Not a taskq Scheduler (duck-typed ``tick``): it runs, but cannot take part in the lease."""

    def __init__(self, app: App, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def tick(self) -> float:
        return 1.0

    def close(self) -> None:
        pass


def test_service_plugs_scheduler_classes(beat_app: App, caplog: pytest.LogCaptureFixture) -> None:
    from taskq.beat import Service

    service = Service(beat_app, scheduler_cls=CountingScheduler, max_interval=2)
    assert isinstance(service.scheduler, CountingScheduler)
    assert service.lease is not None and service.lease.store == "memory"
    assert service.run_once() <= 2.0 and CountingScheduler.ticks == 1
    service.close()
    foreign = Service(beat_app, scheduler_cls=Foreign)
    assert isinstance(foreign.scheduler, Foreign)
    assert foreign.lease is None and "cannot use the leader lease" in caplog.text
    assert foreign.run_once() == 1.0
