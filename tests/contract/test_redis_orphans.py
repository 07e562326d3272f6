"""A Redis message taken off its queue as the server goes away is given back, not lost.

kombu's Redis transport takes a message (BRPOP) and records it as unacked in a second round trip;
here the second one fails as it would if Redis died in between, and the worker's guard puts the
message back at the head of its queue on the next connection.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from taskq.worker import prefetch


def test_message_lost_between_brpop_and_unacked_record_is_restored(redis_url: str, redis_client: Any) -> None:
    name = f"orphan-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, "direct"), routing_key=name)
    orphans: list[tuple[Any, str, str]] = []
    received: list[Any] = []
    with Connection(redis_url) as conn:
        channel = conn.channel()
        Producer(channel).publish({"n": 1}, exchange=queue.exchange, routing_key=name, declare=[queue])
        Producer(channel).publish({"n": 2}, exchange=queue.exchange, routing_key=name)
        assert redis_client.llen(name) == 2

        def unreachable(message: Any, delivery_tag: Any) -> None:
            raise ConnectionError("Redis went away after BRPOP")

        channel.qos.append = unreachable  # what kombu's QoS.append hits when Redis is gone
        prefetch.keep_orphans(channel, orphans)
        consumer = Consumer(channel, queues=[queue], callbacks=[lambda body, m: received.append(body)])
        consumer.consume()
        with pytest.raises(ConnectionError):
            conn.drain_events(timeout=5)
        assert received == []
        assert redis_client.llen(name) == 1  # the first message is in no queue and no hash
        assert len(orphans) == 1
    with Connection(redis_url) as conn:
        channel = conn.channel()
        assert prefetch.restore_orphans(channel, orphans) == 1
        assert orphans == []
        assert redis_client.llen(name) == 2
        bodies: list[Any] = []
        redelivered: list[bool] = []

        def on_message(body: Any, message: Any) -> None:
            bodies.append(body)
            redelivered.append(bool(message.delivery_info.get("redelivered")))
            message.ack()

        with Consumer(channel, queues=[queue], callbacks=[on_message]):
            while len(bodies) < 2:
                conn.drain_events(timeout=5)
        assert bodies == [{"n": 1}, {"n": 2}]  # back at the head, in order
        assert redelivered == [True, False]
    redis_client.delete(name)
