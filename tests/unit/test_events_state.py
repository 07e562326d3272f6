"""taskq's cluster state against Celery 5.7's ``events.State``, fed the same events.

Monitors built for Celery read ``state.tasks[id].state``, ``.result``, ``worker.alive`` and the
like, so for any order the events may arrive in, both states must agree on them.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskq.events_state import State

celery_state = pytest.importorskip("celery.events.state")

TASK_FIELDS = (
    "state", "name", "args", "kwargs", "result", "exception", "traceback", "runtime", "retries", "eta",
    "expires", "root_id", "parent_id", "client", "sent", "received", "started", "succeeded", "failed",
    "retried", "revoked", "rejected", "timestamp", "exchange", "routing_key",
)  # fmt: skip
WORKER_FIELDS = ("alive", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys", "freq", "pid")


def event(kind: str, clock: int, when: float, host: str = "w1@h", **fields: Any) -> dict[str, Any]:
    return {"hostname": host, "utcoffset": 0.0, "pid": 42, "clock": clock, **fields, "timestamp": when,
            "type": kind, "local_received": when}  # fmt: skip


def life(task_id: str, ending: str, start: float) -> list[dict[str, Any]]:
    """One task's events, in the order a worker sends them."""
    received = {"name": "proj.add", "args": "(2, 3)", "kwargs": "{}", "root_id": task_id, "parent_id": None,
                "retries": 0, "eta": None, "expires": None}  # fmt: skip
    sent = {**received, "queue": "celery", "exchange": "", "routing_key": "celery"}
    out = [
        event("task-sent", 1, start, host="gen1@h", uuid=task_id, **sent),
        event("task-received", 2, start + 0.1, uuid=task_id, **received),
        event("task-started", 3, start + 0.2, uuid=task_id),
    ]
    endings = {
        "succeeded": [event("task-succeeded", 4, start + 0.3, uuid=task_id, result="5", runtime=0.1)],
        "failed": [
            event("task-failed", 4, start + 0.3, uuid=task_id, exception="ValueError('x')", traceback="T")
        ],
        "retried": [
            event("task-retried", 4, start + 0.3, uuid=task_id, exception="Retry(...)", traceback="T"),
            event("task-received", 5, start + 0.4, uuid=task_id, **{**received, "retries": 1}),
            event("task-started", 6, start + 0.5, uuid=task_id),
            event("task-succeeded", 7, start + 0.6, uuid=task_id, result="'ok'", runtime=0.2),
        ],
        "revoked": [
            event("task-revoked", 4, start + 0.3, uuid=task_id, terminated=True, signum=15, expired=False)
        ],
        "rejected": [
            event("task-failed", 4, start + 0.3, uuid=task_id, exception="Reject()", traceback="T"),
            event("task-rejected", 5, start + 0.35, uuid=task_id, requeue=False),
        ],
    }
    return out + endings[ending]


def worker_event(kind: str, clock: int, when: float, **extra: Any) -> dict[str, Any]:
    fields = {"freq": 2.0, "active": 1, "processed": 7, "loadavg": [0.1, 0.2, 0.3], "sw_ident": "py-celery",
              "sw_ver": "0.1.0", "sw_sys": "Linux", **extra}  # fmt: skip
    return event(kind, clock, when, **fields)


def feed_both(events: list[dict[str, Any]]) -> tuple[Any, State]:
    theirs, ours = celery_state.State(), State()
    for e in events:
        theirs.event(copy.deepcopy(e))
        ours.event(copy.deepcopy(e))
    return theirs, ours


def assert_same(theirs: Any, ours: State) -> None:
    assert sorted(theirs.tasks.keys()) == sorted(ours.tasks)
    for task_id, task in ours.tasks.items():
        expected = theirs.tasks[task_id]
        for field in TASK_FIELDS:
            assert getattr(task, field) == getattr(expected, field), (task_id, field)
        assert (task.worker and task.worker.hostname) == (expected.worker and expected.worker.hostname)
        assert task.ready == expected.ready
    assert sorted(theirs.workers.keys()) == sorted(ours.workers)
    for hostname, worker in ours.workers.items():
        expected = theirs.workers[hostname]
        for field in WORKER_FIELDS:
            assert getattr(worker, field) == getattr(expected, field), (hostname, field)
        assert worker.heartbeats == expected.heartbeats
    assert (theirs.event_count, theirs.task_count) == (ours.event_count, ours.task_count)
    assert theirs.task_types() == ours.task_types()


ENDINGS = ["succeeded", "failed", "retried", "revoked", "rejected"]


@pytest.mark.parametrize("ending", ENDINGS)
def test_in_order_events_give_celerys_state(ending: str) -> None:
    now = time.time()
    theirs, ours = feed_both([worker_event("worker-online", 0, now - 1), *life("t1", ending, now)])
    assert_same(theirs, ours)
    expected = {"succeeded": "SUCCESS", "failed": "FAILURE", "retried": "SUCCESS", "revoked": "REVOKED",
                "rejected": "FAILURE"}  # fmt: skip
    assert ours.tasks["t1"].state == expected[ending]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(ENDINGS), st.randoms(use_true_random=False))
def test_any_arrival_order_gives_celerys_state(ending: str, rnd: Any) -> None:
    """Several connections, batches and clients: events may come in any order."""
    now = time.time()
    events = [
        worker_event("worker-online", 0, now - 1),
        *life("t1", ending, now),
        *life("t2", "succeeded", now),
    ]
    rnd.shuffle(events)
    assert_same(*feed_both(events))


def test_worker_alive_until_offline_or_silent() -> None:
    now = time.time()
    state = State()
    state.event(worker_event("worker-online", 1, now))
    worker = state.workers["w1@h"]
    assert worker.alive and worker.status_string == "ONLINE" and worker.loadavg == [0.1, 0.2, 0.3]
    assert [w.hostname for w in state.alive_workers()] == ["w1@h"]
    state.event(worker_event("worker-offline", 2, now + 1))
    assert not worker.alive and list(state.alive_workers()) == []
    state.event(worker_event("worker-heartbeat", 3, now - 10))  # freq 2: expired 6 s after it came
    assert not state.workers["w1@h"].alive


def test_memory_is_bounded_and_the_least_recently_updated_go() -> None:
    now = time.time()
    state = State(max_tasks_in_memory=3, max_workers_in_memory=2)
    for i in range(5):
        state.event(event("task-received", i, now + i, uuid=f"t{i}", name="proj.add"))
    assert list(state.tasks) == ["t2", "t3", "t4"]
    state.event(event("task-started", 9, now + 9, uuid="t2"))  # touched: no longer the oldest
    state.event(event("task-received", 10, now + 10, uuid="t5", name="proj.add"))
    assert sorted(state.tasks) == ["t2", "t4", "t5"]
    for host in ("a@h", "b@h", "c@h"):
        state.event(worker_event("worker-heartbeat", 11, now, hostname=host))
    assert sorted(state.workers) == ["b@h", "c@h"]


def test_queries_by_time_type_and_worker() -> None:
    now = time.time()
    state = State()
    state.event(event("task-received", 1, now, uuid="a", name="proj.add"))
    state.event(event("task-received", 2, now + 1, uuid="b", name="proj.mul", host="w2@h", parent_id="a"))
    state.event(event("task-succeeded", 3, now + 2, uuid="a", result="1", runtime=0.1))
    assert [u for u, _ in state.tasks_by_time()] == ["a", "b"]
    assert [u for u, _ in state.tasks_by_time(reverse=False)] == ["b", "a"]
    assert [u for u, _ in state.tasks_by_time(limit=1)] == ["a"]
    assert [u for u, _ in state.tasks_by_type("proj.mul")] == ["b"]
    assert [u for u, _ in state.tasks_by_worker("w2@h")] == ["b"]
    assert state.task_types() == ["proj.add", "proj.mul"]
    assert state.tasks["a"].children == {"b"} and state.tasks["a"].info()["result"] == "1"
    state.clear_tasks(ready=True)
    assert list(state.tasks) == ["b"]
