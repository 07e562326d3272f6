"""The publish fast path (issue 9): what it caches, and that every cache is dropped when it must be.

A send reuses its producer's channel, skips declaring a queue its connection already declared,
and (Redis) sends through one pinned connection per channel. Each test checks the saving holds
*and* the case where it must not: a failed send, a new connection, a forked child, many threads.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

import kombu
import pytest
from fork_support import wait_child

from taskq import Celery
from taskq.message import origin_name


def make_app(url: str, **conf: Any) -> tuple[Celery, Any, str]:
    app = Celery("publishpath", broker=url)
    queue = f"pp-{uuid.uuid4().hex[:8]}"
    app.conf.task_default_queue = queue
    app.conf.update(conf)

    @app.task(ignore_result=True)
    def add(x: int, y: int) -> int:
        return x + y

    return app, add, queue


def waiting(redis_client: Any, queue: str) -> int:
    return int(redis_client.llen(queue))


@pytest.mark.redis
def test_a_queue_is_declared_once_per_connection_and_again_on_a_new_one(
    redis_url: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, add, queue = make_app(redis_url)
    binds = []
    real_bind = kombu.Queue.bind
    monkeypatch.setattr(kombu.Queue, "bind", lambda self, ch: binds.append(self.name) or real_bind(self, ch))
    for _ in range(20):
        add.delay(1, 2)
    assert binds.count(queue) == 1, binds  # kombu alone copies the queue on every send
    assert waiting(redis_client, queue) == 20
    redis_client.delete(f"_kombu.binding.{queue}")  # as if Redis lost its routing table
    app.close()  # a new connection must not trust the old one's declarations
    add.delay(1, 2)
    assert binds.count(queue) == 2
    assert redis_client.smembers(f"_kombu.binding.{queue}"), "the queue was not declared again"
    assert waiting(redis_client, queue) == 21
    app.close()


@pytest.mark.redis
def test_a_producer_keeps_its_channel_until_a_send_fails(redis_url: str, redis_client: Any) -> None:
    """kombu's pool re-binds a producer on every acquire; here only after a failed send (which
    may have left its connection dead: re-binding goes through kombu's reconnect)."""
    app, add, queue = make_app(redis_url, broker_pool_limit=1)
    add.delay(1, 2)
    with app.broker.producers.acquire(block=True) as producer:
        first = producer.channel
        revived: list[Any] = []
        real_revive = producer.revive
        producer.revive = lambda channel: revived.append(channel) or real_revive(channel)
    for _ in range(3):
        add.delay(1, 2)
    with app.broker.producers.acquire(block=True) as producer:
        assert producer.channel is first and not revived

        def broken(*args: Any, **kwargs: Any) -> None:
            raise ConnectionError("the broker went away")

        producer.publish = broken  # this producer's next send fails
    with pytest.raises(Exception, match="went away"):
        app.broker.publish(*_message(app, add, queue), serializer="json", retry=False)
    with app.broker.producers.acquire(block=True) as producer:
        del producer.publish
        assert len(revived) == 1  # unpinned by the failure: bound to a connection again
    add.delay(1, 2)
    assert len(revived) == 1
    assert waiting(redis_client, queue) == 5
    app.close()


def _message(app: Celery, task: Any, queue: str) -> tuple[Any, Any]:
    from taskq.message import build

    message = build(task.name, str(uuid.uuid4()), (1, 2), {})
    return message, app.broker.router.destination({"queue": queue})


@pytest.mark.redis
def test_an_unbounded_producer_pool_leaves_no_connection_open(redis_url: str, redis_client: Any) -> None:
    """``broker_pool_limit = 0`` keeps nothing: a pinned connection would be one leaked per send."""
    app, add, queue = make_app(redis_url, broker_pool_limit=0)
    name = f"pp-{uuid.uuid4().hex[:6]}"
    before = _clients(redis_client)
    for _ in range(30):
        add.delay(1, 2)
    assert waiting(redis_client, queue) == 30
    assert _clients(redis_client) - before < 5, f"{name}: connections piled up"
    app.close()


def _clients(redis_client: Any) -> int:
    """Connections open on this run's own DB: the other test process opens and closes its own
    (on another DB) all the time, and once added 14 to a count of every client."""
    db = int(redis_client.connection_pool.connection_kwargs["db"])
    return sum(1 for client in redis_client.client_list() if int(client["db"]) == db)


@pytest.mark.redis
def test_threads_share_a_pinned_redis_connection_safely(redis_url: str, redis_client: Any) -> None:
    """The lease thread and the consumer use one channel's client: commands must not interleave."""
    app, add, _queue = make_app(redis_url)
    add.delay(1, 2)
    with app.broker.producers.acquire(block=True) as producer:
        channel = producer.channel
    key = f"pp-counter-{uuid.uuid4().hex[:6]}"
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(300):
                with channel.conn_or_acquire() as client:
                    client.incr(key)
                    assert client.get(key) is not None
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert int(redis_client.get(key)) == 1200
    app.close()


@pytest.mark.redis
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_sends_on_connections_of_its_own(redis_url: str, redis_client: Any) -> None:
    app, add, queue = make_app(redis_url)
    add.delay(1, 2)
    parent_origin, parent_oid = origin_name(), app.thread_oid
    with app.broker.producers.acquire(block=True) as producer:
        channel = producer.channel
    with channel.conn_or_acquire() as client:
        parent_client = client.client_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code and the pipe
        code = 1
        try:
            for _ in range(50):
                add.delay(1, 2)
            with channel.conn_or_acquire() as client:  # the channel it inherited
                child_client = client.client_id()
            os.write(write, f"{origin_name()} {app.thread_oid} {child_client}".encode())
            code = 0
        finally:
            os._exit(code)
    for _ in range(50):  # the parent's pinned connection, meanwhile
        add.delay(1, 2)
    os.close(write)  # the child's report, or an empty read if it failed: never a wait
    code = wait_child(pid)
    report = os.read(read, 200).decode()
    os.close(read)
    assert code == 0, "the forked child failed to send"
    child_origin, child_oid, child_client = report.split()
    assert int(child_client) != parent_client, "the child wrote on its parent's socket"
    assert waiting(redis_client, queue) == 101
    assert child_origin != parent_origin and child_origin == f"gen{pid}@{parent_origin.split('@', 1)[1]}"
    assert child_oid != parent_oid
    add.delay(1, 2)  # the parent's connection still answers its own commands
    assert waiting(redis_client, queue) == 102
    app.close()


def test_thread_oid_is_per_thread_and_stable() -> None:
    app = Celery("oid", broker="memory://")
    seen: list[str] = []
    thread = threading.Thread(target=lambda: seen.extend([app.thread_oid, app.thread_oid]))
    thread.start()
    thread.join()
    assert app.thread_oid == app.thread_oid
    assert seen[0] == seen[1] != app.thread_oid
    assert Celery("oid2", broker="memory://").thread_oid != app.thread_oid


def test_argument_check_follows_a_replaced_run() -> None:
    app = Celery("sig", broker="memory://")

    @app.task
    def one(x: int) -> int:
        return x

    with pytest.raises(TypeError):
        one.check_arguments((1, 2), {})
    one.check_arguments((1,), {})
    one.run = lambda x, y: x + y  # type: ignore[method-assign]
    one.check_arguments((1, 2), {})  # the cached signature is the old function's: not used
    with pytest.raises(TypeError):
        one.check_arguments((1,), {})
