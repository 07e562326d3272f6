"""The prefork pool's hand-off of jobs to its children (taskq/worker/prefork.py), in process.

The consumer's thread writes each job to the children's pipe itself: a job that cannot be
written must fail on its own, leave nothing behind in billiard's books and never stop the
jobs after it.
"""

from __future__ import annotations

import os
import queue
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from taskq import Celery, states
from taskq.backend.memory import MemoryBackend
from taskq.exceptions import WorkerLostError
from taskq.task import Context
from taskq.worker.pools import Job
from taskq.worker.prefork import PreforkPool

WAIT = 20.0


@pytest.fixture
def app() -> Iterator[Celery]:
    MemoryBackend.clear()
    app = Celery("pfjobs", broker="memory://", backend="memory://", set_as_current=False)

    @app.task(name="pfjobs.echo")
    def echo(value: Any = None) -> Any:
        return value

    yield app
    app.close()


@pytest.fixture
def pool(app: Celery) -> Iterator[PreforkPool]:
    pool = PreforkPool(app, 1)
    pool.start()
    yield pool
    pool.stop(graceful=False)


def submit(app: Celery, pool: PreforkPool, outcomes: queue.SimpleQueue[Any], **kwargs: Any) -> str:
    context = Context(id=uuid.uuid4().hex, task="pfjobs.echo", args=(), kwargs=kwargs, called_directly=False)
    pool.submit(Job(app.tasks["pfjobs.echo"], context, lambda outcome: outcomes.put((context.id, outcome))))
    return str(context.id)


def test_a_job_that_cannot_be_written_fails_alone(app: Celery, pool: PreforkPool) -> None:
    outcomes: queue.SimpleQueue[Any] = queue.SimpleQueue()
    broken = submit(app, pool, outcomes, value=lambda: None)  # a lambda does not pickle
    task_id, outcome = outcomes.get(timeout=WAIT)
    assert task_id == broken
    assert isinstance(outcome, WorkerLostError) and "pickle" in str(outcome).lower()
    assert pool.running == 0 and pool.free_slots == 1
    assert pool._pool is not None and pool._pool._cache == {}  # nothing left for a stop to wait on

    fine = [submit(app, pool, outcomes, value=n) for n in range(3)]
    got = {}
    for _ in fine:
        task_id, outcome = outcomes.get(timeout=WAIT)
        got[task_id] = outcome
    assert sorted(got) == sorted(fine)
    assert all(o.state == states.SUCCESS for o in got.values())


def test_a_warm_stop_still_ends_the_children(app: Celery, pool: PreforkPool) -> None:
    """Close sends billiard's handler its end-of-jobs mark, and the handler tells the children."""
    outcomes: queue.SimpleQueue[Any] = queue.SimpleQueue()
    submit(app, pool, outcomes, value=1)
    assert outcomes.get(timeout=WAIT)[1].state == states.SUCCESS
    children = pool.child_pids()
    pool.stop(graceful=True)
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
