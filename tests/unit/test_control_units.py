"""Remote control pieces that need no broker: stamp matching, secret masking, JSON-safe replies."""

from __future__ import annotations

import datetime
import warnings
from types import SimpleNamespace
from typing import Any

import pytest
from kombu import Exchange, Queue

from taskq import Celery
from taskq.control import DuplicateNodenameWarning, Inspect, flatten_reply
from taskq.worker.inspect import MASK, filter_hidden, hello, jsonable, registered, settings_table
from taskq.worker.revoked import Revoked


def test_stamps_match_scalars_and_lists_on_both_sides() -> None:
    revoked = Revoked()
    assert not revoked.stamped({"stamped_headers": ["batch"], "stamps": {"batch": "b1"}})
    revoked.add_stamps({"batch": "b1", "tenant": ["t1", "t2"]})
    assert revoked.stamped({"stamped_headers": ["batch"], "stamps": {"batch": "b1"}})
    assert revoked.stamped({"stamped_headers": ["tenant"], "stamps": {"tenant": ["x", "t2"]}})
    assert not revoked.stamped({"stamped_headers": ["batch"], "stamps": {"batch": "b2"}})
    assert not revoked.stamped({"stamps": {"batch": "b1"}})  # not listed in stamped_headers
    assert not revoked.stamped({"stamped_headers": ["tenant"], "stamps": {}})
    assert Revoked.stamp_hits(
        {"tenant": ["t1"]}, {"stamped_headers": ["tenant"], "stamps": {"tenant": ["t1"]}}
    ) == [("tenant", "t1")]


def test_secrets_are_masked_as_celery_masks_them() -> None:
    masked = filter_hidden(
        {
            "broker_url": "amqp://user:pw@host:5672//",
            "result_backend": "redis://:pw@host/0",
            "security_key": "private",
            "database_url": "postgres://x",
            "broker_transport_options": {"password": "pw", "visibility_timeout": 10},
            "task_default_queue": "celery",
        }
    )
    assert masked["broker_url"] == f"amqp://user:{MASK}@host:5672//"
    assert masked["result_backend"] == f"redis://:{MASK}@host/0"
    assert masked["security_key"] == masked["database_url"] == MASK
    assert masked["broker_transport_options"] == {"password": MASK, "visibility_timeout": 10}
    assert masked["task_default_queue"] == "celery"


def test_conf_table_lists_changes_or_everything() -> None:
    app = Celery("units", broker="redis://:secret@localhost/3", set_as_current=False)
    app.conf.worker_concurrency = 3
    changes = settings_table(app)
    assert changes["worker_concurrency"] == 3 and "secret" not in changes["broker_url"]
    assert "task_serializer" not in changes
    assert settings_table(app, with_defaults=True)["task_serializer"] == "json"


def test_jsonable_turns_what_json_cannot_carry_into_text() -> None:
    value = jsonable(
        {
            "when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
            "span": datetime.timedelta(seconds=90),
            "queue": Queue("q", Exchange("q"), "q"),
            "set": {1},
            "fn": len,
            "__private": 1,
        },
        keyfilter=lambda k: not k.startswith("__"),
    )
    assert value["when"] == "2026-01-02T03:04:05+00:00" and value["span"] == "0:01:30"
    assert value["queue"]["name"] == "q" and value["queue"]["exchange"]["type"] == "direct"
    assert value["set"] == [1] and value["fn"] == "<built-in function len>" and "__private" not in value


def test_registered_shows_set_attributes_and_hides_builtins() -> None:
    app = Celery("units", set_as_current=False)

    @app.task(name="units.slow", rate_limit="1/m")
    def slow() -> None: ...

    consumer: Any = SimpleNamespace(app=app)
    # (other tests' shared tasks are registered on every app too: only ours is looked at)
    assert "units.slow [rate_limit=1/m]" in registered(consumer)
    assert "units.slow [rate_limit=1/m max_retries=3]" in registered(
        consumer, ["rate_limit", "_private", "max_retries"]
    )
    assert not any(name.startswith("celery.") for name in registered(consumer))
    assert "celery.chord_unlock" in registered(consumer, builtins=True)


def test_hello_merges_revoked_ids_from_either_celery_format() -> None:
    app = Celery("units", set_as_current=False)
    consumer: Any = SimpleNamespace(app=app, hostname="me@host", revoked=Revoked())
    assert hello(consumer, from_node="me@host", revoked=["x"]) is None  # its own broadcast
    reply = hello(consumer, from_node="celery@other", revoked=["a", "b"])
    assert reply is not None and reply["revoked"] == ["a", "b"] and reply["clock"] > 0
    reply = hello(consumer, from_node="celery@old", revoked={"c": 1700000000.0})  # <= 5.6
    assert reply is not None and reply["revoked"] == ["a", "b", "c"]


def test_inspect_shapes_replies_as_celery() -> None:
    app = Celery("units", set_as_current=False)
    replies = [{"a@h": {"ok": "pong"}}, {"b@h": {"ok": "pong"}}]
    assert Inspect(app=app)._prepare(replies) == {"a@h": {"ok": "pong"}, "b@h": {"ok": "pong"}}
    assert Inspect(destination="b@h", app=app)._prepare(replies) == {"ok": "pong"}
    assert Inspect(app=app, pattern="a@.*", matcher="pcre")._prepare(replies) == {"a@h": {"ok": "pong"}}
    assert Inspect(app=app)._prepare([]) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert flatten_reply([{"a@h": 1}, {"a@h": 2}]) == {"a@h": 2}
    assert [w.category for w in caught] == [DuplicateNodenameWarning]


def test_control_refuses_a_durable_exclusive_control_queue() -> None:
    app = Celery("units", set_as_current=False)
    app.conf.control_queue_durable = True
    with pytest.raises(Exception, match="cannot both be True"):
        app.control.ping()
