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

from taskq.broker import redis_fetch, redis_leases, redis_recovery

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


def take(conn: Connection, queue: Queue, bodies: list[Any]) -> list[Any]:
    """Publish ``bodies`` and take them all (unacked) on ``conn``'s default channel."""
    publish(conn, queue, bodies)
    got: list[Any] = []
    with Consumer(conn.default_channel, [queue], callbacks=[lambda body, m: got.append(m)]):
        while len(got) < len(bodies):
            drain(conn, 1.0)
    return got


def past_the_checked_ack(connection: Connection, queue: Queue, bodies: list[Any]) -> tuple[Any, list[Any]]:
    """Take ``bodies`` and ack the first: the channel's one waited-for ack (does Redis run the
    script?), after which acks are written unwaited. The channel and the messages, all held."""
    got = take(connection, queue, bodies)
    got[0].ack()
    return connection.default_channel, got


def traces(redis_client: Any, prefix: str = "") -> tuple[int, int, int]:
    return (
        redis_client.hlen(prefix + "unacked"),
        redis_client.zcard(prefix + "unacked_index"),
        redis_client.hlen(prefix + redis_recovery.OWNERS_KEY),
    )


def ack_unanswered(channel: Any, messages: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Ack ``messages`` as if written just before Redis died: never applied, the connection
    then dropped with every reply owed."""
    conn = channel.acks._connection()
    with monkeypatch.context() as patch:
        patch.setattr(conn, "send_command", lambda *a, **k: None)  # "written", never arrives
        for message in messages:
            message.ack()
    conn.disconnect()


@pytest.mark.parametrize("prefix", ["", "pfx:"])
def test_acks_are_one_command_each_and_only_the_first_is_waited_for(
    redis_url: str, redis_client: Any, queue: Queue, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu acks with MULTI ZREM HDEL (HDEL) EXEC from a pooled connection, waiting each time;
    taskq with one script, the first on the channel's own connection (does the server run
    scripts?), the rest written on the ack connection with their replies read later."""
    options = {"global_keyprefix": prefix} if prefix else {}
    conn = Connection(redis_url, transport=redis_leases.Transport, transport_options=options)
    try:
        got = take(conn, queue, ["a", "b", "c", "d"])
        channel = conn.default_channel
        assert traces(redis_client, prefix) == (4, 4, 4)
        sent: list[str] = []
        with channel.conn_or_acquire() as client:
            execute = client.execute_command
            monkeypatch.setattr(
                client, "execute_command", lambda *a, **k: sent.append(a[0]) or execute(*a, **k)
            )
        for message in got:
            message.ack()
        assert sent == ["EVAL"]
        assert len(channel.acks.waiting) == 3  # written, replies not read yet
        assert set(channel.qos.lease.unconfirmed) == {m.delivery_tag for m in got[1:]}
        channel.acks.confirm()
        assert not channel.acks.waiting and not channel.qos.lease.unconfirmed
        assert traces(redis_client, prefix) == (0, 0, 0)
    finally:
        conn.release()


def test_acks_whose_replies_were_lost_are_written_again_and_never_reclaimed(
    connection: Connection, queue: Queue, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dies after an ack was written, before Redis applied it (Redis killed):
    the message's task is running, so it must be acked again, never put back."""
    channel, got = past_the_checked_ack(connection, queue, ["a", "b", "c"])
    ack_unanswered(channel, got[1:], monkeypatch)
    lease = channel.qos.lease
    assert set(lease.unconfirmed) == {got[1].delivery_tag, got[2].delivery_tag}
    assert traces(redis_client) == (2, 2, 2)  # Redis never saw those acks
    lease.fetch_in_doubt = True  # and a fetch reply was lost too: the reclaim must skip them
    # meanwhile "c" was put back and taken by another process (this one was cut off too long):
    redis_client.hset(redis_recovery.OWNERS_KEY, got[2].delivery_tag, "another-process")
    redis_client.set(redis_recovery.LEASE_PREFIX + "another-process", 1, ex=30)  # alive
    channel.qos.recover()
    assert not lease.unconfirmed
    assert traces(redis_client) == (1, 1, 1), "the other process' record of c must stay"
    assert redis_client.hget(redis_recovery.OWNERS_KEY, got[2].delivery_tag) == b"another-process"
    assert redis_client.llen(queue.name) == 0, "a running task's message was put back"


def test_an_ack_that_could_not_be_written_leaves_the_message_to_go_back(
    connection: Connection, queue: Queue, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel, got = past_the_checked_ack(connection, queue, ["a", "b"])
    conn = channel.acks._connection()

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("connection reset")

    monkeypatch.setattr(conn, "send_command", refuse)
    with pytest.raises(redis.ConnectionError):
        got[1].ack()
    assert not channel.qos.lease.unconfirmed  # not in doubt: it was never sent
    assert got[1].delivery_tag in channel.qos._delivered  # still held: restored with the rest
    monkeypatch.undo()
    channel.qos.restore_unacked_once()
    assert traces(redis_client) == (0, 0, 0) and redis_client.llen(queue.name) == 1


def test_an_ack_refused_after_the_first_is_done_again_the_kombu_way(
    connection: Connection, queue: Queue, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskq.broker import redis_acks

    channel, got = past_the_checked_ack(connection, queue, ["a", "b"])
    monkeypatch.setattr(redis_acks, "ACK_SCRIPT", "return redis.error_reply('ERR scripts switched off')")
    got[1].ack()
    channel.acks.confirm()
    assert not channel._ack_script_ok
    assert traces(redis_client) == (0, 0, 0)
    assert not channel.qos.lease.unconfirmed


def test_a_server_refusing_scripts_gets_kombus_ack(
    connection: Connection, queue: Queue, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.exceptions import ResponseError

    publish(connection, queue, ["a", "b"])
    channel = connection.default_channel
    got: list[Any] = []
    with Consumer(channel, [queue], callbacks=[lambda body, m: got.append(m)]):
        drain(connection, 1.0)
    with channel.conn_or_acquire() as client:
        execute = client.execute_command

        def no_scripts(*args: Any, **kwargs: Any) -> Any:
            if args[0] == "EVAL":
                raise ResponseError("NOSCRIPT scripting is disabled here")
            return execute(*args, **kwargs)

        monkeypatch.setattr(client, "execute_command", no_scripts)
    for message in got:
        message.ack()
    assert not channel._ack_script_ok
    assert redis_client.hlen("unacked") == 0 and redis_client.zcard("unacked_index") == 0
    assert not owners(redis_client)


def test_unanswered_acks_are_written_again_the_kombu_way_when_scripts_are_refused(
    connection: Connection, queue: Queue, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ack owed by a dead connection, and by then a server that refuses the script: the
    re-write falls back to kombu's deletions instead of failing every upkeep."""
    from taskq.broker import redis_acks

    channel, got = past_the_checked_ack(connection, queue, ["a", "b"])
    ack_unanswered(channel, got[1:], monkeypatch)
    monkeypatch.setattr(redis_acks, "ACK_SCRIPT", "return redis.error_reply('ERR scripts switched off')")
    channel.qos.recover()
    assert not channel._ack_script_ok
    assert not channel.qos.lease.unconfirmed
    assert traces(redis_client) == (0, 0, 0)


def test_the_cached_fetch_bytes_are_what_redis_py_would_send(connection: Connection) -> None:
    """packed_fetch builds the command by hand; it must match redis-py's encoding byte for byte,
    for any queue name, lease and count, and follow a change of lease."""
    channel = connection.default_channel
    keys = ["queue-é", "queue-é\x06\x163", "plain"]
    record = [True, False, True]
    client_connection = channel.client.connection_pool.get_connection()
    try:
        for want, now in [(1, 1700000000.123456), (64, 0.5), (7, 1e-7)]:
            expected = b"".join(
                client_connection.pack_command(*redis_fetch.fetch_command(channel, keys, record, want, now))
            )
            assert redis_fetch.packed_fetch(channel, keys, record, want, now) == expected
        lease = channel.qos.lease
        old_id = lease.id
        lease.id = f"{old_id}-renewed"
        try:
            assert redis_fetch.packed_fetch(channel, keys, record, 3, 1.0) == b"".join(
                client_connection.pack_command(*redis_fetch.fetch_command(channel, keys, record, 3, 1.0))
            )
            assert lease.id.encode() in redis_fetch.packed_fetch(channel, keys, record, 3, 1.0)
        finally:
            lease.id = old_id
    finally:
        channel.client.connection_pool.release(client_connection)
