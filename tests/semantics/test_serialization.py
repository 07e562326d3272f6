"""Serialization: json (with Celery's encodings of datetime, UUID, Decimal, bytes), pickle, yaml,
msgpack, compression, and content types a worker must refuse.

Celery 5.7 round-trips the arguments of an eager call through the task serializer too, so an
argument that could not be sent fails eagerly as well, and arrives with the same types.
"""

from __future__ import annotations

import logging
import uuid
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from kombu.exceptions import ContentDisallowed, EncodeError

from taskq import signals, states
from taskq.exceptions import BackendGetMetaError

from .conftest import WORKER_MODES, Env
from .helpers import Boom, Point, wait_until


def test_json_round_trips_rich_types(env: Env) -> None:
    values = {
        "datetime": datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=timezone.utc),
        "date": date(2024, 5, 17),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "decimal": Decimal("10.25"),
        "bytes": b"\x00\xffraw",
    }
    seen: dict[str, type] = {}

    @env.app.task
    def echo(data: dict[str, Any]) -> dict[str, Any]:
        seen.update({k: type(v) for k, v in data.items()})
        return data

    with env.worker():
        back = echo.delay(values).get(timeout=10)
    assert seen == {k: type(v) for k, v in values.items()}
    assert back == values
    assert {k: type(v) for k, v in back.items()} == {k: type(v) for k, v in values.items()}


def test_unserializable_argument_fails_at_the_call(env: Env) -> None:
    @env.app.task
    def echo(value: Any) -> Any:
        return value

    with pytest.raises(EncodeError):
        echo.delay(object())


def test_arguments_arrive_as_the_serializer_delivers_them(env: Env) -> None:
    seen: list[Any] = []

    @env.app.task
    def echo(value: Any) -> None:
        seen.append(value)

    with env.worker():
        echo.delay((1, 2)).get(timeout=10)
    assert seen == [[1, 2]]  # JSON has no tuples: a list, in a worker and eagerly


SIMPLE = {"n": 1, "s": "text", "l": [1, 2], "f": 1.5, "none": None, "nested": {"k": ["v"]}}


@pytest.mark.parametrize("serializer", ["json", "pickle", "yaml", "msgpack"])
def test_serializers_round_trip(env: Env, serializer: str) -> None:
    env.app.conf.update(
        task_serializer=serializer,
        result_serializer=serializer,
        accept_content=[serializer],
        result_accept_content=[serializer],
    )

    @env.app.task
    def echo(data: Any) -> Any:
        return data

    @env.app.task
    def fail() -> None:
        raise Boom("serialized", 1)

    with env.worker():
        assert echo.delay(SIMPLE).get(timeout=10) == SIMPLE
        with pytest.raises(Boom) as caught:
            fail.delay().get(timeout=10)
        assert caught.value.args == ("serialized", 1)


def test_pickle_carries_objects(env: Env) -> None:
    env.app.conf.update(
        task_serializer="pickle",
        result_serializer="pickle",
        accept_content=["pickle", "json"],
        result_accept_content=["pickle"],
    )

    @env.app.task
    def move(p: Point, dx: int) -> Point:
        assert isinstance(p, Point)
        return Point(p.x + dx, p.y)

    with env.worker():
        assert move.delay(Point(1, 2), 10).get(timeout=10) == Point(11, 2)


def test_per_task_and_per_call_serializer(env: Env) -> None:
    env.app.conf.accept_content = ["json", "pickle"]
    env.app.conf.result_accept_content = ["json", "pickle"]

    @env.app.task(serializer="pickle")
    def pickled(p: Point) -> int:
        return p.x

    @env.app.task
    def plain(p: Any) -> int:
        return int(p.x)

    with env.worker():
        assert pickled.delay(Point(3, 4)).get(timeout=10) == 3
        assert plain.apply_async((Point(5, 6),), serializer="pickle").get(timeout=10) == 5
        with pytest.raises(EncodeError):
            plain.delay(Point(7, 8))  # json by default


@pytest.mark.parametrize("compression", ["zlib", "bzip2", "gzip", "lzma"])
def test_task_compression(env: Env, compression: str, connect: Any) -> None:
    env.app.conf.task_compression = compression
    headers: list[dict[str, Any]] = []

    @env.app.task
    def echo(data: Any) -> Any:
        return data

    connect(signals.after_task_publish, lambda **kw: headers.append(dict(kw["headers"])), sender=echo.name)
    payload = {"text": "x" * 5000}
    with env.worker():
        assert echo.delay(payload).get(timeout=10) == payload
    if not env.eager:
        from kombu.compression import get_encoder

        assert headers[0]["compression"] == get_encoder(compression)[1]


@pytest.mark.parametrize("mode", WORKER_MODES)
def test_a_message_of_a_refused_content_type_is_rejected_not_run(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    runs: list[Any] = []
    env.app.conf.accept_content = ["json"]

    @env.app.task
    def record(value: Any) -> None:
        runs.append(value)

    with env.worker():
        refused = record.apply_async(("pickled",), serializer="pickle")
        wait_until(
            lambda: any("Refused message" in r.getMessage() for r in caplog.records),
            what="the refusal in the log",
        )
        record.delay("json").get(timeout=10)  # the worker carries on
    env.stop_worker()
    assert runs == ["json"]
    assert refused.state == states.PENDING
    assert env.queue_size() == 0  # rejected without requeue: not waiting to be refused again


@pytest.mark.parametrize("mode", WORKER_MODES)
def test_result_accept_content(env: Env) -> None:
    env.app.conf.update(result_serializer="pickle", result_accept_content=["json"])

    @env.app.task
    def add(x: int, y: int) -> int:
        return x + y

    with env.worker():
        result = add.delay(1, 2)
        with pytest.raises((ContentDisallowed, BackendGetMetaError)):
            result.get(timeout=10)
