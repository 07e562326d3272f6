"""Older Celery on the wire: what Celery 5.3-5.6 (and protocol 1) senders and stores look like.

Why: a taskq fleet meets the Celery versions already deployed. ``celery-wire.md`` section 12
lists what Celery 5.7 changed; taskq must accept both forms. No old Celery is installed: each
message or key is written here exactly as the spec says the old version writes it, and a real
``taskq worker`` (Redis and RabbitMQ brokers, Redis results) runs it.

| case | old form | checked |
|---|---|---|
| ``p2_56_beat`` | beat message without ``celery_beat_task`` (<= 5.6) | runs; the task sees no header |
| ``p2_57_beat`` | the 5.7 beat message (contrast) | runs; ``request.celery_beat_task`` is True |
| ``p2_56_delay`` | plain protocol 2, as 5.3-5.7 all write it | result meta in Celery's key order |
| ``p2_minimal`` | protocol 2 without the headers added during 5.x (``ignore_result``, ``replaced_task_nesting``, ``stamped_headers``, ``stamps``), embed ``{}`` | runs |
| ``p2_56_chain`` | ``embed.chain`` with a frozen next step | next step's result and ``parent_id`` |
| ``p1_vector`` | ``messages/protocol1_message.json`` (link callback) | 5, and the callback's 50 |
| ``p1_link_chain`` | protocol-1 chain: nested ``link`` options | the last step's result |
| ``p1_errback`` | protocol 1 ``errbacks`` (old style: gets the task id) | FAILURE stored, errback ran |
| ``p1_naive_eta`` | protocol 1 ``eta`` naive + ``utc: true`` | not run before the ETA |
| ``p1_expired`` | protocol 1 ``expires`` in the past | REVOKED ``expired`` |
| ``p1_group`` | protocol 1 ``taskset`` / ``group_index`` | ``group_id`` in the meta |
| ``hybrid`` | protocol-2 headers, protocol-1 body dict | runs |

Besides: chords counted the 5.3-5.6 way (ZADD/ZCOUNT, no ``.d``/``.c``, ``.s`` SETEX+PUBLISH)
completed by a taskq worker and vice versa; mingle ``hello`` with ``revoked`` as a dict (<= 5.6);
result metas in older forms (no compression marker, naive ``date_done``, missing keys) and
5.7's compressed form read by ``AsyncResult``; events with an int ``utcoffset`` (<= 5.6).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from interop.test_matrix_canvas import WAIT, Fleet, fleet_urls, unique, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

VECTORS = Path(__file__).resolve().parents[1] / "data" / "vectors"
UTC = timezone.utc


def load_vector(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text())


@pytest.fixture(scope="module", params=["redis", pytest.param("amqp", marks=pytest.mark.amqp)])
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A taskq worker alone (queue ``qt``); results in Redis on both brokers."""
    import redis

    broker, backend, records = fleet_urls(request, request.param)
    the_fleet = Fleet(
        request.param, broker, backend, records, tmp_path_factory.mktemp(f"old-{request.param}")
    )
    the_fleet.records = redis.Redis.from_url(records)
    with ExitStack() as stack:
        stack.callback(the_fleet.records.close)
        stack.callback(the_fleet.stop)
        try:
            the_fleet.start("taskq")
            yield the_fleet
        except BaseException:
            print(the_fleet.logs())
            raise


@pytest.fixture
def client(fleet: Fleet) -> Iterator[Any]:
    """A taskq app reading results from the fleet's backend."""
    import taskq

    app = taskq.Celery("old", broker=fleet.broker, backend=fleet.backend, set_as_current=False)
    yield app
    app.close()


def publish(fleet: Fleet, headers: dict[str, Any], body: Any, task_id: str, **properties: Any) -> None:
    """Publish serialized JSON with kombu to the taskq worker's queue, as any Celery would."""
    from kombu import Connection

    payload = json.dumps(body).encode()
    with Connection(fleet.broker) as connection:
        connection.Producer().publish(
            payload, exchange="", routing_key=fleet.qt, content_type="application/json",
            content_encoding="utf-8", headers=headers, correlation_id=task_id,
            reply_to=str(uuid.uuid4()), delivery_mode=2, priority=0, retry=True,
            retry_policy={"max_retries": 3}, **properties,
        )  # fmt: skip


def sig(name: str, args: list[Any], kwargs: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    return {"task": name, "args": args, "kwargs": kwargs or {}, "options": options,
            "subtask_type": None, "immutable": False}  # fmt: skip


EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def p2_headers(
    name: str, task_id: str, args: list[Any], kwargs: dict[str, Any], **over: Any
) -> dict[str, Any]:
    """Protocol-2 headers as Celery 5.3-5.6 write them (5.7 writes the same, section 2.1)."""
    return {
        "lang": "py", "task": name, "id": task_id, "shadow": None, "eta": None, "expires": None,
        "group": None, "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": task_id,
        "parent_id": None, "argsrepr": repr(tuple(args)), "kwargsrepr": repr(kwargs), "origin": "gen1@old",
        "ignore_result": False, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {}, **over,
    }  # fmt: skip


def p1_body(name: str, task_id: str, args: list[Any], kwargs: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:  # fmt: skip
    """A protocol-1 body, keys in the order of ``messages/protocol1_message.json``."""
    return {
        "task": name, "id": task_id, "args": args, "kwargs": kwargs or {}, "group": None,
        "group_index": None, "retries": 0, "eta": None, "expires": None, "utc": True, "callbacks": None,
        "errbacks": None, "timelimit": [None, None], "taskset": None, "chord": None, **over,
    }  # fmt: skip


def result(client: Any, task_id: str, fleet: Fleet, propagate: bool = True) -> Any:
    try:
        return client.AsyncResult(task_id).get(timeout=WAIT, propagate=propagate)
    except Exception as exc:
        if type(exc).__name__ == "TimeoutError":
            raise AssertionError(f"no result for {task_id}\n{fleet.logs()}") from exc
        raise


def meta(fleet: Fleet, task_id: str) -> dict[str, Any]:
    raw = wait_until(lambda: fleet.records.get(f"celery-task-meta-{task_id}"), f"meta of {task_id}", fleet)
    return dict(json.loads(raw))


# --------------------------------------------------------------------------------------------
# Messages in older forms, run by a real taskq worker
# --------------------------------------------------------------------------------------------


def beat_message(with_header: bool) -> tuple[dict[str, Any], list[Any], str]:
    """The captured beat message, fresh id and expiry; 5.3-5.6 did not add the beat header."""
    envelope = json.loads(load_vector("messages/beat_sent_messages.json")["messages"][0]["raw"])
    headers, body = dict(envelope["headers"]), json.loads(base64.b64decode(envelope["body"]))
    task_id = str(uuid.uuid4())
    headers.update(task="specapp.beat_probe", id=task_id, root_id=task_id)
    headers["expires"] = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    if not with_header:
        del headers["celery_beat_task"]
    else:
        assert headers["celery_beat_task"] is True
    return headers, body, task_id


def case_p2_56_beat(fleet: Fleet, client: Any) -> None:
    headers, body, task_id = beat_message(with_header=False)
    publish(fleet, headers, body, task_id)
    assert result(client, task_id, fleet) == [[1, 2], None, "taskq"]


def case_p2_57_beat(fleet: Fleet, client: Any) -> None:
    headers, body, task_id = beat_message(with_header=True)
    publish(fleet, headers, body, task_id)
    assert result(client, task_id, fleet) == [[1, 2], True, "taskq"]


def case_p2_56_delay(fleet: Fleet, client: Any) -> None:
    task_id = str(uuid.uuid4())
    publish(fleet, p2_headers("specapp.add", task_id, [2, 3], {}), [[2, 3], {}, EMBED], task_id)
    assert result(client, task_id, fleet) == 5
    success = load_vector("results/redis_result_metas_plain.json")["metas"]["success"]["decoded"]
    assert list(meta(fleet, task_id)) == list(success)


def case_p2_minimal(fleet: Fleet, client: Any) -> None:
    task_id = str(uuid.uuid4())
    headers = p2_headers("specapp.greet", task_id, ["bob"], {"greeting": "hi", "punct": "?"})
    for key in ("ignore_result", "replaced_task_nesting", "stamped_headers", "stamps"):
        del headers[key]
    publish(fleet, headers, [["bob"], {"greeting": "hi", "punct": "?"}, {}], task_id)
    assert result(client, task_id, fleet) == "hi bob?"


def case_p2_56_chain(fleet: Fleet, client: Any) -> None:
    task_id, next_id = str(uuid.uuid4()), str(uuid.uuid4())
    step = sig("specapp.mul", [10], task_id=next_id, root_id=task_id, reply_to="x")
    publish(
        fleet,
        p2_headers("specapp.add", task_id, [2, 3], {}),
        [[2, 3], {}, {**EMBED, "chain": [step]}],
        task_id,
    )
    assert result(client, next_id, fleet) == 50
    assert meta(fleet, next_id)["parent_id"] == task_id


def case_p1_vector(fleet: Fleet, client: Any) -> None:
    message = load_vector("messages/protocol1_message.json")["messages"][0]
    body = dict(message["decoded_body"])
    task_id = str(uuid.uuid4())
    body.update(id=task_id, eta=datetime.now(UTC).isoformat())  # the capture's ETA, moved to now
    publish(fleet, {}, body, task_id)
    assert result(client, task_id, fleet) == 5
    children = wait_until(lambda: meta(fleet, task_id)["children"], "the callback among the children", fleet)
    [[[callback_id, _], _]] = children
    assert result(client, callback_id, fleet) == 50


def case_p1_link_chain(fleet: Fleet, client: Any) -> None:
    task_id, second, third = (str(uuid.uuid4()) for _ in range(3))
    last = sig("specapp.mul", [2], task_id=third)
    middle = sig("specapp.mul", [10], task_id=second, link=[last])
    publish(fleet, {}, p1_body("specapp.add", task_id, [2, 3], callbacks=[middle]), task_id)
    assert result(client, third, fleet) == 100
    assert result(client, second, fleet) == 50


def case_p1_errback(fleet: Fleet, client: Any) -> None:
    task_id, key = str(uuid.uuid4()), unique("p1-errback")
    errback = sig("mx.old_errback", [], {"key": key})
    publish(fleet, {}, p1_body("specapp.fail", task_id, ["boom"], errbacks=[errback]), task_id)
    with pytest.raises(ValueError, match="boom"):
        result(client, task_id, fleet)
    recorded = fleet.records.blpop(key, timeout=WAIT)
    assert recorded is not None, f"the protocol-1 errback did not run\n{fleet.logs()}"
    assert json.loads(recorded[1]) == [task_id, "taskq"]


def case_p1_naive_eta(fleet: Fleet, client: Any) -> None:
    task_id = str(uuid.uuid4())
    eta = datetime.now(UTC) + timedelta(seconds=1.5)
    naive = eta.replace(tzinfo=None).isoformat()  # utc: true, no offset: older senders' form
    publish(fleet, {}, p1_body("specapp.add", task_id, [1, 1], eta=naive), task_id)
    assert result(client, task_id, fleet) == 2
    done = client.AsyncResult(task_id).date_done
    assert done is not None and done >= eta, f"ran at {done}, before its ETA {eta}"


def case_p1_expired(fleet: Fleet, client: Any) -> None:
    task_id = str(uuid.uuid4())
    expires = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    publish(fleet, {}, p1_body("specapp.add", task_id, [1, 1], expires=expires), task_id)
    stored = meta(fleet, task_id)
    assert stored["status"] == "REVOKED"
    assert stored["result"]["exc_type"] == "TaskRevokedError" and stored["result"]["exc_message"] == [
        "expired"
    ]


def case_p1_group(fleet: Fleet, client: Any) -> None:
    task_id, gid = str(uuid.uuid4()), str(uuid.uuid4())
    publish(
        fleet, {}, p1_body("specapp.add", task_id, [3, 4], group=gid, taskset=gid, group_index=0), task_id
    )
    assert result(client, task_id, fleet) == 7
    assert meta(fleet, task_id)["group_id"] == gid


def case_hybrid(fleet: Fleet, client: Any) -> None:
    task_id = str(uuid.uuid4())
    headers = {"lang": "py", "task": "specapp.add", "id": task_id}
    publish(fleet, headers, {"args": [20, 22], "kwargs": {}}, task_id)
    assert result(client, task_id, fleet) == 42


CASES: dict[str, Callable[[Fleet, Any], None]] = {
    name.removeprefix("case_"): fn for name, fn in globals().items() if name.startswith("case_")
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_old_message_runs(fleet: Fleet, client: Any, case: str) -> None:
    """The message, as an older Celery published it, runs on a taskq worker."""
    CASES[case](fleet, client)


# --------------------------------------------------------------------------------------------
# Chords counted the Celery 5.3-5.6 way (Redis result backend)
# --------------------------------------------------------------------------------------------


class OldChord:
    """One chord whose size and some parts are written the way Celery 5.3-5.6 write them."""

    def __init__(self, fleet: Fleet, size: int) -> None:
        self.fleet, self.client = fleet, fleet.records
        self.gid, self.body_id = str(uuid.uuid4()), str(uuid.uuid4())
        self.ids = [str(uuid.uuid4()) for _ in range(size)]
        self.key = f"celery-taskset-meta-{self.gid}"
        self.body = sig("specapp.xsum", [], task_id=self.body_id, group_id=self.gid)
        # set_chord_size in <= 5.6: SETEX and PUBLISH on .s (5.7: DEL .c, SET .s EX)
        pipe = self.client.pipeline()
        pipe.execute_command("SETEX", self.key + ".s", 86400, str(size)).publish(self.key + ".s", str(size))
        pipe.execute()

    def old_peer_part(self, index: int, value: Any) -> bool:
        """What a 5.3-5.6 worker does when a header task ends; True when it would send the body."""
        part = json.dumps([1, self.ids[index], "SUCCESS", value])
        pipe = self.client.pipeline()
        pipe.zadd(self.key + ".j", {part: index}).zcount(self.key + ".j", "-inf", "+inf")
        pipe.get(self.key + ".t").get(self.key + ".s")
        for suffix in (".j", ".t", ".s"):
            pipe.expire(self.key + suffix, 86400)
        _, count, diff, size, *_ = pipe.execute()
        return bool(size) and count == int(size) + int(diff or 0)

    def old_peer_send_body(self, parent_id: str) -> list[Any]:
        """The old claimer: read .j in score order, send the body, DEL .j .t .s (no .d/.c)."""
        parts = [json.loads(raw) for raw in self.client.zrange(self.key + ".j", 0, -1)]
        values = [value for _, _, _, value in parts]
        headers = p2_headers("specapp.xsum", self.body_id, [values], {}, group=self.gid, parent_id=parent_id)
        publish(self.fleet, headers, [[values], {}, EMBED], self.body_id)
        self.client.delete(self.key + ".j", self.key + ".t", self.key + ".s")
        return parts

    def send_member(self, index: int, value: int) -> None:
        """A header task message for the taskq worker (as any 5.x client sends it)."""
        task_id = self.ids[index]
        headers = p2_headers("specapp.add", task_id, [value, 0], {}, group=self.gid, group_index=index)
        publish(self.fleet, headers, [[value, 0], {}, {**EMBED, "chord": self.body}], task_id)


def test_old_peers_count_then_taskq_completes(fleet: Fleet, client: Any) -> None:
    """Two parts counted by 5.6 peers, the last by a taskq worker: it sends the body once."""
    chord = OldChord(fleet, 3)
    assert not chord.old_peer_part(0, 1) and not chord.old_peer_part(1, 10)
    assert fleet.records.exists(chord.key + ".d") == 0, "old peers write no .d"
    chord.send_member(2, 100)
    assert result(client, chord.body_id, fleet) == 111
    assert meta(fleet, chord.body_id)["parent_id"] == chord.ids[2]
    wait_until(lambda: fleet.records.get(chord.key + ".c") == b"done", "the done mark", fleet)
    assert fleet.records.exists(chord.key + ".j", chord.key + ".s", chord.key + ".d") == 0


def test_taskq_counts_then_an_old_peer_completes(fleet: Fleet, client: Any) -> None:
    """taskq's parts are what a 5.6 claimer reads; its body runs; late taskq copies change nothing."""
    chord = OldChord(fleet, 3)
    chord.send_member(0, 1)
    chord.send_member(1, 10)
    wait_until(lambda: fleet.records.zcard(chord.key + ".j") == 2, "two parts counted by taskq", fleet)
    assert chord.old_peer_part(2, 100), "the old peer's ZCOUNT reaches the size"
    parts = chord.old_peer_send_body(parent_id=chord.ids[2])
    assert parts == [[1, chord.ids[0], "SUCCESS", 1], [1, chord.ids[1], "SUCCESS", 10], [1, chord.ids[2], "SUCCESS", 100]]  # fmt: skip
    assert result(client, chord.body_id, fleet) == 111
    chord.send_member(1, 10)  # a redelivered copy after the old peer's DEL: no second body
    assert result(client, chord.ids[1], fleet) == 10
    time.sleep(0.3)
    assert fleet.records.exists(chord.key + ".s", chord.key + ".c") == 0
    # an old claimer knows nothing of .d: taskq's dedupe set stays until its TTL (harmless)
    assert 0 < fleet.records.ttl(chord.key + ".d") <= 86400
    assert fleet.records.get(f"celery-task-meta-{chord.body_id}") is not None


# --------------------------------------------------------------------------------------------
# Mingle: hello with revoked as a dict (<= 5.6) or a list (5.7)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["dict-5.6", "list-5.7"])
def test_mingle_hello_revoked_forms(fleet: Fleet, client: Any, form: str) -> None:
    """A starting Celery worker's hello: the taskq worker merges the ids and discards them."""
    import celery

    revoked_id = str(uuid.uuid4())
    revoked: Any = {revoked_id: time.time()} if form == "dict-5.6" else [revoked_id]
    capp = celery.Celery("old", broker=fleet.broker, backend=fleet.backend, set_as_current=False)
    try:
        replies = capp.control.broadcast(
            "hello",
            arguments={"from_node": "celery@old-node", "revoked": revoked},
            reply=True,
            timeout=5,
            limit=1,
        )
    finally:
        capp.close()
    [reply] = replies
    [(node, answer)] = reply.items()
    assert node.startswith("taskq-")
    assert revoked_id in answer["revoked"] and isinstance(answer["clock"], int)
    publish(fleet, p2_headers("specapp.add", revoked_id, [1, 1], {}), [[1, 1], {}, EMBED], revoked_id)
    stored = meta(fleet, revoked_id)
    assert stored["status"] == "REVOKED" and stored["result"]["exc_message"] == ["revoked"]


# --------------------------------------------------------------------------------------------
# Results written in older forms, read by taskq's AsyncResult (no worker needed)
# --------------------------------------------------------------------------------------------

COMPRESSED_MARKER = b"\x00celery-compressed\x00"


def older_metas() -> list[Any]:
    plain = load_vector("results/redis_result_metas_plain.json")["metas"]
    success = plain["success"]["decoded"]
    return [
        pytest.param(plain["success"]["raw"].encode(), "SUCCESS", 5, id="5.6-success-uncompressed"),
        pytest.param(plain["failure"]["raw"].encode(), "FAILURE", ValueError, id="5.6-failure"),
        pytest.param(
            json.dumps({**success, "date_done": "2023-05-01T10:00:00.123456"}).encode(), "SUCCESS", 5,
            id="naive-date-done",
        ),
        pytest.param(
            json.dumps({"status": "SUCCESS", "result": 5, "traceback": None, "task_id": success["task_id"]}).encode(),
            "SUCCESS", 5, id="no-children-no-date-done",
        ),
        pytest.param(
            COMPRESSED_MARKER + b"application/x-gzip\x00" + zlib.compress(plain["success"]["raw"].encode()),
            "SUCCESS", 5, id="5.7-compressed",
        ),
    ]  # fmt: skip


@pytest.mark.parametrize(("raw", "state", "value"), older_metas())
def test_older_result_forms_are_read(redis_url: str, raw: bytes, state: str, value: Any) -> None:
    """A value stored by any Celery 5.x (or 5.7 with result_compression) reads the same."""
    import redis

    import taskq

    task_id = str(uuid.uuid4())
    store = redis.Redis.from_url(redis_url)
    app = taskq.Celery("old", broker="memory://", backend=redis_url, set_as_current=False)
    try:
        decoded = json.loads(
            zlib.decompress(raw.split(b"\x00", 3)[3]) if raw.startswith(COMPRESSED_MARKER) else raw
        )
        store.set(
            f"celery-task-meta-{task_id}", raw.replace(decoded["task_id"].encode(), task_id.encode()), ex=60
        )
        res = app.AsyncResult(task_id)
        assert res.state == state
        if isinstance(value, type):
            with pytest.raises(value):
                res.get(timeout=5)
            assert res.traceback == decoded["traceback"]
        else:
            assert res.get(timeout=5) == value
        done = res.date_done
        if decoded.get("date_done") is None:
            assert done is None
        else:
            assert done == datetime.fromisoformat(decoded["date_done"]).replace(tzinfo=done.tzinfo or UTC)
            assert done.utcoffset() == timedelta(0), "taskq reads a naive date_done as UTC"
        assert [c.id for c in res.children or []] == []
    finally:
        app.close()
        store.delete(f"celery-task-meta-{task_id}")
        store.close()


# --------------------------------------------------------------------------------------------
# Events: utcoffset as an int (<= 5.6) or a float (5.7)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("utcoffset", [0, -1, 5, 0.0, -5.5], ids=["int-0", "int-minus-1", "int-5", "float-0", "float-minus-5.5"])  # fmt: skip
def test_event_utcoffset_int_or_float(utcoffset: float) -> None:
    """taskq's receiver moves the timestamp like Celery's, whichever type the sender used."""
    from celery.events.state import State as CeleryState
    from celery.utils.time import adjust_timestamp as celery_adjust

    import taskq
    from taskq.events_receiver import EventReceiver
    from taskq.events_state import State

    sample = load_vector("events/redis_events.json")["samples_by_type"]["worker-heartbeat"]
    event = dict(sample["event"], utcoffset=utcoffset, timestamp=time.time() + utcoffset * 3600)
    app = taskq.Celery("old", broker="memory://", set_as_current=False)
    try:
        _, received = EventReceiver(app).event_from_message(dict(event))
    finally:
        app.close()
    assert received["timestamp"] == pytest.approx(celery_adjust(event["timestamp"], utcoffset))
    ours, theirs = State(), CeleryState()
    ours.event(dict(received))
    theirs.event(dict(received))
    worker = ours.workers[event["hostname"]]
    assert worker.heartbeats == theirs.workers[event["hostname"]].heartbeats == [received["local_received"]]
