"""Beat matrix: ``celery beat`` feeding a taskq worker and ``taskq beat`` feeding a Celery worker.

Why: in a mixed fleet one beat serves every worker, whichever library each runs. Beat messages
are ordinary protocol-2 task messages plus Celery 5.7's ``celery_beat_task: true`` header, so
the receiving worker must accept that header (and show it to the task as
``self.request.celery_beat_task``, as Celery does) and run the task on the 1 s schedule.

| broker   | ``celery beat`` -> ``taskq worker`` | ``taskq beat`` -> ``celery worker`` |
|----------|-------------------------------------|-------------------------------------|
| Redis    | ``test_beat_feeds_the_other_worker[redis-celery-beat]`` | ``[redis-taskq-beat]`` |
| RabbitMQ | ``[amqp-celery-beat]``               | ``[amqp-taskq-beat]``                |

Both processes are real subprocesses started from an app module written into a temporary
directory (same text for both, only the ``Celery`` import differs); results are recorded in a
Redis list by the task itself. ``tests/beat/test_beat_cli.py`` covers ``taskq beat`` alone
(timing of a 2 s schedule, restart, leader lease, ``-B``); it has no Celery in it, so nothing
here repeats it. What a 5.3-5.6 beat sends (no header) is in ``test_versions.py``
(``p2_56_beat``).
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from interop.test_matrix_canvas import BIN, READY, Proc, celery_argv, taskq_argv, unique

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

TICKS = 3  # wait for three runs of the 1 s entry
WAIT = 25.0  # seconds for them (start-up of both processes included)

BEAT_MODULE = '''\
"""Beat matrix app ({kind}); the same text serves both sides, only the import differs."""
import json
import time

import redis

from {kind} import Celery
from {kind}.beat import BeatLazyFunc

KIND = {kind!r}
app = Celery({name!r}, broker={broker!r}, backend={backend!r})
app.conf.broker_connection_retry_on_startup = True
app.conf.task_default_queue = {queue!r}
app.conf.beat_schedule = {{
    "tick": {{"task": "bm.tick", "schedule": 1.0, "args": ["from-beat", BeatLazyFunc(time.time)], "options": {{"expires": 30}}}},
}}
records = redis.Redis.from_url({records!r})


@app.task(name="bm.tick", bind=True)
def tick(self, label, sent_at):
    """Record what the worker saw; ``sent_at`` is the beat's clock when it sent the tick."""
    records.rpush({key!r}, json.dumps([label, getattr(self.request, "celery_beat_task", None), KIND, self.request.id, sent_at]))
'''


def beat_argv(kind: str, module: str, cwd: Path) -> list[str]:
    schedule = cwd / f"{kind}-beat-schedule"
    return [str(BIN / kind), "-A", module, "beat", "-l", "info", "--max-interval", "1", "-s", str(schedule)]


@pytest.fixture(params=["redis", pytest.param("amqp", marks=pytest.mark.amqp)])
def broker(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return str(request.getfixturevalue("amqp_url"))


@pytest.fixture
def records(redis_url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.mark.parametrize("beat_kind", ["celery", "taskq"], ids=["celery-beat", "taskq-beat"])
def test_beat_feeds_the_other_worker(
    beat_kind: str, broker: str, redis_url: str, records: Any, tmp_path: Path
) -> None:
    """Beat of one library, worker of the other: every tick runs once, header accepted."""
    worker_kind = "taskq" if beat_kind == "celery" else "celery"
    queue, key, name = unique("bm-queue"), unique("bm-ticks"), f"bm{uuid.uuid4().hex[:8]}"
    modules = {}
    for kind in ("celery", "taskq"):
        modules[kind] = f"bm_{kind}_{uuid.uuid4().hex[:6]}"
        source = BEAT_MODULE.format(
            kind=kind, name=name, broker=broker, backend=redis_url, queue=queue, records=redis_url, key=key
        )
        (tmp_path / f"{modules[kind]}.py").write_text(source)
    node = f"{unique(worker_kind)}@%h"
    worker_module = modules[worker_kind]
    argv = taskq_argv(worker_module, node) if worker_kind == "taskq" else celery_argv(worker_module, node)

    with ExitStack() as stack:
        worker = Proc(argv, tmp_path, f"{worker_kind}-worker")
        grace = 2.0 if worker_kind == "celery" and broker.startswith("amqp") else 10.0
        stack.callback(worker.stop, grace)
        beat = Proc(beat_argv(beat_kind, modules[beat_kind], tmp_path), tmp_path, f"{beat_kind}-beat")
        stack.callback(beat.stop)
        try:
            worker.wait_for_log(READY.pattern)
            runs = []
            for _ in range(TICKS):
                item = records.blpop(key, timeout=WAIT)
                assert item is not None, "beat's tick did not run"
                runs.append(json.loads(item[1]))
            code = beat.stop()
            # A clean exit on SIGTERM is taskq's promise, not a fact about Celery's beat: Celery
            # 5.7's beat on AMQP was seen, once in CI, still inside its shutdown 10 s after SIGTERM.
            if beat_kind == "taskq":
                assert code == 0, "taskq beat must exit cleanly on SIGTERM"
        except BaseException:
            print(f"--- worker ---\n{worker.log()}\n--- beat ---\n{beat.log()}")
            raise

    assert [(label, flag, ran_by) for label, flag, ran_by, _, _ in runs] == [
        ("from-beat", True, worker_kind)
    ] * TICKS
    assert len({task_id for _, _, _, task_id, _ in runs}) == TICKS, "each tick is its own task"
    times = [when for *_, when in runs]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.5 < gap < 3.0 for gap in gaps), f"beat sends every ~1 s, got gaps {gaps}"
    sent = beat.log(tail=10**6).count("Sending due task tick")
    assert sent >= TICKS, f"beat logged {sent} sends:\n{beat.log()}"
