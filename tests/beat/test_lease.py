"""The leader lease: one contract for every store, then beats in threads competing for real.

The contract runs against the process-local lease (``memory://``), the embedded SQLite file and
a real Redis. The service tests run two ``Service`` loops in threads on one broker: one sends,
and when it dies (stops without releasing, as a killed process would) the other takes over
within the lease and sends no tick twice.
"""

from __future__ import annotations

import base64
import itertools
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from taskq import App
from taskq.beat import BeatLazyFunc, Service
from taskq.beat_lease import Lease, MemoryLease, RedisLease, SQLiteLease, lease_for
from taskq.beat_scheduler import LeaseLost
from taskq.beat_store import EntryState

from .conftest import sent_messages

UTC = timezone.utc
SHORT = 0.6  # seconds: the lease of the contract tests


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_lease(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Lease]]:
    """A factory of leases (one per simulated beat) on one store, all closed afterwards."""
    name = f"lease-{uuid.uuid4().hex[:8]}"
    made: list[Lease] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    def make(seconds: float = SHORT) -> Lease:
        lease: Lease
        if request.param == "memory":
            lease = MemoryLease(name, seconds)
        elif request.param == "sqlite":
            lease = SQLiteLease(str(tmp_path / "broker.sqlite3"), name, seconds)
        else:
            assert url is not None
            lease = RedisLease(url, name, seconds)
        made.append(lease)
        return lease

    yield make
    for lease in made:
        lease.close()


def state(second: int, count: int = 1) -> EntryState:
    return EntryState(datetime(2024, 1, 1, 0, 0, second, tzinfo=UTC), count, "proj.task")


def test_one_holder_at_a_time(make_lease: Callable[..., Lease]) -> None:
    seconds = 2 * SHORT  # half a lease of margin on each side, for a loaded CI machine
    a, b = make_lease(seconds=seconds), make_lease(seconds=seconds)
    assert a.ensure() and a.held()
    assert not b.ensure() and not b.held()
    term = a.token
    time.sleep(seconds / 2)
    assert a.ensure() and a.token == term  # renewed: same term
    time.sleep(seconds / 2 + 0.1)
    assert not b.ensure()  # the renewal kept it past the first expiry


def test_takeover_after_expiry_fences_the_old_holder(make_lease: Callable[..., Lease]) -> None:
    a, b = make_lease(), make_lease()
    assert a.ensure() and a.claim("entry", state(1))
    time.sleep(SHORT + 0.1)  # a dies (or stalls) without renewing
    assert b.ensure()
    assert b.token is not None and a.token is not None and b.token > a.token
    a._valid_until = time.monotonic() + 60  # a still believes it leads (a paused process)
    assert not a.claim("entry", state(2))  # ... but the store refuses its claim
    assert a.token is None
    assert b.shared_entries() == {"entry": state(1)}
    assert b.claim("entry", state(3, 2))
    assert b.shared_entries() == {"entry": state(3, 2)}
    assert not a.ensure()


def test_release_hands_over_at_once(make_lease: Callable[..., Lease]) -> None:
    a, b = make_lease(seconds=30), make_lease(seconds=30)
    assert a.ensure()
    assert not b.ensure()
    a.release()
    assert not a.held()
    assert b.ensure()


def test_next_check_paces_renewal_and_takeover(make_lease: Callable[..., Lease]) -> None:
    a, b = make_lease(seconds=3), make_lease(seconds=3)
    assert a.ensure()
    assert 0.9 < a.next_check() <= 1.0  # renew every third of the lease
    assert not b.ensure()
    assert b.next_check() == 1.0  # and try to take over as often


@pytest.mark.redis
def test_unreachable_store_means_not_leading(caplog: pytest.LogCaptureFixture) -> None:
    lease = RedisLease("redis://127.0.0.1:1/0", "nowhere", 1.0)
    assert not lease.ensure()
    assert not lease.claim("x", state(1))
    assert "cannot reach the lease store" in caplog.text
    lease.close()


def test_lease_store_follows_the_app(tmp_path: Path) -> None:
    sqlite_app = App("leased", broker=f"sqlite:///{tmp_path}/b.sqlite3", set_as_current=False)
    lease = lease_for(sqlite_app)
    assert isinstance(lease, SQLiteLease) and lease.seconds == 30 and lease.name == "leased"
    lease.close()
    assert isinstance(lease_for(App("m", broker="memory://", set_as_current=False)), MemoryLease)
    amqp = App("a", broker="amqp://guest@localhost//", set_as_current=False)
    assert lease_for(amqp) is None
    amqp.conf.result_backend = "redis://localhost:6379/3"
    redis_lease = lease_for(amqp)
    assert isinstance(redis_lease, RedisLease)
    redis_lease.close()
    assert lease_for(sqlite_app, seconds=0) is None


# -- beats in threads --------------------------------------------------------------------------
class BeatThread:
    """A Service in a thread; ``crash()`` stops it without releasing the lease (like SIGKILL)."""

    def __init__(self, app: App, schedule_file: Path, lease_seconds: float) -> None:
        self.service = Service(app, schedule_filename=str(schedule_file), lease=lease_for(app, lease_seconds))
        self.thread = threading.Thread(target=self.service.start, daemon=True)

    def start(self) -> BeatThread:
        self.thread.start()
        return self

    def crash(self) -> None:
        lease = self.service.lease
        assert lease is not None
        lease.release = lambda: None  # type: ignore[method-assign]  # a killed process releases nothing
        self.service.stop(wait=True, timeout=10)

    def stop(self) -> None:
        self.service.stop(wait=True, timeout=10)

    @property
    def leading(self) -> bool:
        lease = self.service.lease
        return lease is not None and lease.held()


def run_two_beats(
    app_factory: Callable[[], App], tmp_path: Path, received: Callable[[], list[float]]
) -> None:
    """Two beats, 1 s ticks, 1.5 s lease; the leader crashes at 2.5 s; 6.5 s in all."""
    lease_seconds = 1.5
    first = BeatThread(app_factory(), tmp_path / "a", lease_seconds).start()
    time.sleep(0.3)
    second = BeatThread(app_factory(), tmp_path / "b", lease_seconds).start()
    time.sleep(2.2)
    leader, follower = (first, second) if first.leading else (second, first)
    assert leader.leading and not follower.leading
    crashed_at = time.monotonic()
    leader.crash()
    # the lease, its renewal period, and a second of slack for a loaded CI machine's scheduling
    deadline = crashed_at + lease_seconds + lease_seconds / 3 + 1.0
    while not follower.leading:
        assert time.monotonic() < deadline, "the follower did not take over within the lease"
        time.sleep(0.05)
    time.sleep(crashed_at + 4.0 - time.monotonic())
    follower.stop()
    sends = received()
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert min(gaps) > 0.5, f"a tick was sent twice: {sends}"
    assert 3 <= len(sends) <= 7, sends  # 6.5 s of 1 s ticks, less the failover pause


def first_arg(envelope: dict[str, Any]) -> float:
    return float(json.loads(base64.b64decode(envelope["body"]))[0][0])


def beat_app_on(broker: str, queue: str) -> App:
    app = App("two-beats", broker=broker, set_as_current=False, task_default_queue=queue)
    app.conf.beat_schedule = {
        # The message carries its send time: beat evaluates BeatLazyFunc arguments when it sends.
        "tick": {"task": "proj.tick", "schedule": 1.0, "args": [BeatLazyFunc(time.time)]},
    }
    return app


@pytest.mark.redis
def test_two_beats_on_redis_send_each_tick_once(redis_url: str, redis_client: Any, tmp_path: Path) -> None:
    queue = f"beat-{uuid.uuid4().hex[:6]}"

    def received() -> list[float]:
        return sorted(first_arg(json.loads(item)) for item in redis_client.lrange(queue, 0, -1))

    run_two_beats(lambda: beat_app_on(redis_url, queue), tmp_path, received)


def test_two_beats_on_sqlite_send_each_tick_once(tmp_path: Path) -> None:
    broker = f"sqlite:///{tmp_path}/broker.sqlite3"
    queue = "beat-sqlite"

    def received() -> list[float]:
        db = sqlite3.connect(f"{tmp_path}/broker.sqlite3")
        rows = db.execute("SELECT payload FROM taskq_message WHERE queue = ?", (queue,)).fetchall()
        db.close()
        return sorted(first_arg(json.loads(payload)) for (payload,) in rows)

    run_two_beats(lambda: beat_app_on(broker, queue), tmp_path, received)


def test_a_paused_leader_does_not_send_after_losing_the_lease(beat_app: App, tmp_path: Path) -> None:
    """Step two services by hand: A sends, stalls past its lease, B takes over; A's send is refused."""
    beat_app.now = lambda: datetime.now(UTC)  # type: ignore[method-assign]
    beat_app.conf.beat_schedule = {"t": {"task": "proj.t", "schedule": 0.2}}
    name = f"paused-{uuid.uuid4().hex[:6]}"
    a = Service(beat_app, schedule_filename=str(tmp_path / "a"), lease=MemoryLease(name, 0.5))
    b = Service(beat_app, schedule_filename=str(tmp_path / "b"), lease=MemoryLease(name, 0.5))
    a.scheduler, b.scheduler  # noqa: B018 - built now, so their entries start now
    time.sleep(0.25)
    a.run_once()
    assert len(sent_messages(beat_app)) == 1
    b.run_once()
    assert sent_messages(beat_app) == []  # B follows
    time.sleep(0.6)  # A stalls past its lease
    b.run_once()  # B takes over; A's last send is in the store, and 0.2 s have passed: one send
    assert len(sent_messages(beat_app)) == 1
    assert a.lease is not None
    a.lease._valid_until = time.monotonic() + 60  # A wakes, still believing it leads
    a.lease._renew_at = time.monotonic() + 60
    time.sleep(0.25)
    a.run_once()
    assert sent_messages(beat_app) == []  # its claim was refused: nothing sent
    assert a.lease.token is None
    with pytest.raises(LeaseLost):
        a.scheduler.lease = a.lease
        a.lease.token, a.lease._valid_until = 1, time.monotonic() + 60
        a.scheduler.apply_entry(a.scheduler.schedule["t"])
    a.close()
    b.close()


def test_without_a_lease_store_beat_warns_as_celery_advises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = App("amqp-only", broker="amqp://guest:guest@localhost:5672//", set_as_current=False)
    service = Service(app, schedule_filename=str(tmp_path / "sched"))
    service.stop()  # start() sets up, warns, and returns at once
    service.start()
    assert service.lease is None
    assert service.describe_lease() == "none (run a single beat)"
    assert "no shared store for the leader lease" in caplog.text
    assert "Run only one beat (one worker with -B)" in caplog.text
