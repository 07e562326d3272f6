"""The schedule file: round trip, crash safety, corrupt files, restarts and config changes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from taskq import App
from taskq.beat import PersistentScheduler
from taskq.beat_store import FORMAT, EntryState, ScheduleFile, StoredSchedule
from taskq.schedules import crontab

from .conftest import FakeClock, sent_messages

UTC = timezone.utc
ROOT = Path(__file__).resolve().parents[2]


def test_round_trip(tmp_path: Path) -> None:
    store = ScheduleFile(tmp_path / "sched")
    when = datetime(2024, 3, 31, 1, 30, 15, 250000, tzinfo=timezone(timedelta(hours=2)))
    store.save(StoredSchedule({"a": EntryState(when, 7, "proj.add")}, "Europe/Paris", False))
    loaded = store.load()
    assert loaded.entries == {"a": EntryState(when, 7, "proj.add")}
    assert (loaded.tz, loaded.utc_enabled) == ("Europe/Paris", False)
    document = json.loads((tmp_path / "sched").read_text())
    assert document["format"] == FORMAT and document["version"] == 1
    assert document["entries"]["a"] == {
        "task": "proj.add",
        "last_run_at": "2024-03-31T01:30:15.250000+02:00",
        "total_run_count": 7,
    }


def test_missing_file_is_an_empty_schedule(tmp_path: Path) -> None:
    assert ScheduleFile(tmp_path / "none").load() == StoredSchedule()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00\x01garbage",
        b'{"format": "taskq-beat-schedule", "version": 1, "entries": {"a": {"last_run_at": "x"}}}',
        b'{"format": "taskq-beat-schedule", "version": 99, "entries": {}}',
        b'{"format": "other", "version": 1, "entries": {}}',
        b'{"format": "taskq-beat-schedule", "version": 1, "entries": {"a": {"last_run_at": "2024-01-01T00:00"}}}',
        b'{"format": "taskq-beat-schedule", "version": 1, "entries": []}',
        b'{"format": "taskq-beat-sche',  # cut short
    ],
)
def test_unreadable_file_is_kept_aside_and_beat_starts_fresh(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sched"
    path.write_bytes(content)
    assert ScheduleFile(path).load() == StoredSchedule()
    assert (tmp_path / "sched.corrupt").read_bytes() == content
    assert not path.exists()
    assert "cannot read schedule file" in caplog.text


def test_a_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ScheduleFile(tmp_path / "sched")
    old = StoredSchedule({"a": EntryState(datetime(2024, 1, 1, tzinfo=UTC), 1)}, "UTC", True)
    store.save(old)

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        store.save(StoredSchedule({"a": EntryState(datetime(2025, 1, 1, tzinfo=UTC), 2)}, "UTC", True))
    monkeypatch.undo()
    assert store.load() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sched"]  # no temporary file left


WRITER = """
import sys
from datetime import datetime, timedelta, timezone
from taskq.beat_store import EntryState, ScheduleFile, StoredSchedule
store = ScheduleFile(sys.argv[1])
start = datetime(2024, 1, 1, tzinfo=timezone.utc)
n = 0
print("ready", flush=True)
while True:
    n += 1
    entries = {f"entry-{i}": EntryState(start + timedelta(seconds=n), n, "t" * 200) for i in range(300)}
    store.save(StoredSchedule(entries, "UTC", True))
"""


def test_killed_mid_write_the_file_is_old_or_new_never_torn(tmp_path: Path) -> None:
    """SIGKILL a process that rewrites a 300-entry file in a loop, at random moments."""
    path = tmp_path / "sched"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for attempt in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(WRITER), str(path)], stdout=subprocess.PIPE, env=env
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(0.05 + 0.037 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        loaded = ScheduleFile(path).load()
        assert len(loaded.entries) == 300, "a torn write was read"
        assert len({s.total_run_count for s in loaded.entries.values()}) == 1
        assert not (tmp_path / "sched.corrupt").exists()


def test_check_writable(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="does not exist"):
        ScheduleFile(tmp_path / "no" / "sched").check_writable()
    with pytest.raises(OSError, match="is a directory"):
        ScheduleFile(tmp_path).check_writable()


def persistent(app: App, clock: FakeClock, path: Path) -> PersistentScheduler:
    scheduler = PersistentScheduler(app, schedule_filename=str(path), max_interval=5)
    scheduler.clock = clock.monotonic  # type: ignore[method-assign]
    # It read the real monotonic clock when built; on a machine up for less than the fake
    # clock's start, every tick would look overdue for a time-based sync.
    scheduler._last_sync = scheduler.clock()
    return scheduler


def test_restart_keeps_last_run_at_and_counts(beat_app: App, clock: FakeClock, tmp_path: Path) -> None:
    path = tmp_path / "taskq-beat-schedule"
    beat_app.conf.beat_schedule = {
        "often": {"task": "proj.tick", "schedule": 10.0},
        "nightly": {"task": "proj.nightly", "schedule": crontab(hour=3, minute=30)},
    }
    first = persistent(beat_app, clock, path)
    nightly_created = first.schedule["nightly"].last_run_at
    for _ in range(3):
        clock.advance(seconds=10)
        first.tick()
    first.close()
    assert len(sent_messages(beat_app)) == 3
    last = first.schedule["often"].last_run_at

    clock.advance(seconds=4)  # restart 4 s after the last send: the next is due in 6 s, not now
    second = persistent(beat_app, clock, path)
    assert second.schedule["often"].last_run_at == last
    assert second.schedule["often"].total_run_count == 3
    assert second.schedule["nightly"].last_run_at == nightly_created
    assert second.tick() == pytest.approx(5.0)  # max_interval bounds the 6 s
    assert sent_messages(beat_app) == []
    clock.advance(seconds=6)
    second.tick()
    assert len(sent_messages(beat_app)) == 1


def test_config_change_keeps_history(beat_app: App, clock: FakeClock, tmp_path: Path) -> None:
    path = tmp_path / "sched"
    beat_app.conf.beat_schedule = {
        "kept": {"task": "proj.a", "schedule": 10.0},
        "dropped": {"task": "proj.b", "schedule": 10.0},
    }
    first = persistent(beat_app, clock, path)
    clock.advance(seconds=10)
    first.tick()
    first.close()
    sent_messages(beat_app)
    kept_at = first.schedule["kept"].last_run_at

    beat_app.conf.beat_schedule = {
        "kept": {"task": "proj.a2", "schedule": 60.0, "args": (1,)},
        "added": {"task": "proj.c", "schedule": 10.0},
    }
    second = persistent(beat_app, clock, path)
    assert set(second.schedule) == {"kept", "added"}
    kept = second.schedule["kept"]
    assert (kept.task, kept.args, kept.last_run_at, kept.total_run_count) == ("proj.a2", (1,), kept_at, 1)
    assert set(ScheduleFile(path).load().entries) == {"kept", "added"}


def test_time_zone_change_keeps_absolute_times(
    beat_app: App, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sched"
    beat_app.conf.beat_schedule = {"a": {"task": "proj.a", "schedule": 10.0}}
    persistent(beat_app, clock, path).close()
    stored = ScheduleFile(path).load().entries["a"].last_run_at
    beat_app.conf.timezone = "Europe/Paris"
    again = persistent(beat_app, clock, path)
    assert again.schedule["a"].last_run_at == stored
    assert "time zone changed" in caplog.text
    assert ScheduleFile(path).load().tz == "Europe/Paris"


def test_sync_every_n_sends(beat_app: App, clock: FakeClock, tmp_path: Path) -> None:
    path = tmp_path / "sched"
    beat_app.conf.beat_sync_every = 3
    beat_app.conf.beat_schedule = {"a": {"task": "proj.a", "schedule": 1.0}}
    scheduler = persistent(beat_app, clock, path)
    counts = []
    for _ in range(4):
        clock.advance(seconds=1)
        scheduler.tick()
        counts.append(ScheduleFile(path).load().entries["a"].total_run_count)
    assert counts == [0, 0, 3, 3]
    scheduler.close()
    assert ScheduleFile(path).load().entries["a"].total_run_count == 4


def test_a_standby_scheduler_does_not_overwrite_the_file(
    beat_app: App, clock: FakeClock, tmp_path: Path
) -> None:
    """Two beats sharing one schedule file (two -B workers in one directory): the idle one
    closing must not write its stale view over what the sending one wrote."""
    path = tmp_path / "sched"
    beat_app.conf.beat_schedule = {"a": {"task": "proj.a", "schedule": 1.0}}
    sender, standby = persistent(beat_app, clock, path), persistent(beat_app, clock, path)
    clock.advance(seconds=1)
    sender.tick()
    sender.close()
    standby.close()
    assert ScheduleFile(path).load().entries["a"].total_run_count == 1
