"""Celery 5.7's captured canvas messages (tests/data/vectors/messages) against taskq.

- Every signature dict in them (``embed.callbacks``/``errbacks``/``chain``/``chord``) decodes
  into the taskq class its ``subtask_type`` names and re-encodes to the same JSON, key order
  included.
- The client calls each vector records, made with taskq (same fixed task ids), publish the
  same messages: headers, args and embed, volatile values aside (``reply_to``, ``origin``,
  and uuids the capture did not fix, which must still be consistent with each other).
- What a Celery worker published while running canvases (next chain step, chord body, link
  callback, old-style errback), a taskq worker publishes too.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskq import Celery, chain, chord, group, signature
from taskq.canvas import Signature

from .support import Running, normalized, published, same_json, wait_until

VECTORS = Path(__file__).resolve().parents[1] / "data" / "vectors" / "messages"
CANVAS = ["canvas_chain", "canvas_chain_with_group", "canvas_chord", "canvas_group",
          "canvas_link_link_error", "canvas_link_multiple_immutable"]  # fmt: skip
VOLATILE_HEADERS = ("origin",)
C = "00000000-0000-4000-8000-0000000000"  # the fixed ids of the client vectors
W = "00000000-0000-4000-8a00-0000000000"  # ... and of the worker ones


def vector(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / f"{name}.json").read_text())


def embedded_signatures(body: list[Any]) -> Iterator[dict[str, Any]]:
    embed = body[2]
    for key in ("callbacks", "errbacks", "chain"):
        yield from embed.get(key) or ()
    if embed.get("chord"):
        yield embed["chord"]


ALL_SIGNATURES = [
    pytest.param(sig, id=f"{name}-{n}-{sig['task']}")
    for name in [*CANVAS, "worker_published_messages"]
    for n, sig in enumerate(
        s for m in vector(name)["messages"] for s in embedded_signatures(m["decoded_body"])
    )
]
KINDS = {None: "Signature", "chain": "chain", "group": "group", "chord": "chord"}


@pytest.mark.parametrize("data", ALL_SIGNATURES)
def test_vector_signature_decodes_and_reencodes(data: dict[str, Any]) -> None:
    sig = signature(json.loads(json.dumps(data)))
    assert type(sig).__name__ == KINDS[data["subtask_type"]]
    assert sig.task == data["task"]
    same_json(json.loads(json.dumps(sig)), data)
    if isinstance(sig, chord):  # the parts decode too, and re-encode unchanged
        same_json(json.loads(json.dumps(sig.header)), data["kwargs"]["header"])
        same_json(json.loads(json.dumps(sig.body)), data["kwargs"]["body"])
        assert [type(t) for t in sig.header.tasks] == [Signature, Signature]


# -- the client side: the same calls publish the same messages -------------------------------


def make_specapp(backend: str = "memory://") -> Celery:
    """The vectors' app: ``specapp`` tasks (on a queue of this test's: nothing is left over)."""
    app = Celery("specapp", broker="memory://", backend=backend, set_as_current=False)
    app.conf.task_default_queue = f"vectors-{uuid.uuid4().hex[:8]}"

    @app.task(name="specapp.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="specapp.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="specapp.xsum")
    def xsum(numbers: list[int]) -> int:
        return sum(numbers)

    @app.task(name="specapp.on_error")
    def on_error(request: Any, exc: BaseException, traceback: Any) -> None:
        pass

    @app.task(name="specapp.on_error_old")
    def on_error_old(task_id: str) -> str:
        return task_id

    @app.task(name="specapp.fail")
    def fail(*args: Any) -> None:
        raise ValueError("boom")

    return app


@pytest.fixture
def specapp() -> Iterator[Celery]:
    app = make_specapp()
    yield app
    app.close()


def calls(app: Celery, case: str) -> None:
    """The ``python_calls`` of each vector, made with taskq."""
    add, mul, xsum, on_error = (app.tasks[f"specapp.{n}"] for n in ("add", "mul", "xsum", "on_error"))
    if case == "canvas_chain":
        chain(
            add.s(1, 2).set(task_id=C + "a1"), add.s(3).set(task_id=C + "a2"), add.s(4).set(task_id=C + "a3")
        ).apply_async()
    elif case == "canvas_chain_with_group":
        (add.s(1, 1) | group(add.s(10), add.s(20)) | xsum.s()).apply_async()
    elif case == "canvas_chord":
        chord([add.s(i, i).set(task_id=f"{C}c{i}") for i in range(3)], xsum.s().set(task_id=C + "cb"),
              task_id=C + "cc").apply_async()  # fmt: skip
    elif case == "canvas_group":
        group(add.s(i, i).set(task_id=f"{C}b{i}") for i in range(3)).apply_async(task_id=C + "bb")
    elif case == "canvas_link_link_error":
        add.apply_async(
            (1, 2), task_id="00000000-0000-4000-8000-000000000009", link=mul.s(10), link_error=on_error.s()
        )
    elif case == "canvas_link_multiple_immutable":
        add.apply_async((5, 5), task_id="00000000-0000-4000-8000-000000000016",
                        link=[mul.si(2, 2).set(queue="q3", countdown=5), xsum.s()])  # fmt: skip


def comparable(message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """Headers (volatile ones out) and body, volatile values named (shared ``names``)."""
    headers = {k: v for k, v in message["headers"].items() if k not in VOLATILE_HEADERS}
    return normalized({"headers": headers, "body": message["body"]}, names)


@pytest.mark.parametrize("case", CANVAS)
def test_same_calls_publish_the_vectors_messages(case: str, specapp: Celery) -> None:
    expected = vector(case)["messages"]
    with published() as sent:
        calls(specapp, case)
    assert len(sent) == len(expected)
    ours_names: dict[str, str] = {}
    theirs_names: dict[str, str] = {}
    for ours, theirs in zip(sent, expected, strict=True):
        mine = comparable(ours, ours_names)
        captured = comparable(
            {"headers": theirs["envelope"]["headers"], "body": theirs["decoded_body"]}, theirs_names
        )
        same_json(mine["body"][2], captured["body"][2])  # the embed: callbacks, errbacks, chain, chord
        same_json(mine, captured)


@pytest.mark.redis
def test_chord_size_recorded_before_sending(redis_url: str, redis_client: Any) -> None:
    """canvas_chord's ``other_redis_keys``: ``.s`` = 3 with the chord TTL (1 day), on Redis."""
    app = make_specapp(redis_url)
    try:
        with published() as sent:
            calls(app, "canvas_chord")
        assert len(sent) == 3
        expected = vector("canvas_chord")["other_redis_keys"]
        for key, facts in expected.items():
            assert redis_client.type(key).decode() == facts["type"]
            assert redis_client.get(key).decode() == facts["value"]
            assert facts["ttl"] - 5 <= redis_client.ttl(key) <= facts["ttl"]
    finally:
        app.close()


# -- the worker side: what a worker publishes while running canvases ------------------------


def worker_vector(what: str) -> dict[str, Any]:
    (found,) = [m for m in vector("worker_published_messages")["messages"] if m["what"].startswith(what)]
    return found


@pytest.fixture
def running_specapp(specapp: Celery) -> Iterator[Celery]:
    """A one-thread worker: header tasks finish in the order sent, as in the capture."""
    with Running(specapp, concurrency=1):
        yield specapp


def published_by_worker(sent: list[dict[str, Any]], task: str, count: int) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]]:
        return [m for m in sent if m["task"] == task]

    wait_until(lambda: len(found()) >= count, 20, f"{count} message(s) of {task}")
    time.sleep(0.1)  # nothing more comes
    return found()


def check_like(ours: dict[str, Any], what: str) -> None:
    theirs = worker_vector(what)
    same_json(
        comparable(ours, {}), comparable({"headers": theirs["headers"], "body": theirs["decoded_body"]}, {})
    )


def test_worker_sends_next_chain_steps(running_specapp: Celery) -> None:
    add = running_specapp.tasks["specapp.add"]
    with published() as sent:
        result = chain(add.s(1, 2).set(task_id=W + "07"), add.s(3).set(task_id=W + "08"),
                       add.s(4).set(task_id=W + "09")).apply_async()  # fmt: skip
        assert result.get(timeout=20) == 10
    step2, step3 = published_by_worker(sent, "specapp.add", 3)[1:]
    check_like(step2, "chain step 2")
    check_like(step3, "chain step 3")
    assert step3["body"][2]["chain"] == [], "the last step's embed.chain is an empty list, not null"


def test_worker_sends_chord_body(running_specapp: Celery) -> None:
    add, xsum = running_specapp.tasks["specapp.add"], running_specapp.tasks["specapp.xsum"]
    with published() as sent:
        result = chord([add.s(i, i).set(task_id=f"{W}3{i}") for i in (1, 2, 3)], xsum.s().set(task_id=W + "34"),
                       task_id=W + "30").apply_async()  # fmt: skip
        assert result.get(timeout=20) == 12
    (body,) = published_by_worker(sent, "specapp.xsum", 1)
    check_like(body, "chord body")


def test_worker_sends_link_callback(running_specapp: Celery) -> None:
    add, mul = running_specapp.tasks["specapp.add"], running_specapp.tasks["specapp.mul"]
    with published() as sent:
        add.apply_async((1, 2), task_id=W + "42", link=mul.s(10).set(task_id=W + "43"))
        (callback,) = published_by_worker(sent, "specapp.mul", 1)
    check_like(callback, "link callback")
    assert running_specapp.AsyncResult(W + "43").get(timeout=20) == 30


def test_worker_sends_old_style_errback_as_a_group_of_one(running_specapp: Celery) -> None:
    """Celery 5.7 sends old-style errbacks (task id only) together, as one group."""
    fail, on_error_old = running_specapp.tasks["specapp.fail"], running_specapp.tasks["specapp.on_error_old"]
    with published() as sent:
        fail.apply_async((1,), task_id=W + "41", link_error=on_error_old.s())
        (errback,) = published_by_worker(sent, "specapp.on_error_old", 1)
    check_like(errback, "old-style errback")


def test_worker_sends_several_callbacks_as_one_group(running_specapp: Celery) -> None:
    """Celery 5.7's worker sends more than one ``link`` callback together, as one group."""
    add, mul = running_specapp.tasks["specapp.add"], running_specapp.tasks["specapp.mul"]
    with published() as sent:
        add.apply_async((1, 2), link=[mul.s(10), mul.s(100)])
        callbacks = published_by_worker(sent, "specapp.mul", 2)
    groups = {m["headers"]["group"] for m in callbacks}
    assert len(groups) == 1 and None not in groups, [m["headers"] for m in callbacks]
    assert [m["headers"]["group_index"] for m in callbacks] == [0, 1]
    assert [m["body"][0] for m in callbacks] == [[3, 10], [3, 100]]
