"""taskq's task messages against the Celery 5.7 wire vectors in ``tests/data/vectors``.

Three directions:

- reading: every message a real Celery 5.7 published (``messages/*.json``) and every hand-built
  probe message goes through ``taskq.message.parse`` and comes out with the fields Celery's
  worker would use;
- writing: the calls of the vectors' ``python_calls`` that taskq can make are made with taskq
  against a real Redis, and the value taskq LPUSHed is compared with the captured envelope,
  key order included, ignoring only the volatile values listed in ``vectors/README.md``;
- refusing: malformed messages raise ``InvalidTaskError`` with a message naming the problem.
"""

from __future__ import annotations

import ast
import base64
import json
import re
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from kombu.serialization import loads

from taskq import App
from taskq.exceptions import InvalidTaskError
from taskq.message import TaskRequest, parse, saferepr

VECTORS = Path(__file__).resolve().parents[1] / "data" / "vectors"
MESSAGE_FILES = sorted((VECTORS / "messages").glob("*.json"))
PICKLE = "application/x-python-serialize"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ORIGIN_RE = re.compile(r"^gen\d+@.+$")
VOLATILE = "<volatile>"


def load_vector(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text())


def payload_of(envelope: dict[str, Any]) -> bytes:
    """The serialized body: base64-decoded, then decompressed if the headers say so."""
    assert envelope["properties"]["body_encoding"] == "base64"
    payload = base64.b64decode(envelope["body"])
    compression = envelope["headers"].get("compression")
    if compression is not None:
        assert compression == "application/x-gzip", f"unexpected compression {compression!r}"
        payload = zlib.decompress(payload)
    return payload


def decode_body(envelope: dict[str, Any], accept: set[str] | None = None) -> Any:
    """What a consumer does with a Redis list element's envelope (vectors/README.md)."""
    return loads(
        payload_of(envelope),
        envelope["content-type"],
        envelope["content-encoding"],
        accept=accept or {"application/json"},
    )


def aware(value: str | None) -> datetime | None:
    """An eta/expires header as the worker must read it: naive means UTC."""
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


# --------------------------------------------------------------------------------------------
# Reading what Celery sent
# --------------------------------------------------------------------------------------------


def vector_messages() -> list[Any]:
    return [
        pytest.param(message, id=f"{path.stem}[{index}]")
        for path in MESSAGE_FILES
        for index, message in enumerate(json.loads(path.read_text())["messages"])
    ]


@dataclass
class Expected:
    """The fields a worker must see, read straight from the vector (no taskq code involved)."""

    name: str
    id: str
    args: list[Any]
    kwargs: dict[str, Any]
    embed: dict[str, Any]
    eta: datetime | None
    expires: datetime | None
    retries: int
    group: str | None
    group_index: int | None
    root_id: str
    parent_id: str | None
    timelimit: tuple[Any, Any]
    ignore_result: bool
    shadow: str | None
    protocol: int


def expected_from(headers: dict[str, Any], body: Any) -> Expected:
    if "task" in headers:
        args, kwargs, embed = body
        fields = headers
        group = headers.get("group")
        protocol = 2
    else:  # protocol 1: everything is in the body dict
        fields = body
        args, kwargs = body["args"], body["kwargs"]
        embed = {
            "callbacks": body.get("callbacks"),
            "errbacks": body.get("errbacks"),
            "chain": None,
            "chord": body.get("chord"),
        }
        group = body.get("group") or body.get("taskset")
        protocol = 1
    return Expected(
        name=fields["task"],
        id=fields["id"],
        args=list(args),
        kwargs=dict(kwargs),
        embed=dict(embed),
        eta=aware(fields.get("eta")),
        expires=aware(fields.get("expires")),
        retries=fields.get("retries") or 0,
        group=group,
        group_index=fields.get("group_index"),
        root_id=fields.get("root_id") or fields["id"],
        parent_id=fields.get("parent_id"),
        timelimit=tuple(fields.get("timelimit") or (None, None)),  # type: ignore[arg-type]
        ignore_result=bool(fields.get("ignore_result")),
        shadow=fields.get("shadow"),
        protocol=protocol,
    )


def assert_parsed_as(req: TaskRequest, want: Expected) -> None:
    assert (req.name, req.id, req.protocol) == (want.name, want.id, want.protocol)
    assert req.args == want.args
    assert req.kwargs == want.kwargs
    assert req.callbacks == want.embed.get("callbacks")
    assert req.errbacks == want.embed.get("errbacks")
    assert req.chain == want.embed.get("chain")
    assert req.chord == want.embed.get("chord")
    for when, wanted in (("eta", req.eta), ("expires", req.expires)):
        assert wanted is None or wanted.tzinfo is not None, f"{when} must be an aware datetime"
    assert req.eta == want.eta
    assert req.expires == want.expires
    assert req.retries == want.retries
    assert (req.group, req.group_index) == (want.group, want.group_index)
    assert (req.root_id, req.parent_id) == (want.root_id, want.parent_id)
    assert tuple(req.timelimit) == want.timelimit
    assert req.ignore_result is want.ignore_result
    assert req.shadow == want.shadow


@pytest.mark.parametrize("message", vector_messages())
def test_parse_every_vector_message(message: dict[str, Any]) -> None:
    envelope = json.loads(message["raw"])
    accept = {"application/json", PICKLE} if envelope["content-type"] == PICKLE else None
    body = decode_body(envelope, accept)
    if envelope["content-type"] == PICKLE:  # the vector can only show the pickled tuple's repr
        assert body == ast.literal_eval(message["decoded_body"]["_pickle_repr"])
    else:  # the vector shows the JSON as sent, tagged types ({"__type__": ...}) not decoded
        assert json.loads(payload_of(envelope)) == message["decoded_body"]
    properties = envelope["properties"]

    req = parse(envelope["headers"], body, properties, properties["delivery_info"])

    assert_parsed_as(req, expected_from(envelope["headers"], body))
    assert req.correlation_id == properties["correlation_id"]
    assert req.reply_to == properties["reply_to"]
    assert req.delivery_info == properties["delivery_info"]
    for key, value in envelope["headers"].items():  # extra headers stay visible to the task
        assert req.headers[key] == value


def test_parse_keeps_the_offset_of_an_aware_eta() -> None:
    message = load_vector("messages/task_eta_expires_datetime.json")["messages"][0]
    envelope = json.loads(message["raw"])
    req = parse(envelope["headers"], decode_body(envelope))
    assert req.eta == datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    assert req.expires == datetime(2030, 1, 2, 2, 4, 5, tzinfo=timezone.utc)
    assert req.expires is not None and req.expires.utcoffset() == timedelta(hours=2)


def test_parse_protocol1_vector() -> None:
    message = load_vector("messages/protocol1_message.json")["messages"][0]
    envelope = json.loads(message["raw"])
    assert envelope["headers"] == {}
    req = parse(envelope["headers"], decode_body(envelope), envelope["properties"])
    assert req.protocol == 1
    assert (req.name, req.id, req.args, req.kwargs) == (
        "specapp.add",
        "00000000-0000-4000-8000-000000000017",
        [2, 3],
        {},
    )
    assert req.eta == datetime(2026, 11, 21, 4, 52, 7, 295922, tzinfo=timezone.utc)
    assert req.callbacks == [
        {
            "task": "specapp.mul",
            "args": [10],
            "kwargs": {},
            "options": {},
            "subtask_type": None,
            "immutable": False,
        }
    ]
    assert req.root_id == req.id  # protocol 1 has no root_id: the task is its own root
    assert req.argsrepr == "[2, 3]"


# The probes: hand-built messages and what a Celery 5.7 worker did with them.
PROBES = {case["id"]: case for case in load_vector("probes/worker_acceptance_probe.json")["cases"]}
ACCEPTED_PROBES = ["probe-a", "probe-c", "probe-d", "probe-e", "probe-i", "probe-j"]
REFUSED_PROBES = {"probe-b": r"\[args, kwargs, embed\].*got 2", "probe-f": r"keyword arguments.*mapping"}


@pytest.mark.parametrize("probe_id", ACCEPTED_PROBES)
def test_parse_accepts_what_celery_runs(probe_id: str) -> None:
    probe = PROBES[probe_id]
    req = parse(probe["headers"], probe["body"])
    assert_parsed_as(req, expected_from(probe["headers"], probe["body"]))


def test_naive_eta_is_utc() -> None:  # probe-c
    probe = PROBES["probe-c"]
    assert probe["headers"]["eta"] == "2020-01-01T00:00:00"
    assert parse(probe["headers"], probe["body"]).eta == datetime(2020, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("probe_id", sorted(REFUSED_PROBES))
def test_parse_refuses_what_celery_cannot_run(probe_id: str) -> None:
    probe = PROBES[probe_id]
    with pytest.raises(InvalidTaskError, match=REFUSED_PROBES[probe_id]):
        parse(probe["headers"], probe["body"])


# --------------------------------------------------------------------------------------------
# Refusing malformed messages
# --------------------------------------------------------------------------------------------

HEADERS = {"task": "specapp.add", "id": "bad-1"}
EMBED: dict[str, Any] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@pytest.mark.parametrize(
    ("headers", "body", "match"),
    [
        pytest.param(HEADERS, [[2, 3], {}], r"\[args, kwargs, embed\].*got 2", id="two-element-body"),
        pytest.param(HEADERS, [[2, 3], {}, EMBED, None], r"got 4", id="four-element-body"),
        pytest.param(HEADERS, "[[2, 3], {}, {}]", r"\[args, kwargs, embed\].*str", id="body-is-text"),
        pytest.param(HEADERS, ["2, 3", {}, EMBED], r"args must be a list.*str", id="args-not-list"),
        pytest.param(HEADERS, [{"x": 2}, {}, EMBED], r"args must be a list.*dict", id="args-dict"),
        pytest.param(HEADERS, [[2], [3], EMBED], r"keyword arguments.*mapping", id="kwargs-list"),
        pytest.param(HEADERS, [[2], "y=3", EMBED], r"keyword arguments.*mapping", id="kwargs-text"),
        pytest.param(HEADERS, [[2, 3], {}, ["chain"]], r"embed must be a mapping.*list", id="embed-list"),
        pytest.param(HEADERS, [[2, 3], {}, "x"], r"embed must be a mapping.*str", id="embed-text"),
        pytest.param({"id": "bad-2"}, [[2, 3], {}, EMBED], r"no task", id="no-task-header"),
        pytest.param({"task": "", "id": "bad-3"}, [[2, 3], {}, EMBED], r"no task name", id="empty-name"),
        pytest.param({"task": 42, "id": "bad-4"}, [[2, 3], {}, EMBED], r"no task name", id="name-not-str"),
        pytest.param({"task": "specapp.add"}, [[2, 3], {}, EMBED], r"specapp.add has no task id", id="no-id"),
        pytest.param(
            {"task": "specapp.add", "id": ""}, [[2, 3], {}, EMBED], r"has no task id", id="empty-id"
        ),
        pytest.param(
            {**HEADERS, "eta": "next tuesday"}, [[], {}, EMBED], r"eta 'next tuesday'.*ISO", id="bad-eta"
        ),
        pytest.param(
            {**HEADERS, "expires": "2020-13-45T99:00:00"}, [[], {}, EMBED], r"expires .*ISO", id="bad-expires"
        ),
        pytest.param({**HEADERS, "timelimit": [1, 2, 3]}, [[], {}, EMBED], r"timelimit", id="bad-timelimit"),
        pytest.param({}, {"id": "p1"}, r"no task name", id="protocol1-no-task"),
        pytest.param({}, {"task": "specapp.add"}, r"no task id", id="protocol1-no-id"),
        pytest.param({}, {"task": "t", "id": "p1", "args": "x"}, r"args or kwargs", id="protocol1-bad-args"),
        pytest.param({}, {"task": "t", "id": "p1", "kwargs": [1]}, r"args or kwargs", id="protocol1-bad-kw"),
        pytest.param({}, [[2, 3], {}, EMBED], r"no task header", id="no-headers-list-body"),
    ],
)
def test_parse_rejects_malformed_messages(headers: dict[str, Any], body: Any, match: str) -> None:
    with pytest.raises(InvalidTaskError, match=match):
        parse(headers, body)


# --------------------------------------------------------------------------------------------
# Writing what Celery writes (real Redis broker)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def spec_app(redis_url: str, redis_client: Any) -> Iterator[App]:
    """``specapp`` with a Redis broker and no result backend, tasks registered by name."""
    app = App("specapp", broker=redis_url)

    @app.task(name="specapp.add")
    def add(x: Any, y: Any) -> Any:
        return x + y

    @app.task(name="specapp.greet")
    def greet(name: str, greeting: str = "hello", punct: str = "!") -> str:
        return f"{greeting} {name}{punct}"

    @app.task(name="specapp.noresult", ignore_result=True)
    def noresult(x: Any) -> Any:
        return x

    yield app
    app.close()


UTC = timezone.utc
UTC_PLUS_2 = timezone(timedelta(hours=2))
JSON_SPECIAL_ARGS = (
    [
        datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
        date(2024, 5, 6),
        Decimal("1.10"),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        b"raw-bytes",
        b"\xff\x00",
    ],
    None,
)


@dataclass
class SendCase:
    """One vector's ``python_calls`` made with taskq, and what may differ from the capture."""

    call: Callable[[App], None]
    fixed_ids: bool = True  # the capture chose the task ids with task_id=
    volatile_headers: tuple[str, ...] = ()  # wall-clock values, checked against the send time
    volatile_properties: tuple[str, ...] = ()


SEND_CASES: dict[str, SendCase] = {
    "task_delay_basic": SendCase(lambda app: app.tasks["specapp.add"].delay(2, 3), fixed_ids=False),
    "task_apply_async_options": SendCase(
        lambda app: app.tasks["specapp.add"].apply_async(
            (2, 3),
            task_id="00000000-0000-4000-8000-000000000002",
            countdown=10,
            expires=60,
            queue="q2",
            priority=5,
            retries=2,
            time_limit=30,
            soft_time_limit=20,
            shadow="add-shadowed",
            headers={"x-custom-header": "custom-value"},
        ),
        volatile_headers=("eta", "expires"),
    ),
    "task_eta_expires_datetime": SendCase(
        lambda app: app.tasks["specapp.add"].apply_async(
            (1, 1),
            task_id="00000000-0000-4000-8000-000000000003",
            eta=datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
            expires=datetime(2030, 1, 2, 4, 4, 5, tzinfo=UTC_PLUS_2),
        ),
        volatile_properties=("expiration",),  # milliseconds from "now" until expires
    ),
    "task_kwargs": SendCase(
        lambda app: app.tasks["specapp.greet"].apply_async(
            ("bob",), {"greeting": "hi", "punct": "?"}, task_id="00000000-0000-4000-8000-000000000004"
        )
    ),
    "task_ignore_result": SendCase(
        lambda app: (
            app.tasks["specapp.noresult"].apply_async((7,), task_id="00000000-0000-4000-8000-000000000005"),
            app.tasks["specapp.add"].apply_async(
                (1, 2), task_id="00000000-0000-4000-8000-000000000015", ignore_result=True
            ),
        )
    ),
    "send_task_by_name": SendCase(
        lambda app: app.send_task(
            "remote.task.name", args=[1], kwargs={"k": "v"}, task_id="00000000-0000-4000-8000-000000000014"
        )
    ),
    "json_special_types": SendCase(
        lambda app: app.tasks["specapp.add"].apply_async(
            JSON_SPECIAL_ARGS, task_id="00000000-0000-4000-8000-000000000011"
        )
    ),
    "compression_zlib": SendCase(
        lambda app: app.tasks["specapp.add"].apply_async(
            (2, 3), task_id="00000000-0000-4000-8000-000000000012", compression="zlib"
        )
    ),
    "serializer_pickle": SendCase(
        lambda app: app.tasks["specapp.add"].apply_async(
            (2, 3), task_id="00000000-0000-4000-8000-000000000013", serializer="pickle"
        )
    ),
}


def masked(envelope: dict[str, Any], case: SendCase) -> dict[str, Any]:
    """The envelope with volatile values replaced, body as decoded bytes, key order kept."""
    headers = dict(envelope["headers"])
    properties = dict(envelope["properties"])
    volatile_headers = {"origin", *case.volatile_headers}
    volatile_properties = {"reply_to", "delivery_tag", *case.volatile_properties}
    if not case.fixed_ids:
        volatile_headers |= {"id", "root_id"}
        volatile_properties.add("correlation_id")
    for key in volatile_headers & set(headers):
        headers[key] = VOLATILE
    for key in volatile_properties & set(properties):
        properties[key] = VOLATILE
    return {
        **envelope,
        "body": base64.b64decode(envelope["body"]),
        "headers": headers,
        "properties": properties,
    }


def key_order(envelope: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    return list(envelope), list(envelope["headers"]), list(envelope["properties"])


def pushed_messages(redis_client: Any) -> dict[str, list[dict[str, Any]]]:
    """Every list in the DB and its elements, oldest first (the order a worker pops them)."""
    lists = {}
    for key in redis_client.keys("*"):
        if redis_client.type(key) == b"list":
            raw = reversed(redis_client.lrange(key, 0, -1))
            lists[key.decode()] = [json.loads(item) for item in raw]
    return lists


@pytest.mark.redis
@pytest.mark.parametrize("case_name", sorted(SEND_CASES))
def test_taskq_publishes_what_celery_publishes(case_name: str, spec_app: App, redis_client: Any) -> None:
    case = SEND_CASES[case_name]
    vector = load_vector(f"messages/{case_name}.json")
    theirs_by_key: dict[str, list[dict[str, Any]]] = {}
    for message in vector["messages"]:
        theirs_by_key.setdefault(message["redis_key"], []).append(json.loads(message["raw"]))

    before = datetime.now(UTC)
    case.call(spec_app)
    after = datetime.now(UTC)

    ours_by_key = pushed_messages(redis_client)
    assert {k: len(v) for k, v in ours_by_key.items()} == {k: len(v) for k, v in theirs_by_key.items()}
    for key, theirs_list in theirs_by_key.items():
        for ours, theirs in zip(ours_by_key[key], theirs_list, strict=True):
            assert key_order(ours) == key_order(theirs)
            ours_masked, theirs_masked = masked(ours, case), masked(theirs, case)
            assert ours_masked.pop("headers") == theirs_masked.pop("headers")
            assert ours_masked.pop("properties") == theirs_masked.pop("properties")
            assert ours_masked == theirs_masked  # body bytes, content type and encoding
            check_volatile_values(ours, case, before, after)


def check_volatile_values(ours: dict[str, Any], case: SendCase, before: datetime, after: datetime) -> None:
    """Volatile is not unchecked: each value must still have the right shape and time."""
    headers, properties = ours["headers"], ours["properties"]
    assert ORIGIN_RE.match(headers["origin"]), headers["origin"]
    assert UUID_RE.match(properties["reply_to"]), properties["reply_to"]
    assert UUID_RE.match(properties["delivery_tag"]), properties["delivery_tag"]
    assert headers["root_id"] == headers["id"] == properties["correlation_id"]
    if not case.fixed_ids:
        assert UUID_RE.match(headers["id"]) and uuid.UUID(headers["id"]).version == 4
    if "eta" in case.volatile_headers:  # countdown=10
        eta = datetime.fromisoformat(headers["eta"])
        assert eta.utcoffset() == timedelta(0), "countdown ETAs are in the app time zone (UTC)"
        assert before + timedelta(seconds=10) <= eta <= after + timedelta(seconds=10)
    if "expires" in case.volatile_headers:  # expires=60
        expires = datetime.fromisoformat(headers["expires"])
        assert before + timedelta(seconds=60) <= expires <= after + timedelta(seconds=60)
    if "expiration" in case.volatile_properties:
        expires = datetime.fromisoformat(headers["expires"])
        low, high = (expires - after).total_seconds() * 1000, (expires - before).total_seconds() * 1000
        assert isinstance(properties["expiration"], str)
        assert low - 1 <= int(properties["expiration"]) <= high + 1


@pytest.mark.redis
def test_json_special_types_body_shape(spec_app: App, redis_client: Any) -> None:
    """The tagged JSON objects round-trip: same body shape as Celery's, same values back."""
    vector = load_vector("messages/json_special_types.json")["messages"][0]
    SEND_CASES["json_special_types"].call(spec_app)
    (ours,) = pushed_messages(redis_client)["celery"]
    assert json.loads(payload_of(ours)) == vector["decoded_body"]
    args, kwargs, _ = decode_body(ours)
    assert (args, kwargs) == ([list(JSON_SPECIAL_ARGS[0]), None], {})


# Celery's saferepr (celery.utils.saferepr, maxlen 1024, maxlevels 3) of task arguments, as it
# appears in the argsrepr/kwargsrepr headers. Captured from Celery 5.7.0.
CELERY_REPRS = [
    pytest.param((2, 3), "(2, 3)", id="tuple"),
    pytest.param([1, 2], "[1, 2]", id="list"),
    pytest.param((7,), "(7,)", id="one-tuple"),
    pytest.param({}, "{}", id="empty-dict"),
    pytest.param({"greeting": "hi", "punct": "?"}, "{'greeting': 'hi', 'punct': '?'}", id="kwargs"),
    pytest.param({"b": 1, "a": 2}, "{'b': 1, 'a': 2}", id="dict-insertion-order"),
    pytest.param((b"raw-bytes", b"\xff\x00"), "(b'raw-bytes', b'ff00')", id="binary-bytes-as-hex"),
    pytest.param(([[[[1]]]],), "([[[...]]],)", id="maxlevels-3"),
    pytest.param(("it's",), "('it\\'s',)", id="quote-escaping"),
    pytest.param((1.5, None, True, Decimal("1.10")), "(1.5, None, True, Decimal('1.10'))", id="scalars"),
]


@pytest.mark.parametrize(("value", "celery_repr"), CELERY_REPRS)
def test_argsrepr_matches_celery_saferepr(value: Any, celery_repr: str) -> None:
    assert saferepr(value) == celery_repr
