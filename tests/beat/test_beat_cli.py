"""``taskq beat`` and ``taskq worker -B`` as real processes.

Every message beat sends carries its send time (a ``BeatLazyFunc(time.time)`` argument), so the
tests can tell a tick sent twice (two sends much closer than the interval) from ticks sent once.

The two-beats failover test (on Redis and on the SQLite file) runs 12 s with 1 s ticks and a
3 s lease; ``TASKQ_BEAT_LONG=1`` runs the issue's full version: 60 s, the leader killed half-way.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from e2e.helpers import WorkerProcess, clean_env, run_taskq, wait_for, write_module

pytestmark = pytest.mark.e2e

LONG = os.environ.get("TASKQ_BEAT_LONG", "").lower() in ("1", "true", "yes")

PROJECT = """
import os
import time
from datetime import timedelta

from taskq import Celery
from taskq.beat import BeatLazyFunc
from taskq.schedules import crontab

app = Celery("proj")
app.conf.task_default_queue = os.environ.get("BEAT_QUEUE", "celery")
app.conf.beat_lease_seconds = float(os.environ.get("BEAT_LEASE", "30"))
app.conf.beat_schedule = {
    "stamp": {"task": "proj.stamp", "schedule": float(os.environ["BEAT_EVERY"]), "args": [BeatLazyFunc(time.time)]},
    "nightly": {"task": "proj.stamp", "schedule": crontab(hour=3, minute=30), "args": [0]},
}


@app.task
def stamp(sent_at):
    with open(os.environ["STAMP_FILE"], "a") as fh:
        fh.write(f"{sent_at}\\n")
"""

TUTORIAL = """
from datetime import timedelta
from taskq.schedules import crontab

CELERYBEAT_SCHEDULE = {
    "add-every-30-seconds": {"task": "tasks.add", "schedule": timedelta(seconds=30), "args": (16, 16)},
    "add-at-10-50": {"task": "tasks.add", "schedule": crontab(hour=10, minute=50), "args": (16, 16)},
}
"""


def send_times_in_redis(client: Any, queue: str) -> list[float]:
    items = client.lrange(queue, 0, -1)
    return sorted(float(json.loads(base64.b64decode(json.loads(i)["body"]))[0][0]) for i in items)


def assert_each_tick_once(sends: list[float], every: float) -> None:
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert not gaps or min(gaps) > every / 2, f"a tick was sent twice: gaps {gaps}"


def beat_env(tmp_path: Path, broker: str | None, **extra: str) -> dict[str, str]:
    env = clean_env(PYTHONPATH=os.pathsep.join((str(tmp_path), clean_env()["PYTHONPATH"])), **extra)
    if broker:
        env["TASKQ_BROKER_URL"] = broker
    env.setdefault("STAMP_FILE", str(tmp_path / "stamps"))
    return env


def start_beat(tmp_path: Path, env: dict[str, str], *args: str) -> WorkerProcess:
    return WorkerProcess(["-A", "proj", "beat", "-l", "info", "--max-interval", "1", *args], tmp_path, env)


@pytest.mark.redis
def test_beat_sends_on_a_2s_schedule(tmp_path: Path, redis_url: str, redis_client: Any) -> None:
    write_module(tmp_path, "proj", PROJECT)
    env = beat_env(tmp_path, redis_url, BEAT_EVERY="2", BEAT_QUEUE="two-seconds")
    beat = start_beat(tmp_path, env)
    try:
        beat.wait_for_log(r"beat: Starting")
        started = time.time()
        time.sleep(7.0)
        assert beat.stop() == 0
        sends = send_times_in_redis(redis_client, "two-seconds")
        assert [round(s - started) for s in sends] == [2, 4, 6], beat.output
        assert beat.output.count("Sending due task stamp") == 3
        assert "lease -> redis 'proj', 30 s" in beat.output
        document = json.loads((tmp_path / "taskq-beat-schedule").read_text())
        assert document["entries"]["stamp"]["total_run_count"] == 3
    finally:
        beat.kill()


@pytest.mark.redis
def test_restart_keeps_last_run_at(tmp_path: Path, redis_url: str, redis_client: Any) -> None:
    write_module(tmp_path, "proj", PROJECT)
    env = beat_env(tmp_path, redis_url, BEAT_EVERY="2", BEAT_QUEUE="restart")
    schedule_file = tmp_path / "state" / "beat.json"
    schedule_file.parent.mkdir()
    first = start_beat(tmp_path, env, "-s", str(schedule_file))
    try:
        wait_for(lambda: redis_client.llen("restart") == 1, 10, "the first send")
        assert first.stop() == 0
    finally:
        first.kill()
    before = json.loads(schedule_file.read_text())["entries"]
    assert before["stamp"]["total_run_count"] == 1
    second = start_beat(tmp_path, env, "-s", str(schedule_file))
    try:
        wait_for(lambda: redis_client.llen("restart") == 2, 10, "the first send after the restart")
        assert second.stop() == 0
    finally:
        second.kill()
    after = json.loads(schedule_file.read_text())["entries"]
    sends = send_times_in_redis(redis_client, "restart")
    assert sends[1] - sends[0] >= 1.9  # not sent at once on restart: 2 s after the last send
    assert after["stamp"]["total_run_count"] == 2
    assert after["nightly"]["last_run_at"] == before["nightly"]["last_run_at"]


def send_times_in_sqlite(path: Path, queue: str) -> list[float]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT payload FROM taskq_message WHERE queue = ?", (queue,)).fetchall()
    finally:
        db.close()
    return sorted(float(json.loads(base64.b64decode(json.loads(p)["body"]))[0][0]) for (p,) in rows)


@pytest.mark.parametrize("store", ["redis", "sqlite"])
def test_two_beats_with_the_leader_killed_send_each_tick_once(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    duration = 60.0 if LONG else 12.0
    lease = 3.0
    if store == "redis":
        broker = request.getfixturevalue("redis_url")
        client = request.getfixturevalue("redis_client")
        received = lambda: send_times_in_redis(client, "failover")  # noqa: E731
    else:
        broker = f"sqlite:///{tmp_path}/broker.sqlite3"
        received = lambda: send_times_in_sqlite(tmp_path / "broker.sqlite3", "failover")  # noqa: E731
    write_module(tmp_path, "proj", PROJECT)
    env = beat_env(tmp_path, broker, BEAT_EVERY="1", BEAT_QUEUE="failover", BEAT_LEASE=str(lease))
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    leader = start_beat(tmp_path, env, "-s", str(tmp_path / "a" / "sched"))
    follower: WorkerProcess | None = None
    try:
        leader.wait_for_log(r"took the lease")
        started = time.monotonic()
        follower = start_beat(tmp_path, env, "-s", str(tmp_path / "b" / "sched"))
        follower.wait_for_log(r"beat: Starting")
        time.sleep(max(duration / 2 - (time.monotonic() - started), 0))
        assert "took the lease" not in follower.output
        leader.kill()  # SIGKILL: no release, the lease must run out
        killed = time.monotonic()
        follower.wait_for_log(r"took the lease", timeout=lease + lease / 3 + 2)
        takeover = time.monotonic() - killed
        time.sleep(max(duration - (time.monotonic() - started), 0))
        assert follower.stop() == 0
    finally:
        leader.kill()
        if follower is not None:
            follower.kill()
    sends = received()
    assert_each_tick_once(sends, 1.0)
    assert takeover <= lease + lease / 3 + 1
    assert duration - lease - 4 <= len(sends) <= duration + 1, sends


def test_worker_b_on_two_workers_runs_each_tick_once(tmp_path: Path) -> None:
    """``taskq worker -B`` twice on the embedded SQLite default: one beat sends, both work."""
    write_module(tmp_path, "proj", PROJECT)
    env = beat_env(tmp_path, None, BEAT_EVERY="1", BEAT_LEASE="3")
    args = ["-A", "proj", "worker", "-B", "-l", "info", "-P", "threads", "-c", "2"]
    one = WorkerProcess([*args, "-n", "one@%h"], tmp_path, env)
    two = WorkerProcess([*args, "-n", "two@%h"], tmp_path, env)
    try:
        one.wait_ready()
        two.wait_ready()
        stamps = tmp_path / "stamps"
        wait_for(lambda: stamps.exists() and len(stamps.read_text().split()) >= 5, 15, "5 ticks run")
        assert one.stop() == 0 and two.stop() == 0
    finally:
        one.kill()
        two.kill()
    sends = sorted(float(line) for line in stamps.read_text().split())
    assert_each_tick_once(sends, 1.0)
    leaders = [w for w in (one, two) if "took the lease" in w.output]
    assert len(leaders) >= 1
    assert "no shared store for the leader lease" not in one.output + two.output
    assert (
        sqlite3.connect(tmp_path / "taskq.sqlite3")
        .execute("SELECT COUNT(*) FROM taskq_beat_lease")
        .fetchone()[0]
        == 1
    )


def test_pidfile_detach_and_tutorial_config(tmp_path: Path) -> None:
    """``--detach --pidfile``; a second beat on the same pidfile is refused; the tutorial loads."""
    write_module(tmp_path, "celeryconfig", TUTORIAL)
    write_module(
        tmp_path,
        "proj",
        "from taskq import Celery\napp = Celery('proj')\napp.config_from_object('celeryconfig')\n",
    )
    env = beat_env(tmp_path, None)
    detached = run_taskq(
        tmp_path,
        "-A",
        "proj",
        "beat",
        "--detach",
        "--pidfile",
        "beat.pid",
        "-f",
        "beat.log",
        "-l",
        "debug",
        env=env,
    )
    assert detached.returncode == 0, detached.stderr
    pidfile = tmp_path / "beat.pid"
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "the pid file"))
    try:
        log = tmp_path / "beat.log"
        wait_for(lambda: log.exists() and "beat: Starting" in log.read_text(), 15, "beat to start")
        text = log.read_text()
        assert "add-every-30-seconds tasks.add(16, 16) <freq: 30.00 seconds>" in text
        assert "add-at-10-50 tasks.add(16, 16) <crontab: 50 10 * * * (m/h/dM/MY/d)>" in text
        again = run_taskq(tmp_path, "-A", "proj", "beat", "--pidfile", "beat.pid", env=env, timeout=30)
        assert again.returncode != 0
        assert f"names running process {pid}" in again.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pidfile.exists(), 10, "the pid file to go")
