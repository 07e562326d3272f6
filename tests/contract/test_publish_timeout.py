"""``publish_timeout`` and ``broker_confirm_publish`` against real brokers (and a dead port).

A broker that does not answer must cost a publish at most ``publish_timeout`` and end in
``PublishError`` (an ``OperationalError``), even under a retry policy that would retry forever.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from e2e.helpers import wait_for
from faults.servers import free_port

from taskq import Celery
from taskq.exceptions import OperationalError, PublishError

FOREVER = {"max_retries": None, "interval_start": 0.2, "interval_step": 0.2, "interval_max": 0.5}
SLACK = 1.5  # seconds past the timeout a publish may end: one connect attempt in flight


def app_for(broker: str, **settings: Any) -> Celery:
    return Celery(
        "publishing", broker=broker, set_as_current=False, task_default_queue=f"pub-{uuid.uuid4().hex[:8]}",
        broker_connection_timeout=1, **settings,
    )  # fmt: skip


@pytest.mark.parametrize("scheme", ["redis://127.0.0.1:{port}/0", "amqp://guest:guest@127.0.0.1:{port}//"])
def test_a_dead_broker_ends_in_publish_error_within_the_timeout(scheme: str) -> None:
    app = app_for(scheme.format(port=free_port()), publish_timeout=2.0, task_publish_retry_policy=FOREVER)
    try:
        started = time.monotonic()
        with pytest.raises(PublishError) as caught:
            app.send_task("anything")
        took = time.monotonic() - started
    finally:
        app.close()
    assert isinstance(caught.value, OperationalError)  # code catching Celery's error still works
    assert "publish_timeout=2" in str(caught.value)
    assert took < 2.0 + SLACK, took


def test_without_retry_one_attempt_only() -> None:
    app = app_for(f"redis://127.0.0.1:{free_port()}/0", publish_timeout=30.0, task_publish_retry=False)
    try:
        started = time.monotonic()
        with pytest.raises(PublishError):
            app.send_task("anything")
        assert time.monotonic() - started < 5.0  # one 1 s connect, not 30 s of retries
    finally:
        app.close()


def test_bad_timeout_is_a_clear_error(redis_url: str) -> None:
    app = app_for(redis_url, publish_timeout=0)
    try:
        with pytest.raises(ValueError, match="publish_timeout"):
            app.send_task("anything")
    finally:
        app.close()


def test_redis_publish_within_the_timeout_works(redis_url: str, redis_client: Any) -> None:
    app = app_for(redis_url, publish_timeout=5.0)
    try:
        app.send_task("anything", task_id="t-1")
        assert redis_client.llen(app.conf.task_default_queue) == 1
    finally:
        app.close()


def test_rabbitmq_confirm_publish_is_set_and_works(amqp_url: str) -> None:
    app = app_for(amqp_url, broker_confirm_publish=True, publish_timeout=5.0)
    try:
        assert app.broker.new_connection().transport_options["confirm_publish"] is True
        app.send_task("anything", task_id="t-2")
        queue = app.conf.task_default_queue
        with app.broker.connection.clone() as conn:
            channel = conn.default_channel
            got = wait_for(lambda: channel.basic_get(queue, no_ack=True), 5, "the confirmed message")
            assert got.headers["id"] == "t-2"
            channel.queue_delete(queue)
    finally:
        app.close()


def test_confirm_publish_only_reaches_amqp() -> None:
    app = app_for("redis://127.0.0.1:1/0", broker_confirm_publish=True)
    try:
        assert "confirm_publish" not in app.broker.new_connection().transport_options
    finally:
        app.close()
