"""Taking Redis messages atomically (taskq/broker/redis_fetch.py), on the local Redis.

A kombu connection with taskq's Redis transport, as a worker has; what Redis holds is read
with a plain client, so "recorded before delivery" is checked on the server, not on our books.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue

from taskq.broker import redis_leases, redis_recovery

pytestmark = pytest.mark.redis


@pytest.fixture
def queue() -> Queue:
    name = f"fetch-{uuid.uuid4().hex[:8]}"
    return Queue(name, Exchange(name, "direct"), routing_key=name)


@pytest.fixture
def connection(redis_url: str, redis_client: Any) -> Iterator[Connection]:
    conn = Connection(redis_url, transport=redis_leases.Transport)
    yield conn
    conn.release()


def publish(connection: Connection, queue: Queue, bodies: list[Any]) -> None:
    with connection.clone() as conn:
        producer = Producer(conn.default_channel)
        for body in bodies:
            producer.publish(body, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue])


def drain(connection: Connection, seconds: float = 2.0) -> None:
    try:
        connection.drain_events(timeout=seconds)
    except TimeoutError:
        pass


def owners(redis_client: Any) -> dict[bytes, bytes]:
    return dict(redis_client.hgetall(redis_recovery.OWNERS_KEY))


def test_a_message_is_recorded_as_unacked_and_owned_before_the_process_sees_it(
    connection: Connection, queue: Queue, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What kombu's BRPOP leaves to a second round trip, in which a kill -9 loses the message."""
    publish(connection, queue, ["first"])
    seen_on_redis: list[tuple[bool, bool, int]] = []
    transport = connection.transport
    deliver = transport._deliver

    def checking_deliver(message: dict[str, Any], queue_name: str) -> None:
        tag = message["properties"]["delivery_tag"]
        seen_on_redis.append(
            (
                redis_client.hexists("unacked", tag),
                redis_client.hexists(redis_recovery.OWNERS_KEY, tag),
                redis_client.llen(queue.name),
            )
        )
        deliver(message, queue_name)

    monkeypatch.setattr(transport, "_deliver", checking_deliver)
    got: list[Any] = []
    with Consumer(connection.default_channel, [queue], callbacks=[lambda body, m: got.append((body, m))]):
        drain(connection)
    assert [body for body, _ in got] == ["first"]
    assert seen_on_redis == [(True, True, 0)]
    got[0][1].ack()
    assert redis_client.hlen("unacked") == 0 and not owners(redis_client)


def test_one_round_trip_takes_what_the_consumer_wants_and_no_more(
    connection: Connection, queue: Queue, redis_client: Any
) -> None:
    publish(connection, queue, list(range(10)))
    channel = connection.default_channel
    got: list[int] = []
    consumer = Consumer(channel, [queue], callbacks=[lambda body, m: got.append(body)])
    channel.qos.fetch_budget = lambda: 3 - len(got)  # as the worker's prefetch rule sets it
    with consumer:
        drain(connection, 1.0)
    assert got == [0, 1, 2]  # in publish order, taken together
    assert redis_client.llen(queue.name) == 7
    assert redis_client.hlen("unacked") == 3
    assert set(owners(redis_client).values()) == {channel.qos.lease.id.encode()}


def test_a_batch_cut_short_puts_the_rest_back_in_order_unrecorded(
    connection: Connection, queue: Queue, redis_client: Any
) -> None:
    publish(connection, queue, ["a", "b", "c", "d"])
    channel = connection.default_channel

    def explode(body: Any, message: Any) -> None:
        raise RuntimeError(f"consumer failed on {body}")

    with Consumer(channel, [queue], callbacks=[explode]), pytest.raises(RuntimeError, match="on a"):
        connection.drain_events(timeout=2)
    # "a" was delivered (it is the consumer's to settle); b, c, d are back, next in line, as pushed
    assert redis_client.hlen("unacked") == 1
    assert len(owners(redis_client)) == 1
    got: list[str] = []
    with Consumer(channel, [queue], callbacks=[lambda body, m: (got.append(body), m.ack())]):
        for _ in range(3):
            drain(connection, 1.0)
    assert got == ["b", "c", "d"]


def test_messages_of_a_no_ack_consumer_are_not_recorded(
    connection: Connection, queue: Queue, redis_client: Any
) -> None:
    publish(connection, queue, ["x", "y"])
    got: list[str] = []
    with Consumer(connection.default_channel, [queue], callbacks=[lambda b, m: got.append(b)], no_ack=True):
        drain(connection, 1.0)
    assert got == ["x", "y"]
    assert redis_client.hlen("unacked") == 0 and not owners(redis_client)


def test_an_idle_consumer_waits_without_taking_and_wakes_for_a_new_message(
    connection: Connection, queue: Queue, redis_client: Any
) -> None:
    got: list[str] = []
    with Consumer(connection.default_channel, [queue], callbacks=[lambda b, m: got.append(b)]):
        drain(connection, 1.5)  # empty: the fetch finds nothing, then BLMOVE waits
        assert got == []
        publish(connection, queue, ["late"])
        drain(connection, 3.0)
    assert got == ["late"]
    assert redis_client.hlen("unacked") == 1


def test_a_flushed_script_cache_is_reloaded(connection: Connection, queue: Queue, redis_client: Any) -> None:
    """A Redis restart empties the script cache: the next fetch loads the script again."""
    publish(connection, queue, ["before"])
    got: list[str] = []
    with Consumer(connection.default_channel, [queue], callbacks=[lambda b, m: (got.append(b), m.ack())]):
        drain(connection, 1.0)
        redis_client.script_flush()
        publish(connection, queue, ["after"])
        for _ in range(3):
            drain(connection, 1.0)
    assert got == ["before", "after"]


def test_messages_whose_fetch_reply_was_lost_go_back_once_the_process_reconnects(
    connection: Connection, queue: Queue, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis killed after running the fetch, before its reply left: the messages are recorded as
    taken by this live process, which never saw them. Its lease keeps them from other workers,
    so the process itself must put them back (the fault suite's restart-under-load lost one)."""
    publish(connection, queue, ["m1", "m2", "m3"])
    channel = connection.default_channel
    parse = channel.client.parse_response

    def reply_lost(conn: Any, command: str, **options: Any) -> Any:
        reply = parse(conn, command, **options)  # Redis ran it all...
        if command == "FETCH":
            raise redis.ConnectionError("Connection closed by server.")  # ...and then died
        return reply

    monkeypatch.setattr(channel.client, "parse_response", reply_lost)
    never = Consumer(channel, [queue], callbacks=[lambda b, m: pytest.fail(f"delivered {b}")])
    with never, pytest.raises(redis.ConnectionError):
        connection.drain_events(timeout=2)
    monkeypatch.undo()
    assert redis_client.llen(queue.name) == 0 and len(owners(redis_client)) == 3
    assert channel.qos.lease.fetch_in_doubt

    got: list[str] = []
    with connection.clone() as again:  # the worker's new connection
        fresh = again.default_channel
        with Consumer(fresh, [queue], callbacks=[lambda b, m: (got.append(b), m.ack())]):
            assert fresh.qos.recover() == 3
            for _ in range(4):
                drain(again, 1.0)
    assert sorted(got) == ["m1", "m2", "m3"]
    assert redis_client.hlen("unacked") == 0 and not owners(redis_client)
    assert not channel.qos.lease.fetch_in_doubt


def test_a_reclaim_leaves_what_the_process_holds(
    connection: Connection, queue: Queue, redis_client: Any
) -> None:
    publish(connection, queue, ["held"])
    channel = connection.default_channel
    got: list[Any] = []
    with Consumer(channel, [queue], callbacks=[lambda b, m: got.append(m)]):
        drain(connection, 1.0)
        assert len(got) == 1
        channel.qos.lease.fetch_in_doubt = True
        assert channel.qos.recover() == 0  # held, unacked: not lost
        assert redis_client.llen(queue.name) == 0 and len(owners(redis_client)) == 1
        got[0].ack()
