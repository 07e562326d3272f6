"""Workflows run to their values: on a worker thread (memory://, Redis) and eagerly.

Each test takes ``env``: an app with the canvas tasks (``support.register``) and, unless eager,
a worker in a thread of this process; the same assertions hold in all three modes except
where Celery itself differs in eager mode (said so in the test).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from taskq import Celery, GroupResult, chain, chord, group, states
from taskq.backend.memory import MemoryBackend
from taskq.exceptions import ChordError
from taskq.result import AsyncResult

from .support import ERRBACKS, Running, make_app, wait_until

T = 20  # seconds any one result may take


class Env:
    def __init__(self, mode: str, app: Celery) -> None:
        self.mode, self.app = mode, app
        self.eager = mode == "eager"
        self.t = {name.split(".")[1]: task for name, task in app.tasks.items() if name.startswith("cv.")}


@pytest.fixture(scope="module", params=["memory", "redis", "eager"])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        app = make_app(url, url)
    else:
        MemoryBackend.clear()
        app = make_app()
        app.conf.task_always_eager = request.param == "eager"
    if request.param == "eager":
        yield Env("eager", app)
    else:
        with Running(app):
            yield Env(request.param, app)
    app.close()


def needs_worker(env: Env) -> None:
    if env.eager:
        pytest.skip("needs stored results and a worker (not eager)")


# -- values ---------------------------------------------------------------------------------


def test_chain(env: Env) -> None:
    add, mul = env.t["add"], env.t["mul"]
    assert chain(add.s(4, 4), mul.s(8), mul.s(10))().get(timeout=T) == 640
    assert (add.s(2, 2) | add.s(4) | add.s(8)).apply_async().get(timeout=T) == 16
    assert chain(add.s(4), mul.s(8)).apply_async((4,)).get(timeout=T) == 64  # partial chain
    assert (add.si(2, 2) | add.si(4, 4)).delay().get(timeout=T) == 8  # immutable: 2+2 is dropped


def test_group(env: Env) -> None:
    add = env.t["add"]
    result = group(add.s(i, i) for i in range(10))()
    assert isinstance(result, GroupResult) and result.id
    assert result.get(timeout=T) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert result.join(timeout=T) == result.get(timeout=T)
    assert result.ready() and result.successful() and not result.failed()
    assert result.completed_count() == 10
    assert group(add.s(2), add.s(4)).apply_async((10,)).get(timeout=T) == [12, 14]


def test_chord(env: Env) -> None:
    add, xsum, mul = env.t["add"], env.t["xsum"], env.t["mul"]
    assert chord(add.s(i, i) for i in range(10))(xsum.s()).get(timeout=T) == 90
    assert chord((add.s(i, i) for i in range(10)), xsum.s()).apply_async().get(timeout=T) == 90
    assert (group(add.s(i, i) for i in range(4)) | xsum.s())().get(timeout=T) == 12
    assert chord([add.s(1, 1), add.s(2, 2)])(mul.s(10)).get(timeout=T) == [2, 4] * 10  # body(list, 10)
    assert chord([], xsum.s()).apply_async().get(timeout=T) == 0  # an empty header: body([]) at once


@pytest.mark.parametrize(
    ("name", "build", "value"),
    [
        (
            "chain of groups",
            lambda t: (
                group(t["add"].s(1, 1), t["add"].s(2, 2))
                | t["xsum"].s()
                | group(t["add"].s(1), t["add"].s(2))
                | t["xsum"].s()
            ),
            15,
        ),
        (
            "group of chains",
            lambda t: group(t["add"].s(1, 1) | t["mul"].s(3), t["add"].s(2, 2) | t["mul"].s(10)),
            [6, 40],
        ),
        (
            "chord inside a chain",
            lambda t: (
                t["add"].s(1, 1) | chord([t["add"].s(10), t["add"].s(20)], t["xsum"].s()) | t["mul"].s(2)
            ),
            68,
        ),
        (
            "chain as a chord body",
            lambda t: chord([t["add"].s(1, 1), t["add"].s(2, 2)], t["xsum"].s() | t["mul"].s(10)),
            60,
        ),
        (
            "chains in a chord header",
            lambda t: chord(
                [t["add"].s(1, 1) | t["mul"].s(2), t["add"].s(2, 2) | t["mul"].s(3)], t["xsum"].s()
            ),
            16,
        ),
        (
            "chord in a chord header",
            lambda t: chord(
                [chord([t["add"].s(1, 1), t["add"].s(2, 2)], t["xsum"].s()), t["add"].s(5, 5)], t["xsum"].s()
            ),
            16,
        ),
        (
            "group of chords",
            lambda t: group(
                chord([t["add"].s(1, 1), t["add"].s(2, 2)], t["xsum"].s()),
                chord([t["add"].s(3, 3)], t["xsum"].s()),
            ),
            [6, 6],
        ),
        ("task | group (no body)", lambda t: t["add"].s(1, 1) | group(t["add"].s(1), t["add"].s(2)), [3, 4]),
        ("group of one chain", lambda t: group([t["add"].s(1, 1) | t["add"].s(1)]), [3]),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_nested(env: Env, name: str, build: Any, value: Any) -> None:
    assert build(env.t).apply_async().get(timeout=T) == value


def test_map_starmap_chunks(env: Env) -> None:
    add, xsum = env.t["add"], env.t["xsum"]
    assert xsum.map([list(range(10)), list(range(100))]).delay().get(timeout=T) == [45, 4950]
    assert add.starmap(zip(range(5), range(5), strict=True)).delay().get(timeout=T) == [0, 2, 4, 6, 8]
    parts = add.chunks(zip(range(10), range(10), strict=True), 3)
    assert parts.delay().get(timeout=T) == [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]
    assert parts.group().apply_async().get(timeout=T) == [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]
    assert parts().get(timeout=T) == [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]


def test_link_callback(env: Env) -> None:
    add, mul = env.t["add"], env.t["mul"]
    callback_id = str(uuid.uuid4())
    result = add.apply_async((2, 2), link=mul.s(10).set(task_id=callback_id))
    assert result.get(timeout=T) == 4
    if not env.eager:
        assert env.app.AsyncResult(callback_id).get(timeout=T) == 40
        assert [child.id for child in result.children] == [callback_id]


# -- results: parents, children, collect, GroupResult persistence -----------------------------


def test_results_reachable_as_in_celery(env: Env) -> None:
    needs_worker(env)
    add, xsum = env.t["add"], env.t["xsum"]
    result = (add.s(1, 1) | add.s(2) | add.s(3)).apply_async()
    assert result.get(timeout=T) == 7
    assert [result.parent.get(timeout=T), result.parent.parent.get(timeout=T)] == [4, 2]
    assert result.parent.parent.parent is None
    root = result.parent.parent
    assert [value for _, value in root.collect(timeout=T)] == [2, 4, 7]  # from the first result on

    body = chord([add.s(1, 1), add.s(2, 2)], xsum.s()).apply_async()
    assert body.get(timeout=T) == 6
    assert isinstance(body.parent, GroupResult)
    assert body.parent.get(timeout=T) == [2, 4]

    with_chord = (add.s(1, 1) | group(add.s(10), add.s(20)) | xsum.s()).apply_async()
    assert with_chord.get(timeout=T) == 34
    assert isinstance(with_chord.parent, GroupResult), "the body's parent is the header, as in Celery"
    assert with_chord.parent.get(timeout=T) == [12, 22]
    assert with_chord.parent.parent.get(timeout=T) == 2


def test_collect_follows_returned_results(env: Env) -> None:
    """Celery's ``AsyncResult.collect`` example: A returns a group, each B returns a result."""
    needs_worker(env)
    result = env.t["A"].delay(5)
    leaves = [value for child, value in result.collect(timeout=T) if not child.children]
    assert leaves == [0, 1, 4, 9, 16]


def test_group_result_save_restore(env: Env) -> None:
    needs_worker(env)
    add = env.t["add"]
    result = group(add.s(i, i) for i in range(3))()
    assert result.get(timeout=T) == [0, 2, 4]
    assert GroupResult.restore(result.id, app=env.app) is None, "sending a group stores nothing"
    result.save()
    restored = GroupResult.restore(result.id, app=env.app)
    assert restored == result
    assert [r.id for r in restored.results] == [r.id for r in result.results]
    assert restored.get(timeout=T) == [0, 2, 4]
    assert restored.completed_count() == 3
    restored.delete()
    assert GroupResult.restore(result.id, app=env.app) is None


def test_group_with_a_failure(env: Env) -> None:
    add, fail = env.t["add"], env.t["fail"]
    result = group(add.s(1, 1), fail.s(), add.s(2, 2))()
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=T)
    values = result.join(timeout=T, propagate=False)
    assert values[0] == 2 and isinstance(values[1], ValueError) and values[2] == 4
    assert result.ready() and result.failed() and not result.successful()
    assert result.completed_count() == 2


# -- errors ---------------------------------------------------------------------------------


def test_errbacks_get_celerys_arguments(env: Env) -> None:
    """New style ``(request, exc, traceback)`` runs in the worker; old style gets the task id."""
    fail, on_error, on_error_old = env.t["fail"], env.t["on_error"], env.t["on_error_old"]
    ERRBACKS.clear()
    result = fail.apply_async((1,), link_error=[on_error.s(), on_error_old.s()])
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=T)
    wait_until(lambda: len(ERRBACKS) == 2, T, "both errbacks")
    new = next(call for call in ERRBACKS if call[0] == "new")
    _, request_id, exc, traceback = new
    assert request_id == result.id
    assert isinstance(exc, ValueError) and exc.args == ("boom",)
    assert isinstance(traceback, str) and "ValueError: boom" in traceback
    assert ("old", result.id) in ERRBACKS


def test_on_error_chains(env: Env) -> None:
    fail, on_error = env.t["fail"], env.t["on_error"]
    ERRBACKS.clear()
    result = fail.s(1).on_error(on_error.s()).delay()
    with pytest.raises(ValueError):
        result.get(timeout=T)
    wait_until(lambda: ERRBACKS, T, "the errback")
    assert ERRBACKS[0][1] == result.id


def test_failed_chain_step_fails_the_rest(env: Env) -> None:
    needs_worker(env)
    add, fail = env.t["add"], env.t["fail"]
    result = (add.s(1, 1) | fail.s() | add.s(3)).apply_async()
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=T)
    assert result.state == states.FAILURE
    assert result.parent.state == states.FAILURE
    assert result.parent.parent.get(timeout=T) == 2


def test_chord_error_reaches_the_body(env: Env) -> None:
    """A failed header task fails the body with ChordError (eager: the task's own error, as Celery)."""
    add, fail, xsum, on_error = env.t["add"], env.t["fail"], env.t["xsum"], env.t["on_error"]
    ERRBACKS.clear()
    body = xsum.s()
    body.link_error(on_error.s())
    if env.eager:  # Celery's eager chord joins the header in apply_async: the error is raised there
        with pytest.raises(ValueError, match="boom"):
            chord([add.s(1, 1), fail.s(), add.s(2, 2)], body).apply_async()
        return
    result = chord([add.s(1, 1), fail.s(), add.s(2, 2)], body).apply_async()
    with pytest.raises(ChordError, match=r"Dependency .* raised ValueError\('boom'\)"):
        result.get(timeout=T)
    assert result.state == states.FAILURE
    wait_until(lambda: ERRBACKS, T, "the body's errback")
    (_, request_id, exc, _) = ERRBACKS[0]
    assert request_id == result.id and isinstance(exc, ChordError)


def test_chord_error_reaches_a_chain_after_the_body(env: Env) -> None:
    needs_worker(env)
    add, fail, xsum = env.t["add"], env.t["fail"], env.t["xsum"]
    result = (chord([add.s(1, 1), fail.s()], xsum.s()) | add.s(1)).apply_async()
    with pytest.raises(ChordError):
        result.get(timeout=T)
    assert result.state == states.FAILURE


def test_group_directly_in_a_chord_header_is_refused(env: Env) -> None:
    add, tsum = env.t["add"], env.t["tsum"]
    if env.eager:
        pytest.skip("eager chords run the header as a group, nested or not")
    with pytest.raises(ChordError):
        chord([group(add.s(1, 1), add.s(2, 2)), add.s(5, 5)], tsum.s()).apply_async()


def test_retried_header_task_counts_once(env: Env) -> None:
    flaky, xsum = env.t["flaky"], env.t["xsum"]
    result = chord([flaky.s(1), flaky.s(2)], xsum.s()).apply_async()
    assert result.get(timeout=T) == 30


def test_signature_results_are_async_results(env: Env) -> None:
    add = env.t["add"]
    result = add.s(2).delay(3)
    assert isinstance(result, AsyncResult)
    assert result.get(timeout=T) == 5
