"""A Celery 5.7 worker and a taskq worker sharing one PostgreSQL result database (Redis broker).

Each writes results into the same ``celery_taskmeta`` rows (this run's tables) and the other
side's client reads them: values, failures, and chords in both directions -- a Celery client's
chord (``celery.chord_unlock`` run by the taskq worker over results the Celery worker wrote) and
a taskq client's chord (header counted by a prefork taskq worker, one engine per child; body run
by the Celery worker).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from interop.sides import celery_worker_argv, taskq_worker_argv, unique, workers

pytestmark = pytest.mark.e2e

WAIT = 30.0

APP_MODULE = """\
from {package} import Celery

app = Celery("dbinterop", broker={broker!r}, backend={backend!r})
app.conf.broker_connection_retry_on_startup = True
app.conf.database_table_names = {names!r}
app.conf.result_chord_retry_interval = 0.2


@app.task(name="dbi.add")
def add(x, y):
    return x + y


@app.task(name="dbi.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="dbi.total")
def total(values):
    return sum(values)
"""


@pytest.fixture(scope="module")
def sides(
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    postgresql_url: str,
    db_table_names: dict[str, str],
) -> Iterator[dict[str, Any]]:
    pytest.importorskip("celery")
    cwd = tmp_path_factory.mktemp("dbinterop")
    suffix = unique("m").replace("-", "_")
    modules = {side: f"dbi_{side}_{suffix}" for side in ("celery", "taskq")}
    for side, module in modules.items():
        source = APP_MODULE.format(
            package=side, broker=redis_url, backend=postgresql_url, names=db_table_names
        )
        (cwd / f"{module}.py").write_text(source)
    queues = {side: unique(f"dbi-{side}") for side in ("celery", "taskq")}
    celery_node, taskq_node = unique("celery") + "@%h", unique("taskq") + "@%h"
    specs = [
        ("celery", celery_worker_argv(modules["celery"], celery_node, [queues["celery"]], "-P", "threads")),
        (
            "taskq",
            taskq_worker_argv(modules["taskq"], taskq_node, [queues["taskq"]], "-P", "prefork", "-c", "2"),
        ),
    ]
    sys.path.insert(0, str(cwd))
    try:
        with workers(specs, Path(cwd)):
            clients = {side: importlib.import_module(module).app for side, module in modules.items()}
            yield {"clients": clients, "queues": queues}
            for client in clients.values():
                client.close()
    finally:
        sys.path.remove(str(cwd))


@pytest.mark.parametrize(("client", "worker"), [("taskq", "celery"), ("celery", "taskq")])
def test_values_and_failures_cross_over(sides: dict[str, Any], client: str, worker: str) -> None:
    app, queue = sides["clients"][client], sides["queues"][worker]
    assert app.send_task("dbi.add", (2, 3), queue=queue).get(timeout=WAIT) == 5
    failed = app.send_task("dbi.fail", ("from the other side",), queue=queue)
    with pytest.raises(ValueError, match="from the other side"):
        failed.get(timeout=WAIT)
    assert failed.state == "FAILURE" and "ValueError" in failed.traceback


def test_celery_clients_chord_unlocked_by_the_taskq_worker(sides: dict[str, Any]) -> None:
    from celery import chord

    app, queues = sides["clients"]["celery"], sides["queues"]
    add, total = app.signature("dbi.add"), app.signature("dbi.total")
    header = [add.clone((i, i)).set(queue=queues["celery"]) for i in range(6)]
    result = chord(header)(total.clone().set(queue=queues["taskq"]))
    assert result.get(timeout=WAIT) == 30


def test_taskq_clients_chord_counted_by_prefork_taskq_children(sides: dict[str, Any]) -> None:
    from taskq.workflows import chord

    app, queues = sides["clients"]["taskq"], sides["queues"]
    add, total = app.signature("dbi.add"), app.signature("dbi.total")
    header = [add.clone((i, 1)).set(queue=queues["taskq"]) for i in range(8)]
    result = chord(header)(total.clone().set(queue=queues["celery"]))
    assert result.get(timeout=WAIT) == sum(range(8)) + 8
