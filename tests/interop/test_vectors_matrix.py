"""Every Celery 5.7 wire vector, decoded by taskq, and what taskq encodes for the same call.

Why: the vectors in ``tests/data/vectors`` (a copy of the spec's, so the suite never reads
outside the repository) are the byte-level ground truth of the Celery wire. Each file must be
read by a taskq decoder, and where taskq sends the same thing, taskq's bytes must match field by
field (ids, times, pids and other volatile values aside: ``vectors/README.md``).

``COVERAGE`` is the matrix: for every file, the tests that decode it and the tests that compare
taskq's encoding with it (here or elsewhere in the suite), or why taskq encodes nothing of the
kind. ``test_every_vector_file_is_covered`` fails when a file appears that nothing decodes, or
when a listed test no longer exists.
"""

from __future__ import annotations

import ast
import base64
import importlib
import inspect
import json
import re
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from kombu.serialization import loads

TESTS = Path(__file__).resolve().parents[1]
VECTORS = TESTS / "data" / "vectors"
UTC = timezone.utc
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ORIGIN_RE = re.compile(r"^gen\d+@.+$")


def load_vector(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text())


def envelope_body(envelope: dict[str, Any], accept: set[str] | None = None) -> Any:
    """A kombu envelope's body as a consumer decodes it (base64, compression, content type)."""
    payload = base64.b64decode(envelope["body"])
    compression = (envelope.get("headers") or {}).get("compression")
    if compression:
        assert compression == "application/x-gzip"
        payload = zlib.decompress(payload)
    return loads(
        payload, envelope["content-type"], envelope["content-encoding"], accept=accept or {"application/json"}
    )


# --------------------------------------------------------------------------------------------
# The matrix
# --------------------------------------------------------------------------------------------

MV = "tests/unit/test_message_vectors.py"
CV = "tests/canvas/test_canvas_vectors.py"
RB = "tests/contract/test_result_backends.py"
CB = "tests/contract/test_chord_backends.py"
EV = "tests/contract/test_events.py"
HERE = "tests/interop/test_vectors_matrix.py"
PARSE_ALL = f"{MV}::test_parse_every_vector_message"
SEND_SAME = f"{MV}::test_taskq_publishes_what_celery_publishes"
CANVAS_SAME = f"{CV}::test_same_calls_publish_the_vectors_messages"


@dataclass(frozen=True)
class Cover:
    """Who decodes a vector file, who compares taskq's encoding with it, or why nothing can."""

    decoded_by: tuple[str, ...]
    encoded_by: tuple[str, ...] = ()
    no_encoder: str = ""


def _send_case(stem: str) -> Cover:
    return Cover((PARSE_ALL,), (f"{SEND_SAME}[{stem}]",))


def _canvas_case(stem: str) -> Cover:
    return Cover(
        (PARSE_ALL, f"{CV}::test_vector_signature_decodes_and_reencodes"), (f"{CANVAS_SAME}[{stem}]",)
    )


COVERAGE: dict[str, Cover] = {
    "README.md": Cover((f"{HERE}::test_readme_indexes_every_file",), no_encoder="documentation"),
    "amqp/events_and_pidbox_on_rabbitmq.json": Cover(
        (f"{HERE}::test_events_decode_like_celerys_state", f"{HERE}::test_pidbox_requests_reach_a_handler"),
        (f"{EV}::test_message_as_the_broker_holds_it", f"{HERE}::test_pidbox_request_as_taskq_sends_it"),
    ),
    "amqp/rabbitmq_declarations.txt": Cover(
        (f"{HERE}::test_rabbitmq_declarations_match",), (f"{HERE}::test_rabbitmq_declarations_match",)
    ),
    "amqp/rpc_backend_result_messages.json": Cover(
        (f"{HERE}::test_rpc_result_messages_decode",), (f"{RB}::TestRPC::test_result_message_matches_celery",)
    ),
    "amqp/task_message_on_rabbitmq.json": Cover(
        (f"{HERE}::test_task_message_on_rabbitmq_decodes",),
        (f"{HERE}::test_task_message_on_rabbitmq_as_taskq_sends_it",),
    ),
    "events/redis_events.json": Cover(
        (
            f"{HERE}::test_events_decode_like_celerys_state",
            f"{EV}::test_receiver_reads_celerys_own_messages_including_batches",
        ),
        (f"{EV}::test_task_life_cycles_as_celery_sends_them", f"{EV}::test_message_as_the_broker_holds_it"),
    ),
    "messages/beat_sent_messages.json": Cover(
        (PARSE_ALL,), (f"{HERE}::test_beat_publishes_what_celery_beat_publishes",)
    ),
    "messages/canvas_chain.json": _canvas_case("canvas_chain"),
    "messages/canvas_chain_with_group.json": _canvas_case("canvas_chain_with_group"),
    "messages/canvas_chord.json": _canvas_case("canvas_chord"),
    "messages/canvas_group.json": _canvas_case("canvas_group"),
    "messages/canvas_link_link_error.json": _canvas_case("canvas_link_link_error"),
    "messages/canvas_link_multiple_immutable.json": _canvas_case("canvas_link_multiple_immutable"),
    "messages/compression_zlib.json": _send_case("compression_zlib"),
    "messages/json_special_types.json": _send_case("json_special_types"),
    "messages/protocol1_message.json": Cover(
        (
            PARSE_ALL,
            f"{MV}::test_parse_protocol1_vector",
            "tests/interop/test_versions.py::test_old_message_runs",
        ),
        no_encoder="taskq always sends protocol 2 (celery-wire.md 2.10); it reads and runs protocol 1",
    ),
    "messages/send_task_by_name.json": _send_case("send_task_by_name"),
    "messages/serializer_pickle.json": _send_case("serializer_pickle"),
    "messages/task_apply_async_options.json": _send_case("task_apply_async_options"),
    "messages/task_delay_basic.json": _send_case("task_delay_basic"),
    "messages/task_eta_expires_datetime.json": _send_case("task_eta_expires_datetime"),
    "messages/task_ignore_result.json": _send_case("task_ignore_result"),
    "messages/task_kwargs.json": _send_case("task_kwargs"),
    "messages/worker_published_messages.json": Cover(
        (PARSE_ALL,),
        (
            f"{CV}::test_worker_sends_next_chain_steps",
            f"{CV}::test_worker_sends_chord_body",
            f"{CV}::test_worker_sends_link_callback",
            f"{CV}::test_worker_sends_old_style_errback_as_a_group_of_one",
            f"{HERE}::test_worker_sends_retry_and_child_like_celery",
        ),
    ),
    "pidbox/redis_pidbox.json": Cover(
        (f"{HERE}::test_pidbox_requests_reach_a_handler", f"{HERE}::test_pidbox_replies_decode"),
        (
            f"{HERE}::test_pidbox_request_as_taskq_sends_it",
            "tests/interop/test_control_interop.py::test_celery_cli_inspects_a_taskq_worker",
        ),
    ),
    "probes/worker_acceptance_probe.json": Cover(
        (
            f"{HERE}::test_every_probe_is_classified",
            f"{MV}::test_parse_accepts_what_celery_runs",
            f"{MV}::test_parse_refuses_what_celery_cannot_run",
        ),
        no_encoder="hand-built inputs: nothing a Celery or taskq client sends",
    ),
    "redis-transport/chord_part_return_transcript.json": Cover(
        (f"{HERE}::test_command_transcripts_decode",),
        (f"{CB}::TestRedisWire::test_commands_match_the_celery_57_transcript",),
    ),
    "redis-transport/command_transcripts.json": Cover(
        (f"{HERE}::test_command_transcripts_decode",),
        (
            f"{CB}::TestRedisWire::test_commands_match_the_celery_57_transcript",
            f"{RB}::TestRedis::test_celery_setex_and_publish_in_one_round_trip",
        ),
        no_encoder="the queue/ack/binding commands are kombu's Redis transport, which taskq uses unchanged",
    ),
    "results/redis_pubsub_state_notifications_extended.json": Cover(
        (f"{HERE}::test_pubsub_notifications_decode", f"{RB}::TestRedis::test_celery_metas_published_decode"),
        (f"{RB}::TestRedis::test_publish_payload_is_the_stored_value",),
    ),
    "results/redis_result_metas_extended.json": Cover(
        (f"{HERE}::test_result_metas_read_by_async_result", f"{RB}::TestContract::test_celery_metas_decode"),
        (f"{HERE}::test_extended_meta_as_taskq_stores_it",),
    ),
    "results/redis_result_metas_plain.json": Cover(
        (f"{HERE}::test_result_metas_read_by_async_result", f"{RB}::TestContract::test_celery_metas_decode"),
        (
            f"{RB}::TestRedis::test_stored_bytes_match_celery",
            f"{CB}::TestGroups::test_redis_bytes_ttl_and_publish_match_celery",
            f"{CB}::TestRedisWire::test_keys_midway_and_after_match_celery_57",
            "tests/interop/test_celery_vectors_redis.py::test_taskq_worker_runs_celery_vector",
        ),
    ),
}


def vector_files() -> list[str]:
    return sorted(p.relative_to(VECTORS).as_posix() for p in VECTORS.rglob("*") if p.is_file())


def test_every_vector_file_is_covered() -> None:
    """A new vector file fails here until a decoder (and an encoder check, or a reason) is listed."""
    files = vector_files()
    assert files == sorted(COVERAGE), {
        "not covered": sorted(set(files) - set(COVERAGE)),
        "listed but missing": sorted(set(COVERAGE) - set(files)),
    }
    for name, cover in COVERAGE.items():
        assert cover.decoded_by, f"{name}: nothing decodes it"
        assert cover.encoded_by or cover.no_encoder, f"{name}: no encoder check and no reason why"
        for ref in (*cover.decoded_by, *cover.encoded_by):
            check_reference(ref)


def check_reference(ref: str) -> None:
    """``path::[Class::]test[param]`` must name a test function that exists (and that param)."""
    path, *names = ref.split("::")
    source = (TESTS.parent / path).read_text()
    tree = ast.parse(source)
    *classes, last = names
    func, _, param = last.partition("[")
    scope: list[ast.stmt] = tree.body
    for cls in classes:
        found = [n for n in scope if isinstance(n, ast.ClassDef) and n.name == cls]
        assert found, f"{ref}: no class {cls}"
        scope = found[0].body
    assert any(isinstance(n, ast.FunctionDef) and n.name == func for n in scope), f"{ref}: no test {func}"
    if param:  # parametrized by a list that names the vector: check the module's table
        param = param.rstrip("]")
        module = importlib.import_module(path.removeprefix("tests/").removesuffix(".py").replace("/", "."))
        table = {"test_taskq_publishes_what_celery_publishes": "SEND_CASES",
                 "test_same_calls_publish_the_vectors_messages": "CANVAS"}[func]  # fmt: skip
        assert param in getattr(module, table), f"{ref}: {param} is not in {table}"


def test_readme_indexes_every_file() -> None:
    """The vectors' README lists every captured file (our excerpt of a transcript excepted)."""
    readme = (VECTORS / "README.md").read_text()
    listed = {name.split("/")[-1] for name in re.findall(r"^\| `([^`]+)` \|", readme, flags=re.M)}
    files = set(vector_files()) - {"README.md", "redis-transport/chord_part_return_transcript.json"}
    names = {f.split("/")[-1] for f in files}
    assert len(names) == len(files), "file names are unique across directories"
    assert listed == names, {"unlisted": names - listed, "listed but missing": listed - names}


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def meta_cases() -> list[Any]:
    cases = []
    for name in ("redis_result_metas_plain.json", "redis_result_metas_extended.json"):
        kind = name.split("_")[-1].removesuffix(".json")
        for case, item in load_vector(f"results/{name}")["metas"].items():
            cases.append(pytest.param(item, id=f"{kind}-{case}"))
    return cases


@pytest.mark.redis
@pytest.mark.parametrize("item", meta_cases())
def test_result_metas_read_by_async_result(item: dict[str, Any], redis_url: str, redis_client: Any) -> None:
    """Celery's stored bytes, under Celery's key, read through taskq's public result API."""
    import taskq
    from taskq.result import GroupResult

    app = taskq.Celery("specapp", broker="memory://", backend=redis_url, set_as_current=False)
    redis_client.set(item["key"], item["raw"], ex=60)
    decoded = item["decoded"]
    try:
        if item["key"].startswith("celery-taskset-meta-"):
            gid = item["key"].removeprefix("celery-taskset-meta-")
            restored = GroupResult.restore(gid, app=app)
            assert restored is not None and restored.id == gid
            assert [r.id for r in restored.results] == [child[0][0] for child in decoded["result"][1]]
            return
        res = app.AsyncResult(decoded["task_id"])
        assert res.state == decoded["status"]
        if decoded["status"] in ("FAILURE", "RETRY", "REVOKED"):
            exc = res.result
            assert isinstance(exc, BaseException)
            assert type(exc).__name__ == decoded["result"]["exc_type"]
            assert list(exc.args) == decoded["result"]["exc_message"]
        else:
            assert res.result == decoded["result"]
        assert res.traceback == decoded["traceback"]
        assert [c.id for c in res.children] == [c[0][0] for c in decoded["children"] or ()]
        done = decoded["date_done"]
        assert res.date_done == (datetime.fromisoformat(done) if done else None)
        for field in ("name", "args", "kwargs", "worker", "retries", "queue"):  # result_extended
            assert getattr(res, field) == decoded.get(field), field
    finally:
        app.close()


@pytest.mark.redis
@pytest.mark.parametrize("case", ["success", "failure"])
def test_extended_meta_as_taskq_stores_it(case: str, redis_url: str, redis_client: Any) -> None:
    """With ``result_extended``, taskq's meta has Celery's keys, order and values (times aside)."""
    import taskq
    from taskq import states
    from taskq.task import Context

    vector = load_vector("results/redis_result_metas_extended.json")["metas"][case]
    theirs = vector["decoded"]
    app = taskq.Celery(
        "specapp", broker="memory://", backend=redis_url, result_extended=True, set_as_current=False
    )
    try:
        request = Context(
            id=theirs["task_id"], task=theirs["name"], args=theirs["args"], kwargs=theirs["kwargs"],
            hostname=theirs["worker"], retries=theirs["retries"], delivery_info={"routing_key": theirs["queue"]},
        )  # fmt: skip
        if case == "success":
            app.backend.store_result(theirs["task_id"], theirs["result"], states.SUCCESS, request=request)
        else:
            app.backend.store_result(
                theirs["task_id"], ValueError("boom"), states.FAILURE, theirs["traceback"], request=request
            )
        ours = json.loads(redis_client.get(vector["key"]))
    finally:
        app.close()
    assert list(ours) == list(theirs)
    ours["date_done"] = theirs["date_done"]
    assert ours == theirs


def test_pubsub_notifications_decode() -> None:
    """Every state Celery PUBLISHed (STARTED, PROGRESS, RETRY, SUCCESS, FAILURE) decodes."""
    import taskq

    app = taskq.Celery("specapp", broker="memory://", backend="memory://", set_as_current=False)
    notifications = load_vector("results/redis_pubsub_state_notifications_extended.json")["notifications"]
    seen = set()
    try:
        for item in notifications:
            if item["channel"].startswith("celery-taskset-meta-"):  # GroupResult.save() publishes too
                saved = app.backend.decode(item["data"].encode())
                assert saved["result"][0][0] == item["channel"].removeprefix("celery-taskset-meta-")
                continue
            task_id = item["channel"].removeprefix("celery-task-meta-")
            meta = app.backend.decode_meta(task_id, item["data"].encode())
            assert meta == json.loads(item["data"]) and meta["task_id"] == task_id
            seen.add(meta["status"])
            if meta["status"] in ("FAILURE", "RETRY"):
                assert isinstance(app.backend.exception_from_meta(meta), BaseException)
    finally:
        app.close()
    assert {"STARTED", "PROGRESS", "RETRY", "SUCCESS", "FAILURE"} <= seen


def test_rpc_result_messages_decode() -> None:
    """rpc:// result messages: the body is the meta; correlation_id names the task."""
    import taskq

    app = taskq.Celery("specapp", broker="memory://", backend="memory://", set_as_current=False)
    vector = load_vector("amqp/rpc_backend_result_messages.json")
    states_seen = []
    try:
        for message in vector["messages"]:
            properties = message["basic_properties_without_headers"]
            meta = app.backend.decode_meta(properties["correlation_id"], message["body_utf8"].encode())
            assert meta["task_id"] == properties["correlation_id"]
            assert message["application_headers"] == {} and properties["delivery_mode"] == 1
            states_seen.append(meta["status"])
    finally:
        app.close()
    assert {"STARTED", "SUCCESS", "FAILURE"} <= set(states_seen)


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


def event_bodies() -> list[Any]:
    """Every captured event message body (one event or a task.multi list), Redis and RabbitMQ."""
    redis_vector = load_vector("events/redis_events.json")
    bodies = [
        pytest.param(envelope_body(sample["envelope"]), id=f"redis-{kind}")
        for kind, sample in redis_vector["samples_by_type"].items()
    ]
    bodies.append(
        pytest.param(
            envelope_body(redis_vector["task_multi_batch_example"]["envelope"]), id="redis-task.multi"
        )
    )
    for n, message in enumerate(load_vector("amqp/events_and_pidbox_on_rabbitmq.json")["events"]):
        body = json.loads(message["body_utf8"])
        kind = "task.multi" if isinstance(body, list) else body["type"]
        bodies.append(pytest.param(body, id=f"amqp-{n}-{kind}"))
    return bodies


@pytest.mark.parametrize("body", event_bodies())
def test_events_decode_like_celerys_state(body: Any) -> None:
    """taskq's receiver and State turn each event into what Celery's State shows."""
    from celery.events.state import State as CeleryState

    import taskq
    from taskq.events_receiver import EventReceiver
    from taskq.events_state import State

    app = taskq.Celery("ev", broker="memory://", set_as_current=False)
    events = body if isinstance(body, list) else [body]
    ours, theirs = State(), CeleryState()
    try:
        receiver = EventReceiver(app)
        for event in events:
            assert {"hostname", "utcoffset", "pid", "clock", "timestamp", "type"} <= set(event)
            kind, decoded = receiver.event_from_message(dict(event))
            assert kind == event["type"]
            ours.event(dict(decoded))
            theirs.event(dict(decoded))
    finally:
        app.close()
    assert sorted(ours.tasks) == sorted(theirs.tasks)
    for task_id, task in ours.tasks.items():
        for field in ("state", "name", "args", "kwargs", "result", "exception", "runtime", "retries"):
            assert getattr(task, field) == getattr(theirs.tasks[task_id], field), (task_id, field)
    assert sorted(ours.workers) == sorted(theirs.workers)
    for hostname, worker in ours.workers.items():
        for field in ("active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys", "freq", "pid"):
            assert getattr(worker, field) == getattr(theirs.workers[hostname], field), (hostname, field)


# --------------------------------------------------------------------------------------------
# Remote control (pidbox)
# --------------------------------------------------------------------------------------------


def pidbox_requests() -> list[Any]:
    params = []
    for n, request in enumerate(load_vector("pidbox/redis_pidbox.json")["requests"]):
        body = envelope_body(request["envelope"])
        assert body == request["decoded_body"]
        params.append(pytest.param(body, request["envelope"]["headers"], id=f"redis-{n}-{body['method']}"))
    for n, message in enumerate(load_vector("amqp/events_and_pidbox_on_rabbitmq.json")["pidbox_requests"]):
        body = json.loads(message["body_utf8"])
        params.append(pytest.param(body, message["application_headers"], id=f"amqp-{n}-{body['method']}"))
    return params


@pytest.mark.parametrize(("body", "headers"), pidbox_requests())
def test_pidbox_requests_reach_a_handler(body: dict[str, Any], headers: dict[str, Any]) -> None:
    """Each request names a taskq worker command whose signature takes Celery's arguments."""
    from taskq.worker.control import HANDLERS

    assert set(headers) == {"clock", "expires"}
    assert list(body)[:5] == ["method", "arguments", "destination", "pattern", "matcher"]
    handler = HANDLERS[body["method"]]
    inspect.signature(handler).bind(object(), **body["arguments"])  # raises TypeError if not
    if "ticket" in body:
        assert body["reply_to"]["exchange"] == "reply.celery.pidbox"


def test_pidbox_replies_decode() -> None:
    """Replies (LPUSHed envelopes) decode to ``{node: reply}`` and merge as taskq's client does."""
    from taskq.control import flatten_reply

    vector = load_vector("pidbox/redis_pidbox.json")
    for reply in vector["replies"]:
        body = envelope_body(reply["envelope"])
        assert body == reply["decoded_body"]
        assert set(reply["envelope"]["headers"]) == {"ticket", "clock"}
        assert flatten_reply([body]) == body
        assert reply["redis_key"].endswith(".reply.celery.pidbox")
    [ping] = [
        r["decoded_body"]
        for r in vector["replies"]
        if r["decoded_body"].get("spec-plain@vm") == {"ok": "pong"}
    ]
    assert flatten_reply([ping, {"other@h": {"ok": "pong"}}]) == {"spec-plain@vm": {"ok": "pong"}, "other@h": {"ok": "pong"}}  # fmt: skip


PIDBOX_CALLS: dict[str, Any] = {
    "ping": lambda app: app.control.ping(timeout=0.05),
    "hello": lambda app: app.control.inspect(timeout=0.05).hello("spec-plain@vm", revoked=[]),
    "add_consumer": lambda app: app.control.add_consumer("hold", reply=True, timeout=0.05),
    "scheduled": lambda app: app.control.inspect(timeout=0.05).scheduled(),
    "revoke": lambda app: app.control.revoke("00000000-0000-4000-8a00-000000000051"),
    "stats": lambda app: app.control.inspect(timeout=0.05).stats(),
    "active_queues": lambda app: app.control.inspect(timeout=0.05).active_queues(),
    "registered": lambda app: app.control.inspect(timeout=0.05).registered(),
    "query_task": lambda app: app.control.inspect(timeout=0.05).query_task(["00000000-0000-4000-8a00-000000000001"]),
}  # fmt: skip


def same_request(
    ours_body: dict[str, Any], ours_headers: dict[str, Any], theirs_body: dict[str, Any]
) -> None:
    """Body equal key for key (ticket and reply routing key are per call), headers' shape."""
    assert list(ours_body) == list(theirs_body)
    for key in ("ticket",):
        if key in theirs_body:
            assert UUID_RE.match(ours_body[key])
            ours_body = {**ours_body, key: theirs_body[key]}
    if "reply_to" in theirs_body:
        assert ours_body["reply_to"]["exchange"] == theirs_body["reply_to"]["exchange"]
        ours_body = {**ours_body, "reply_to": theirs_body["reply_to"]}
    assert ours_body == theirs_body
    assert list(ours_headers) == ["clock", "expires"]
    assert isinstance(ours_headers["clock"], int)
    assert ours_headers["expires"] == 0 or abs(ours_headers["expires"] - time.time()) < 30


@pytest.mark.redis
def test_pidbox_request_as_taskq_sends_it(redis_url: str, redis_client: Any) -> None:
    """taskq's control client publishes Celery's request envelopes (PUBLISH on ``/<db>.celery.pidbox``)."""
    import taskq

    db = redis_client.connection_pool.connection_kwargs["db"]
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"/{db}.celery.pidbox")
    app = taskq.Celery("specapp", broker=redis_url, set_as_current=False)
    theirs_by_method: dict[str, dict[str, Any]] = {}
    for request in load_vector("pidbox/redis_pidbox.json")["requests"]:
        theirs_by_method.setdefault(request["decoded_body"]["method"], request["envelope"])
    assert set(theirs_by_method) == set(PIDBOX_CALLS)
    try:
        for method, call in PIDBOX_CALLS.items():
            call(app)
            message = None
            deadline = time.monotonic() + 5
            while message is None and time.monotonic() < deadline:
                message = pubsub.get_message(timeout=0.5)
            assert message is not None, f"no pidbox request published for {method}"
            ours, theirs = json.loads(message["data"]), theirs_by_method[method]
            assert list(ours) == list(theirs)
            assert (ours["content-type"], ours["content-encoding"]) == (theirs["content-type"], theirs["content-encoding"])  # fmt: skip
            same_request(envelope_body(ours), ours["headers"], envelope_body(theirs))
            mask = {"delivery_tag": None}
            assert {**ours["properties"], **mask} == {**theirs["properties"], **mask}
    finally:
        pubsub.close()
        app.close()


@pytest.mark.amqp
def test_pidbox_request_on_rabbitmq_as_taskq_sends_it(amqp_url: str) -> None:
    """On RabbitMQ: a copy from the ``celery.pidbox`` fanout exchange, as the vector was taken."""
    from kombu import Connection, Exchange, Queue

    import taskq

    theirs = load_vector("amqp/events_and_pidbox_on_rabbitmq.json")["pidbox_requests"][0]
    app = taskq.Celery("specapp", broker=amqp_url, set_as_current=False)
    with Connection(amqp_url) as connection:
        channel = connection.channel()
        spy = Queue(
            f"spy-{uuid.uuid4().hex[:8]}",
            Exchange("celery.pidbox", "fanout", durable=False),
            auto_delete=True,
        )
        spy(channel).declare()
        try:
            app.control.ping(timeout=0.05)
            message = None
            deadline = time.monotonic() + 5
            while message is None and time.monotonic() < deadline:
                message = spy(channel).get(no_ack=True)
                time.sleep(0.02 if message is None else 0)
            assert message is not None
            ours_body = json.loads(message.body)
            same_request(ours_body, dict(message.headers), json.loads(theirs["body_utf8"]))
            assert message.delivery_info["exchange"] == theirs["delivery_info"]["exchange"]
            for key, value in theirs["basic_properties_without_headers"].items():
                assert message.properties[key] == value, key
        finally:
            spy(channel).delete()
            channel.close()
            app.close()


# --------------------------------------------------------------------------------------------
# RabbitMQ: the task message and the declarations
# --------------------------------------------------------------------------------------------


def test_task_message_on_rabbitmq_decodes() -> None:
    """application_headers + raw JSON body, as py-amqp delivers them, parse as Celery's fields."""
    from taskq.message import parse

    message = load_vector("amqp/task_message_on_rabbitmq.json")["message"]
    properties = message["basic_properties_without_headers"]
    req = parse(
        message["application_headers"], json.loads(message["body_utf8"]), properties, message["delivery_info"]
    )
    assert (req.name, req.id, req.args, req.kwargs) == (
        "specapp.add",
        properties["correlation_id"],
        [2, 3],
        {},
    )
    assert req.reply_to == "taskq-spec-reply" and req.delivery_info["routing_key"] == "taskq-spec-q"


@pytest.mark.amqp
def test_task_message_on_rabbitmq_as_taskq_sends_it(amqp_url: str) -> None:
    """The vector's ``python_call`` made with taskq: the same headers, properties and body bytes."""
    from kombu import Connection, Queue

    import taskq

    theirs = load_vector("amqp/task_message_on_rabbitmq.json")["message"]
    queue = f"taskq-spec-q-{uuid.uuid4().hex[:6]}"
    app = taskq.Celery("specapp", broker=amqp_url, set_as_current=False)
    app.task(name="specapp.add")(lambda x, y: x + y)
    try:
        app.tasks["specapp.add"].apply_async(
            (2, 3), task_id="00000000-0000-4000-8c00-000000000001", queue=queue, priority=7,
            reply_to="taskq-spec-reply",
        )  # fmt: skip
        with Connection(amqp_url) as connection:
            channel = connection.channel()
            message = Queue(queue)(channel).get(no_ack=True)
            assert message is not None
            Queue(queue)(channel).delete()
            channel.close()
    finally:
        app.close()
    headers = dict(message.headers)
    assert ORIGIN_RE.match(headers["origin"])
    headers["origin"] = theirs["application_headers"]["origin"]
    assert list(headers) == list(theirs["application_headers"])
    assert headers == theirs["application_headers"]
    body = message.body if isinstance(message.body, str) else message.body.decode()
    assert body == theirs["body_utf8"]
    assert message.delivery_info["exchange"] == theirs["delivery_info"]["exchange"] == ""
    assert message.delivery_info["routing_key"] == queue
    ours_properties = {k: message.properties.get(k) for k in theirs["basic_properties_without_headers"]}
    assert ours_properties == theirs["basic_properties_without_headers"]
    assert set(message.properties) - {"application_headers"} == set(
        theirs["basic_properties_without_headers"]
    )


def parse_declarations() -> dict[str, list[dict[str, str]]]:
    """The three ``rabbitmqctl list_*`` tables of the vector, as rows of named columns."""
    tables: dict[str, list[dict[str, str]]] = {}
    for block in (VECTORS / "amqp" / "rabbitmq_declarations.txt").read_text().strip().split("\n\n"):
        header, *rows = block.split("\n")
        columns = header.split("\t")
        tables[columns[0] + ":" + columns[1]] = [
            dict(zip(columns, row.split("\t"), strict=True)) for row in rows
        ]
    return tables


def rabbitmqctl_rows(amqp_url: str, what: str, columns: list[str]) -> list[dict[str, str]] | None:
    """``rabbitmqctl list_<what>`` of this run's vhost, or None without a local rabbitmqctl."""
    import shutil
    import subprocess
    from urllib.parse import unquote, urlparse

    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return None
    vhost = unquote(urlparse(amqp_url).path[1:]) or "/"
    out = subprocess.run(
        [ctl, "-q", "--no-table-headers", "list_" + what, "-p", vhost, *columns],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    return [dict(zip(columns, line.split("\t"), strict=True)) for line in out.splitlines() if line.strip()]


@pytest.mark.amqp
def test_rabbitmq_declarations_match(amqp_url: str) -> None:
    """What taskq declares for a priority queue, an auto-created queue and the rpc reply queue.

    Each queue and exchange must exist (passive declare), then is declared again with the
    attributes of Celery's listing: RabbitMQ refuses (PRECONDITION_FAILED) a redeclaration whose
    durable/auto_delete/arguments differ. With a local ``rabbitmqctl`` the listings are compared
    row by row as well (queue names mapped to this test's).
    """
    from kombu import Connection, Exchange, Queue

    import taskq

    tables = parse_declarations()
    queues = {row["name"]: row for row in tables["name:durable"]}
    exchanges = {row["name"]: row for row in tables["name:type"]}
    suffix = uuid.uuid4().hex[:6]
    prio, auto = f"taskq-spec-prio-{suffix}", f"taskq-spec-auto-{suffix}"
    app = taskq.Celery("specapp", broker=amqp_url, backend="rpc://", set_as_current=False)
    app.conf.task_queue_max_priority = 10
    app.conf.task_queues = [Queue(prio, Exchange("celery", "direct"), routing_key=prio)]
    app.conf.task_default_queue = prio
    app.task(name="specapp.add")(lambda x, y: x + y)
    reply = app.thread_oid
    names = {prio: "taskq-spec-prio", auto: "taskq-spec-auto", reply: "<reply>"}
    try:
        app.tasks["specapp.add"].apply_async((1, 1))
        app.tasks["specapp.add"].apply_async((1, 1), queue=auto)
        with Connection(amqp_url) as connection:
            channel = connection.channel()
            for ours, theirs in names.items():
                row = (
                    queues[theirs]
                    if theirs in queues
                    else next(r for r in queues.values() if UUID_RE.match(r["name"]))
                )
                channel.queue_declare(ours, passive=True)  # taskq declared it (NOT_FOUND otherwise)
                arguments = dict(ast.literal_eval(row["arguments"].replace("{", "(").replace("}", ")")))
                _, count, _ = channel.queue_declare(
                    ours, durable=row["durable"] == "true", auto_delete=row["auto_delete"] == "true",
                    arguments=arguments,
                )  # fmt: skip
                assert count == int(row["messages"]), ours
            for ours, theirs in (
                ("celery", "celery"),
                (auto, "taskq-spec-auto"),
                ("celery.pidbox", "celery.pidbox"),
            ):
                row = exchanges[theirs]
                if theirs == "celery.pidbox":
                    app.control.ping(timeout=0.05)  # declares the pidbox exchanges
                channel.exchange_declare(ours, row["type"], passive=True)
                channel.exchange_declare(
                    ours,
                    row["type"],
                    durable=row["durable"] == "true",
                    auto_delete=row["auto_delete"] == "true",
                )
            channel.close()
        listed = rabbitmqctl_rows(amqp_url, "bindings", ["source_name", "destination_name", "routing_key"])
        if listed is not None:
            theirs_bindings = {tuple(b.values()) for b in tables["source_name:destination_name"] if "spec" in b["destination_name"]}  # fmt: skip
            ours_bindings = {
                tuple(names.get(v, v) for v in b.values())
                for b in listed if b["destination_name"] in (prio, auto)
            }  # fmt: skip
            assert ours_bindings == theirs_bindings
        listed = rabbitmqctl_rows(
            amqp_url, "queues", ["name", "durable", "auto_delete", "exclusive", "arguments"]
        )
        if listed is not None:
            rows = {names[r["name"]]: r for r in listed if r["name"] in names}
            for ours_name, theirs_name in (
                ("taskq-spec-prio", "taskq-spec-prio"),
                ("taskq-spec-auto", "taskq-spec-auto"),
            ):
                mine = {k: v for k, v in rows[ours_name].items() if k != "name"}
                assert mine == {k: queues[theirs_name][k] for k in mine}, ours_name
    finally:
        with Connection(amqp_url) as connection:
            channel = connection.channel()
            for name in (prio, auto):
                channel.queue_delete(name)
            channel.close()
        app.close()


# --------------------------------------------------------------------------------------------
# Probes and transcripts
# --------------------------------------------------------------------------------------------

PROBE_OUTCOMES = {
    "probe-a": "runs", "probe-b": "refused", "probe-c": "runs", "probe-d": "runs", "probe-e": "runs",
    "probe-f": "refused", "probe-g": "undecodable", "probe-h": "not-accepted", "probe-i": "runs",
    "probe-j": "runs", "no.such.task (phase B)": "unknown-task",
}  # fmt: skip


def test_every_probe_is_classified() -> None:
    """Each hand-built message decodes (or is refused) the way Celery's worker treated it."""
    from kombu.exceptions import ContentDisallowed, DecodeError

    from taskq.exceptions import InvalidTaskError
    from taskq.message import parse

    cases = load_vector("probes/worker_acceptance_probe.json")["cases"]
    assert sorted(c["id"] for c in cases) == sorted(PROBE_OUTCOMES)
    for case in cases:
        want = PROBE_OUTCOMES[case["id"]]
        if want == "undecodable":
            with pytest.raises(DecodeError):
                loads(case["raw_body"].encode(), case["content_type"], "utf-8", accept={"application/json"})
        elif want == "not-accepted":
            with pytest.raises(ContentDisallowed):
                loads(b"\x80\x04N.", "application/x-python-serialize", "binary", accept={"application/json"})
        elif want == "refused":
            with pytest.raises(InvalidTaskError):
                parse(case["headers"], case["body"])
        elif want == "unknown-task":
            assert case["headers"]["task"] == "no.such.task" and "NotRegistered" in case["outcome"]
        else:
            req = parse(case["headers"], case["body"])
            assert req.name and req.id, case["id"]


def test_command_transcripts_decode() -> None:
    """Every command is well formed; the payloads in them decode; the chord copy is verbatim.

    Values over 400 characters are cut in the transcripts, so an envelope is read through its
    ``body`` field when that came through whole (task and pidbox bodies do; most event bodies
    are cut: those are decoded from events/redis_events.json).
    """
    import taskq

    full = load_vector("redis-transport/command_transcripts.json")["transcripts"]
    copy = load_vector("redis-transport/chord_part_return_transcript.json")["transcripts"]
    assert copy == {"chord_part_return_and_completion": full["chord_part_return_and_completion"]}
    app = taskq.Celery("specapp", broker="memory://", backend="memory://", set_as_current=False)
    decoded: dict[str, int] = {}
    try:
        for name, transcript in full.items():
            for command in transcript["commands"]:
                cmd = command["cmd"]
                assert cmd and all(isinstance(a, str) for a in cmd), (name, command)
                payload = cmd[-1]
                found = re.match(r'\[?\{"body": "([A-Za-z0-9+/=]+)"', payload)
                if cmd[0] in ("LPUSH", "PUBLISH", "HSET") and found:
                    body = json.loads(base64.b64decode(found.group(1)))
                    if isinstance(body, list) and len(body) == 3 and isinstance(body[2], dict):
                        kind = "task"
                    else:
                        kind = "pidbox" if isinstance(body, dict) and "method" in body else "event"
                    decoded[kind] = decoded.get(kind, 0) + 1
                elif cmd[0] in ("SETEX", "PUBLISH") and cmd[1].startswith("celery-task-meta-"):
                    task_id = cmd[1].removeprefix("celery-task-meta-")
                    meta = app.backend.decode_meta(task_id, payload.encode())
                    assert meta["task_id"] == task_id and meta["status"] == "SUCCESS"
                    decoded["meta"] = decoded.get("meta", 0) + 1
    finally:
        app.close()
    assert decoded.get("task", 0) >= 3 and decoded.get("pidbox", 0) >= 2 and decoded.get("meta", 0) >= 2, (
        decoded
    )


# --------------------------------------------------------------------------------------------
# What taskq's beat and worker send, against what Celery's sent
# --------------------------------------------------------------------------------------------


def masked_envelope(envelope: dict[str, Any]) -> dict[str, Any]:
    """An envelope with ids, times and per-process values replaced by placeholders."""
    headers, properties = dict(envelope["headers"]), dict(envelope["properties"])
    for key in ("id", "root_id", "parent_id", "origin", "eta", "expires"):
        if headers.get(key) is not None:
            headers[key] = f"<{key}>"
    for key in ("correlation_id", "reply_to", "delivery_tag", "expiration", "origin"):
        if properties.get(key) is not None:
            properties[key] = f"<{key}>"
    properties["delivery_info"] = {**properties["delivery_info"], "routing_key": "<queue>"}
    return {**envelope, "body": json.loads(base64.b64decode(envelope["body"])), "headers": headers,
            "properties": properties}  # fmt: skip


def pushed(redis_client: Any, key: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in reversed(redis_client.lrange(key, 0, -1))]


def check_times(envelope: dict[str, Any], expires_in: float | None) -> None:
    headers, properties = envelope["headers"], envelope["properties"]
    assert ORIGIN_RE.match(headers["origin"]) and UUID_RE.match(properties["reply_to"])
    assert headers["id"] == headers["root_id"] == properties["correlation_id"]
    if expires_in is None:
        assert headers["expires"] is None and "expiration" not in properties
    else:
        left = datetime.fromisoformat(headers["expires"]) - datetime.now(UTC)
        assert timedelta(seconds=expires_in - 10) < left <= timedelta(seconds=expires_in)
        assert 0 < int(properties["expiration"]) <= expires_in * 1000


@pytest.mark.redis
def test_beat_publishes_what_celery_beat_publishes(redis_url: str, redis_client: Any) -> None:
    """The capture's schedule, sent by taskq's scheduler: Celery beat's messages, key for key."""
    import taskq
    from taskq.beat_scheduler import Scheduler
    from taskq.schedules import crontab

    vector = load_vector("messages/beat_sent_messages.json")
    app = taskq.Celery("specapp", broker=redis_url, set_as_current=False)
    app.task(name="specapp.add")(lambda x, y: x + y)
    app.task(name="specapp.greet")(lambda name, greeting="hello", punct="!": f"{greeting} {name}{punct}")
    app.conf.beat_schedule = {
        "add-every-second": {"task": "specapp.add", "schedule": 1.0, "args": (1, 2), "options": {"expires": 30}},
        "greet-every-2s": {"task": "specapp.greet", "schedule": timedelta(seconds=2), "args": ("beat",),
                           "kwargs": {"greeting": "tick"}},
        "nightly": {"task": "specapp.add", "schedule": crontab(hour=3, minute=30), "args": (0, 0)},
    }  # fmt: skip
    try:
        scheduler = Scheduler(app)
        for name in ("add-every-second", "greet-every-2s"):
            scheduler.apply_async(scheduler.schedule[name], advance=False)
    finally:
        app.close()
    ours = pushed(redis_client, "celery")
    theirs = [json.loads(m["raw"]) for m in vector["messages"]][:2]
    assert [e["headers"]["task"] for e in theirs] == ["specapp.add", "specapp.greet"]
    assert len(ours) == 2
    for mine, captured, expires_in in zip(ours, theirs, (30, None), strict=True):
        assert list(mine) == list(captured)
        assert list(mine["headers"]) == list(captured["headers"])
        assert list(mine["properties"]) == list(captured["properties"])
        assert masked_envelope(mine) == masked_envelope(captured)
        check_times(mine, expires_in)


@pytest.mark.redis
def test_worker_sends_retry_and_child_like_celery(redis_url: str, redis_client: Any) -> None:
    """``Task.retry()`` and a child task sent from a task: the envelopes Celery's worker wrote.

    The worker consumes a queue of its own: the child goes to ``celery`` (nobody consumes it,
    so it stays in the list), the retry comes back with a far ETA and waits on Redis (taskq's
    delayed set; kombu's ``unacked`` hash with the threshold off), where its envelope is read.
    """
    import taskq
    from taskq.testing import RunningWorker

    wanted = {
        m["what"].split(" ")[0]: m for m in load_vector("messages/worker_published_messages.json")["messages"]
    }
    retry_v, child_v = wanted["retry:"], wanted["child"]
    work_queue = f"work-{uuid.uuid4().hex[:8]}"
    app = taskq.Celery("specapp", broker=redis_url, backend=redis_url, set_as_current=False)
    add = app.task(name="specapp.add")(lambda x, y: x + y)

    @app.task(name="specapp.flaky", bind=True, max_retries=3)
    def flaky(self: Any, x: int) -> int:
        raise self.retry(countdown=600)

    @app.task(name="specapp.spawn")
    def spawn() -> int:
        add.apply_async((5, 1), task_id=child_v["headers"]["id"])
        return 5

    worker = RunningWorker(app, queues=[work_queue], concurrency=1)
    worker.start()
    try:
        flaky.apply_async((1,), task_id=retry_v["headers"]["id"], queue=work_queue)
        spawn.apply_async(task_id=child_v["headers"]["parent_id"], queue=work_queue)
        assert app.AsyncResult(child_v["headers"]["parent_id"]).get(timeout=20) == 5

        def retry_envelope() -> dict[str, Any] | None:
            # a far ETA waits on Redis (taskq.delayed), or in the worker (kombu's unacked hash)
            held = redis_client.hvals("unacked") + redis_client.zrange("taskq.delayed", 0, -1)
            for raw in held:
                envelope = json.loads(raw)[0]
                if envelope["headers"]["retries"] == 1:
                    return dict(envelope)
            return None

        deadline = time.monotonic() + 20
        while (retry := retry_envelope()) is None:
            assert time.monotonic() < deadline, "the retry message never arrived"
            time.sleep(0.05)
    finally:
        worker.stop()
        app.close()
    [child] = pushed(redis_client, "celery")
    for ours, theirs in ((retry, retry_v), (child, child_v)):
        captured = {"body": base64.b64encode(json.dumps(theirs["decoded_body"]).encode()).decode(),
                    "headers": theirs["headers"], "properties": theirs["properties"]}  # fmt: skip
        assert list(ours["headers"]) == list(theirs["headers"])
        assert list(ours["properties"]) == list(theirs["properties"]), "property keys, in Celery's order"
        mine = masked_envelope(ours)
        assert {k: mine[k] for k in ("body", "headers", "properties")} == masked_envelope(captured)
    assert retry["headers"]["parent_id"] == retry["headers"]["id"] == retry_v["headers"]["id"]
    assert child["headers"]["parent_id"] == child["headers"]["root_id"] == child_v["headers"]["parent_id"]
    eta = datetime.fromisoformat(retry["headers"]["eta"])
    assert eta.utcoffset() == timedelta(0) and eta > datetime.now(UTC) + timedelta(seconds=500)
