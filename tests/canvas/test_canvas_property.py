"""Random nested canvases give the same value on a worker as the same expression in Python.

Hypothesis builds workflows of small arithmetic tasks — chains, groups inside chords, chords
inside chains, chains inside chord headers — runs each on a real worker (memory:// and Redis)
and eagerly, and compares the result with a direct evaluation of the same tree.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskq import Celery
from taskq.backend.memory import MemoryBackend
from taskq.canvas import Signature
from taskq.workflows import chain, chord, group

from .support import Running

EXAMPLES = int(os.environ.get("TASKQ_CANVAS_EXAMPLES", "25"))

Node = tuple[Callable[[Celery], Signature], Callable[[int | None], int]]


def _make_app(broker: str, backend: str) -> Celery:
    app = Celery("canvasprop", broker=broker, backend=backend, set_as_current=False)
    app.conf.task_default_queue = f"canvas-{uuid.uuid4().hex[:8]}"

    @app.task(name="canvasprop.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="canvasprop.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="canvasprop.xsum")
    def xsum(numbers: list[int]) -> int:
        return sum(numbers)

    return app


def leaf(with_input: bool) -> st.SearchStrategy[Node]:
    """A task: ``add/mul(prev, k)`` inside a chain, ``add/mul(a, b)`` at the start."""

    def build(op: str, a: int, b: int) -> Node:
        fn = (lambda x, y: x + y) if op == "add" else (lambda x, y: x * y)
        if with_input:
            return (lambda app: app.tasks[f"canvasprop.{op}"].s(b)), (lambda x: fn(x, b))
        return (lambda app: app.tasks[f"canvasprop.{op}"].s(a, b)), (lambda x: fn(a, b))

    return st.builds(build, st.sampled_from(["add", "mul"]), st.integers(0, 5), st.integers(0, 5))


def nodes(with_input: bool, depth: int) -> st.SearchStrategy[Node]:
    if depth == 0:
        return leaf(with_input)
    inner = nodes(with_input, depth - 1)
    follower = nodes(True, depth - 1)

    def as_chain(first: Node, rest: list[Node]) -> Node:
        def build(app: Celery) -> Signature:
            return chain(first[0](app), *(r[0](app) for r in rest), app=app)

        def value(x: int | None) -> int:
            out = first[1](x)
            for r in rest:
                out = r[1](out)
            return out

        return build, value

    def as_chord(header: list[Node]) -> Node:
        def build(app: Celery) -> Signature:
            return chord([h[0](app) for h in header], app.tasks["canvasprop.xsum"].s(), app=app)

        return build, (lambda x: sum(h[1](x) for h in header))

    return st.one_of(
        leaf(with_input),
        st.builds(as_chain, inner, st.lists(follower, min_size=1, max_size=2)),
        st.builds(as_chord, st.lists(inner, min_size=1, max_size=3)),
    )


def top_level() -> st.SearchStrategy[tuple[Callable[[Celery], Signature], Callable[[], Any]]]:
    """A workflow, or a group of them (whose value is the list of values)."""
    single = nodes(False, 2).map(lambda n: (n[0], lambda: n[1](None)))
    many = st.lists(nodes(False, 2), min_size=1, max_size=3).map(
        lambda ns: ((lambda app: group(*(n[0](app) for n in ns), app=app)), lambda: [n[1](None) for n in ns])
    )
    return st.one_of(single, many)


@pytest.fixture(params=["memory", "redis"])
def worker_app(request: pytest.FixtureRequest) -> Iterator[Celery]:
    if request.param == "memory":
        MemoryBackend.clear()
        app = _make_app("memory://", "memory://")
    else:
        url = request.getfixturevalue("redis_url")
        app = _make_app(url, url)
    with Running(app):
        yield app
    app.close()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(workflow=top_level())
def test_worker_matches_python(worker_app: Celery, workflow: Any) -> None:
    build, expected = workflow
    result = build(worker_app).apply_async()
    assert result.get(timeout=20) == expected()


@settings(max_examples=EXAMPLES, deadline=None)
@given(workflow=top_level())
def test_eager_matches_python(workflow: Any) -> None:
    app = _make_app("memory://", "memory://")
    app.conf.task_always_eager = True
    build, expected = workflow
    assert build(app).apply_async().get() == expected()
