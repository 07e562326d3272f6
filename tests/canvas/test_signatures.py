"""The Signature API, checked against Celery 5.7 itself: the same calls give the same dicts.

A signature is Celery's six-key dict (``task``, ``args``, ``kwargs``, ``options``,
``subtask_type``, ``immutable``); every form built here is compared, as JSON text (key order
included), with what Celery builds for the same call, and every Celery dict decodes into the
taskq class its ``subtask_type`` names and re-encodes unchanged. Sending is observed on the
``memory://`` broker (no worker): the message taskq publishes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import celery
import pytest

import taskq
from taskq import GroupResult, Signature, chain, chord, chunks, group, signature, xmap, xstarmap
from taskq.exceptions import ChordError
from taskq.result import AsyncResult, EagerResult

from .support import make_app, normalized, published, register, same_json

TID = "00000000-0000-4000-8000-00000000f001"


@pytest.fixture(scope="module")
def app() -> Iterator[taskq.Celery]:
    app = make_app()
    yield app
    app.close()


@pytest.fixture(scope="module")
def capp() -> Iterator[celery.Celery]:
    """Celery's app with the same task names (nothing is sent: signatures only)."""
    app = celery.Celery("cv", broker="memory://", backend="cache+memory://", set_as_current=False)
    register(app)
    yield app
    app.close()


def both(build: Callable[[Any, Any], Any], app: taskq.Celery, capp: celery.Celery) -> tuple[Any, Any]:
    """``build(tasks, module)`` with taskq's tasks and module, then Celery's."""
    return build(app.tasks, taskq), build(capp.tasks, celery)


FORMS: dict[str, Callable[[Any, Any], Any]] = {
    "s": lambda t, m: t["cv.add"].s(2, 2),
    "s-kwargs": lambda t, m: t["cv.add"].s(2, y=3),
    "si": lambda t, m: t["cv.add"].si(2, 2),
    "partial": lambda t, m: t["cv.add"].s(2),
    "set": lambda t, m: t["cv.add"].s(2).set(queue="q2", countdown=10, priority=3),
    "set-immutable": lambda t, m: t["cv.add"].s(2, 2).set(immutable=True),
    "signature-method": lambda t, m: t["cv.add"].signature((2, 2), {}, countdown=1),
    "signature-options": lambda t, m: t["cv.add"].signature((2, 2), options={"queue": "q"}),
    "signature-by-name": lambda t, m: m.signature("cv.add", args=(2, 2), countdown=10),
    "clone": lambda t, m: t["cv.add"].s(2).clone(args=(3,), kwargs={"z": 1}, queue="x"),
    "clone-immutable": lambda t, m: t["cv.add"].si(2, 2).clone(args=(9,)),
    "link": lambda t, m: _linked(t["cv.add"].s(1, 1), t),
    "on_error": lambda t, m: t["cv.add"].s(1, 1).on_error(t["cv.on_error"].s()),
    "chain": lambda t, m: m.chain(t["cv.add"].s(1, 2), t["cv.add"].s(3), t["cv.add"].s(4)),
    "chain-list": lambda t, m: m.chain([t["cv.add"].s(1, 2), t["cv.add"].s(3)]),
    "pipe": lambda t, m: t["cv.add"].s(1, 2) | t["cv.add"].s(3) | t["cv.mul"].s(4),
    "chain-in-chain": lambda t, m: m.chain(t["cv.add"].s(1, 1), m.chain(t["cv.add"].s(2), t["cv.add"].s(3))),
    "group": lambda t, m: m.group(t["cv.add"].s(i, i) for i in range(3)),
    "group-list": lambda t, m: m.group([t["cv.add"].s(1, 1), t["cv.mul"].s(2, 2)]),
    "group-of-chains": lambda t, m: m.group(t["cv.add"].s(1, 1) | t["cv.add"].s(2), t["cv.add"].s(3, 3)),
    "map": lambda t, m: t["cv.add"].map([1, 2]),
    "starmap": lambda t, m: t["cv.add"].starmap([(1, 2), (3, 4)]),
    "chunks": lambda t, m: t["cv.add"].chunks([(1, 2), (3, 4), (5, 6)], 2),
    "xmap": lambda t, m: m.xmap(t["cv.add"].s(), [1, 2]),
    "xstarmap": lambda t, m: m.xstarmap(t["cv.add"].s(), [(1, 2)]),
    "chunks-class": lambda t, m: m.chunks(t["cv.add"].s(), [(1, 2)], 1),
}


CHORDS: dict[str, Callable[[Any, Any], Any]] = {
    "chord": lambda t, m: m.chord([t["cv.add"].s(i, i) for i in range(2)], t["cv.xsum"].s()),
    "chord-group-header": lambda t, m: m.chord(
        m.group(t["cv.add"].s(i, i) for i in range(2)), t["cv.xsum"].s()
    ),
    "chord-chain-body": lambda t, m: m.chord(
        m.group(t["cv.add"].s(1, 1)), t["cv.xsum"].s() | t["cv.add"].s(1)
    ),
    "group-or-task": lambda t, m: m.group(t["cv.add"].s(1, 1), t["cv.add"].s(2, 2)) | t["cv.xsum"].s(),
}


def _linked(sig: Any, tasks: Any) -> Any:
    sig.link(tasks["cv.mul"].s(10))
    sig.link_error(tasks["cv.on_error"].s())
    return sig


@pytest.mark.parametrize("form", list(FORMS))
def test_same_dict_as_celery(form: str, app: taskq.Celery, capp: celery.Celery) -> None:
    ours, theirs = both(FORMS[form], app, capp)
    same_json(json.loads(json.dumps(ours)), json.loads(json.dumps(theirs)))
    assert list(ours) == ["task", "args", "kwargs", "options", "subtask_type", "immutable"]


@pytest.mark.parametrize("form", list(CHORDS))
def test_unsent_chord_same_as_celery_but_header_as_group(
    form: str, app: taskq.Celery, capp: celery.Celery
) -> None:
    """An unsent chord: Celery keeps its header as a plain list, taskq as a group signature.

    Both read both (next test); once frozen or sent, Celery's header is a group too
    (test_canvas_vectors). Everything else is the same dict.
    """
    ours, theirs = both(CHORDS[form], app, capp)
    theirs = json.loads(json.dumps(theirs))
    header = theirs["kwargs"]["header"]
    assert isinstance(header, list)
    theirs["kwargs"]["header"] = {"task": "celery.group", "args": [], "kwargs": {"tasks": header},
                                  "options": {}, "subtask_type": "group", "immutable": False}  # fmt: skip
    same_json(json.loads(json.dumps(ours)), theirs)


@pytest.mark.parametrize("form", [*FORMS, *CHORDS])
def test_celery_dict_round_trips(form: str, capp: celery.Celery) -> None:
    """``signature(dict)`` of any Celery signature: the right class, and the same dict back."""
    theirs = json.loads(json.dumps({**FORMS, **CHORDS}[form](capp.tasks, celery)))
    ours = signature(theirs)
    expected = {"chain": chain, "group": group, "chord": chord, None: Signature}[theirs["subtask_type"]]
    assert isinstance(ours, expected)
    same_json(json.loads(json.dumps(ours)), theirs)
    same_json(
        json.loads(json.dumps(celery.signature(json.loads(json.dumps(ours))))), theirs
    )  # Celery reads ours


def test_celery_chord_with_list_header_decodes(app: taskq.Celery, capp: celery.Celery) -> None:
    """Celery keeps ``chord([...], body)``'s header as a plain list; taskq reads it as a group."""
    theirs = json.loads(
        json.dumps(celery.chord([capp.tasks["cv.add"].s(i, i) for i in range(3)], capp.tasks["cv.xsum"].s()))
    )
    assert isinstance(theirs["kwargs"]["header"], list)
    ours = signature(theirs, app=app)
    assert isinstance(ours, chord)
    assert [s.args for s in ours.header.tasks] == [(0, 0), (1, 1), (2, 2)]
    assert ours.body.task == "cv.xsum"
    same_json(json.loads(json.dumps(ours)), theirs)


def test_freeze_same_options_as_celery(app: taskq.Celery, capp: celery.Celery) -> None:
    ours, theirs = both(lambda t, m: t["cv.add"].s(2, 2), app, capp)
    our_result, their_result = ours.freeze(TID), theirs.freeze(TID)
    assert isinstance(our_result, AsyncResult)
    assert our_result.id == their_result.id == TID
    same_json(normalized(json.loads(json.dumps(ours))), normalized(json.loads(json.dumps(theirs))))
    assert ours.id == TID


def test_frozen_group_and_chain_same_as_celery(app: taskq.Celery, capp: celery.Celery) -> None:
    """Frozen, with the same ids: a group's and a chain's dicts and their results' structure."""

    def build(t: Any, m: Any) -> tuple[Any, Any]:
        g = m.group(t["cv.add"].s(i, i).set(task_id=f"{TID[:-2]}1{i}") for i in range(2))
        c = m.chain(*(t["cv.add"].s(i).set(task_id=f"{TID[:-2]}2{i}") for i in range(3)))
        return g, c

    (og, oc), (cg, cc) = both(build, app, capp)
    ogr, cgr = og.freeze(), cg.freeze()
    ocr, ccr = oc.freeze(), cc.freeze()
    same_json(normalized(json.loads(json.dumps([og, oc]))), normalized(json.loads(json.dumps([cg, cc]))))
    assert isinstance(ogr, GroupResult)
    assert [r.id for r in ogr.results] == [r.id for r in cgr.results]
    assert ocr.id == ccr.id == f"{TID[:-2]}22"
    assert [ocr.parent.id, ocr.parent.parent.id] == [ccr.parent.id, ccr.parent.parent.id]


def test_frozen_chord_same_as_celery_in_a_chain(app: taskq.Celery, capp: celery.Celery) -> None:
    """``task | group | task``: the chord step frozen as Celery freezes it, result parents too.

    Celery's chain result is the body's; its parent is the header's GroupResult, whose parent
    is the first task's result.
    """

    def build(t: Any, m: Any) -> Any:
        return m.chain(
            t["cv.add"].s(1, 1).set(task_id=f"{TID[:-2]}30"),
            m.group(
                t["cv.add"].s(10).set(task_id=f"{TID[:-2]}31"), t["cv.add"].s(20).set(task_id=f"{TID[:-2]}32")
            ),
            t["cv.xsum"].s().set(task_id=f"{TID[:-2]}33"),
        )

    ours, theirs = both(build, app, capp)
    our_result, their_result = ours.freeze(), theirs.freeze()
    assert our_result.id == their_result.id == f"{TID[:-2]}33"
    assert type(our_result.parent).__name__ == type(their_result.parent).__name__ == "GroupResult"
    assert [r.id for r in our_result.parent.results] == [f"{TID[:-2]}31", f"{TID[:-2]}32"]
    assert our_result.parent.parent.id == their_result.parent.parent.id == f"{TID[:-2]}30"


# -- behaviour ------------------------------------------------------------------------------


def test_partial_application_prepends_call_arguments(app: taskq.Celery) -> None:
    add = app.tasks["cv.add"]
    partial = add.s(2)
    with published() as sent:
        partial.delay(3)
        add.s(y=5).apply_async((1,))
        add.si(2, 2).delay(99)  # immutable: the call's arguments are ignored
    assert [m["body"][0] for m in sent] == [[3, 2], [1], [2, 2]]
    assert [m["body"][1] for m in sent] == [{}, {"y": 5}, {}]
    assert partial.args == (2,), "sending a partial does not change it"


def test_set_options_reach_the_message(app: taskq.Celery) -> None:
    with published() as sent:
        app.tasks["cv.add"].s(2, 2).set(task_id=TID, priority=7, countdown=30).apply_async()
    (message,) = sent
    assert message["headers"]["id"] == TID
    assert message["headers"]["eta"] is not None


def test_clone_is_independent(app: taskq.Celery) -> None:
    original = app.tasks["cv.add"].s(2)
    copy = original.clone()
    copy.set(queue="elsewhere")
    copy.link(app.tasks["cv.mul"].s(2))
    assert original.options == {}
    assert copy.options["queue"] == "elsewhere"
    assert original.clone(args=(5,)).args == (5, 2)


def test_freeze_fixes_the_id_used_when_sent(app: taskq.Celery) -> None:
    sig = app.tasks["cv.add"].s(2, 2)
    frozen = sig.freeze()
    with published() as sent:
        result = sig.delay()
    assert result.id == frozen.id == sent[0]["headers"]["id"]
    assert sig.freeze().id == frozen.id, "freezing again keeps the id"


def test_link_and_link_error_return_the_callback_on_error_the_signature(app: taskq.Celery) -> None:
    sig = app.tasks["cv.add"].s(1, 1)
    callback, errback = app.tasks["cv.mul"].s(2), app.tasks["cv.on_error"].s()
    assert sig.link(callback) is callback
    assert sig.link_error(errback) is errback
    chained = app.tasks["cv.add"].s(1, 1).on_error(errback)
    assert chained.task == "cv.add", "on_error returns the signature itself, for chaining"
    assert chained.options["link_error"] == [errback]
    with published() as sent:
        sig.delay()
    embed = sent[0]["body"][2]
    assert embed["callbacks"] == json.loads(json.dumps([callback]))
    assert embed["errbacks"] == json.loads(json.dumps([errback]))


def test_or_operator_builds_celerys_kinds(app: taskq.Celery) -> None:
    add, xsum = app.tasks["cv.add"], app.tasks["cv.xsum"]
    assert isinstance(add.s(1, 1) | add.s(2), chain)
    flat = add.s(1, 1) | (add.s(2) | add.s(3))
    assert isinstance(flat, chain) and len(flat.tasks) == 3
    assert isinstance(group(add.s(1, 1), add.s(2, 2)) | xsum.s(), chord)
    assert isinstance(chain(add.s(1, 1)) | add.s(2), chain)


def test_apply_and_call_run_here(app: taskq.Celery) -> None:
    add = app.tasks["cv.add"]
    result = add.s(2).apply((3,))
    assert isinstance(result, EagerResult)
    assert result.get() == 5
    assert add.s(2)(3) == 5  # calling a signature calls the function
    assert (add.s(1, 1) | add.s(2)).apply().get() == 4
    assert group(add.s(1, 1), add.s(2, 2)).apply().get() == [2, 4]
    assert chord([add.s(1, 1), add.s(2, 2)], app.tasks["cv.xsum"].s()).apply().get() == 6


def test_calling_a_chain_or_group_sends_it(app: taskq.Celery) -> None:
    """Celery's ``chain(...)()``, ``group(...)()`` and ``(group | task)()`` send the workflow."""
    add, xsum = app.tasks["cv.add"], app.tasks["cv.xsum"]
    with published() as sent:
        chain(add.s(4, 4), add.s(8))()
    assert [m["task"] for m in sent] == ["cv.add"]
    assert sent[0]["body"][0] == [4, 4]
    with published() as sent:
        result = group(add.s(i, i) for i in range(3))()
    assert isinstance(result, GroupResult)
    assert [m["headers"]["group"] for m in sent] == [result.id] * 3
    with published() as sent:
        (group(add.s(i, i) for i in range(2)) | xsum.s())()
    assert [m["body"][2]["chord"]["task"] for m in sent] == ["cv.xsum"] * 2


def test_map_starmap_chunks_kinds(app: taskq.Celery) -> None:
    add = app.tasks["cv.add"]
    assert isinstance(add.map([1, 2]), xmap)
    assert isinstance(add.starmap([(1, 2)]), xstarmap)
    parts = add.chunks(zip(range(5), range(5), strict=True), 2)
    assert isinstance(parts, chunks)
    assert isinstance(parts.group(), group)
    assert [len(p.kwargs["it"]) for p in parts.group().tasks] == [2, 2, 1]
    with published() as sent:
        add.starmap([(1, 2), (3, 4)]).delay()
    assert [m["task"] for m in sent] == ["celery.starmap"], "one message for the whole map"


def test_group_directly_in_a_chord_header_is_refused(app: taskq.Celery) -> None:
    add, tsum = app.tasks["cv.add"], app.tasks["cv.tsum"]
    with published() as sent, pytest.raises(ChordError, match="group nested directly"):
        chord([group(add.s(1, 1), add.s(2, 2)), add.s(3, 3)], tsum.s()).apply_async()
    assert [m["task"] for m in sent if m["task"] != "cv.add"] == []


def test_rpc_backend_refuses_chords() -> None:
    app = make_app("memory://", "rpc://")
    try:
        add, xsum = app.tasks["cv.add"], app.tasks["cv.xsum"]
        with published() as sent, pytest.raises(NotImplementedError):
            chord([add.s(1, 1), add.s(2, 2)], xsum.s()).apply_async()
        assert sent == [], "refused before anything is sent"
    finally:
        app.close()


def test_signature_from_name_and_maybe_signature(app: taskq.Celery) -> None:
    sig = signature("cv.add", args=(2, 2), app=app)
    assert sig.task == "cv.add" and sig.args == (2, 2)
    assert taskq.maybe_signature(None) is None
    assert taskq.maybe_signature(dict(sig), app=app) == sig
    assert signature(sig) == sig and signature(sig) is not sig


def test_chain_task_id_is_the_last_steps(app: taskq.Celery) -> None:
    """Celery: ``chain.apply_async(task_id=X)`` names the chain's result, i.e. its last step."""
    add = app.tasks["cv.add"]
    with published() as sent:
        result = chain(add.s(1, 1), add.s(2), add.s(3)).apply_async(task_id=TID)
    assert result.id == TID
    (first,) = sent
    assert first["headers"]["id"] != TID
    assert first["body"][2]["chain"][0]["options"]["task_id"] == TID  # reversed: last step first


def test_app_signature_and_group_result(app: taskq.Celery) -> None:
    """Celery's ``app.signature(name, ...)`` and ``app.GroupResult`` (with ``.restore``)."""
    sig = app.signature("cv.add", args=(2, 2), countdown=10)
    assert isinstance(sig, Signature) and sig.app is app
    assert json.loads(json.dumps(sig)) == {"task": "cv.add", "args": [2, 2], "kwargs": {}, "options": {"countdown": 10},
                                           "subtask_type": None, "immutable": False}  # fmt: skip
    result = app.GroupResult("gid-1", [app.AsyncResult("a"), app.AsyncResult("b")])
    assert isinstance(result, GroupResult) and result.app is app
    result.save()
    assert app.GroupResult.restore("gid-1") == result


def test_invert_sends_and_waits(app: taskq.Celery) -> None:
    """``~sig`` is ``sig.apply_async().get()`` (the canvas guide's ``~xsum.map(...)``)."""
    app.conf.task_always_eager = True
    try:
        assert ~app.tasks["cv.xsum"].map([[1, 2], [3, 4]]) == [3, 7]
        assert ~app.tasks["cv.add"].s(2, 2) == 4
    finally:
        app.conf.task_always_eager = False


def test_group_skew_same_as_celery(app: taskq.Celery, capp: celery.Celery) -> None:
    ours, theirs = both(
        lambda t, m: m.group(t["cv.add"].s(i, i) for i in range(4)).skew(start=1, stop=2), app, capp
    )
    same_json(json.loads(json.dumps(ours)), json.loads(json.dumps(theirs)))
    assert [t["options"]["countdown"] for t in ours["kwargs"]["tasks"]] == [1.0, 2.0, 2.0, 2.0]
