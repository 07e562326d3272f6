"""Contract of the embedded SQLite broker, through plain kombu APIs only.

Several tests run real separate processes: the point of this transport is that a worker
and a client in different processes share one file.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from queue import Empty

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from taskq.broker.sqlite import path_from_url
from taskq.exceptions import ImproperlyConfigured

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/b.db"


def spawn(script: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = "import taskq.broker.sqlite\n" + textwrap.dedent(script)
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(script: str, *args: str) -> str:
    proc = spawn(script, *args)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out


def rows(url: str) -> list[tuple[str, str | None]]:
    with sqlite3.connect(path_from_url(url)) as db:
        return db.execute("SELECT queue, owner FROM taskq_message").fetchall()


def test_path_from_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert path_from_url("sqlite:///tmp/x.db", mkdir=False) == "/tmp/x.db"
    assert path_from_url("sqlite:////tmp/x.db", mkdir=False) == "/tmp/x.db"
    assert path_from_url("sqlite://rel.db") == str(tmp_path / "rel.db")
    assert path_from_url("sqlite://sub/dir/rel.db") == str(tmp_path / "sub/dir/rel.db")
    assert (tmp_path / "sub/dir").is_dir()
    assert path_from_url("sqlite://") == str(tmp_path / "taskq.sqlite3")


def test_connection_uses_the_file_the_url_names(tmp_path: Path) -> None:
    with Connection(f"sqlite:///{tmp_path}/deep/er/b.db") as conn:
        conn.SimpleQueue("q").put("x")
    assert (tmp_path / "deep/er/b.db").is_file()


def test_round_trip_and_ack_deletes(url: str) -> None:
    with Connection(url) as conn:
        queue = conn.SimpleQueue("q")
        queue.put({"n": 1})
        message = queue.get(timeout=2)
        assert message.payload == {"n": 1}
        [(queue_name, owner)] = rows(url)
        assert queue_name == "q" and owner is not None  # claimed, kept until the ack
        message.ack()
        assert rows(url) == []
    with Connection(url) as conn, pytest.raises(Empty):
        conn.SimpleQueue("q").get(timeout=0.3)


def test_fifo(url: str) -> None:
    with Connection(url) as conn:
        queue = conn.SimpleQueue("q")
        for i in range(20):
            queue.put(i)
        got = []
        for _ in range(20):
            message = queue.get(timeout=2)
            got.append(message.payload)
            message.ack()
    assert got == list(range(20))


def test_lower_priority_number_first_fifo_within(url: str) -> None:
    with Connection(url) as conn:
        queue = conn.SimpleQueue("q")
        for body, priority in [("a5", 5), ("b0", 0), ("c9", 9), ("d0", 0), ("e5", 5), ("f", None)]:
            queue.put(body, priority=priority)
        got = []
        for _ in range(6):
            message = queue.get(timeout=2)
            got.append(message.payload)
            message.ack()
    assert got == ["b0", "d0", "f", "a5", "e5", "c9"]


def test_reject_requeue_puts_it_back_at_the_front(url: str) -> None:
    with Connection(url) as conn:
        queue = conn.SimpleQueue("q")
        for body in ("first", "second"):
            queue.put(body)
        message = queue.get(timeout=2)
        assert message.payload == "first" and not message.delivery_info.get("redelivered")
        message.requeue()
        again = queue.get(timeout=2)
        assert again.payload == "first"
        assert again.delivery_info["redelivered"] is True and again.headers["redelivered"] is True
        again.reject()  # without requeue: gone
        last = queue.get(timeout=2)
        assert last.payload == "second"
        last.ack()
    assert rows(url) == []


def test_requeued_messages_go_before_older_waiting_ones(url: str) -> None:
    with Connection(url) as conn:
        queue = conn.SimpleQueue("q")
        for body in ("a", "b", "c"):
            queue.put(body)
        a, b = queue.get(timeout=2), queue.get(timeout=2)
        a.requeue()
        b.requeue()  # in front of "a", which is already waiting again
        got = []
        for _ in range(3):
            message = queue.get(timeout=2)
            got.append(message.payload)
            message.ack()
    assert got == ["b", "a", "c"]


def test_a_put_after_an_empty_poll_is_seen_at_once(url: str) -> None:
    with Connection(url) as conn:
        queue = conn.SimpleQueue("q")
        with pytest.raises(Empty):
            queue.get(timeout=0.2)
        queue.put("late")  # same channel: commits from our own connection
        message = queue.get(timeout=0.2)
        assert message.payload == "late"
        message.ack()


def test_unacked_message_comes_back_when_the_connection_closes(url: str) -> None:
    with Connection(url) as conn:
        queue = conn.SimpleQueue("q")
        queue.put("held")
        assert queue.get(timeout=2).payload == "held"  # never acked
    assert rows(url) == [("q", None)]
    with Connection(url) as conn:
        message = conn.SimpleQueue("q").get(timeout=2)
        assert message.payload == "held" and message.delivery_info["redelivered"] is True
        message.ack()


def test_messages_survive_reopening(url: str) -> None:
    with Connection(url) as conn:
        queue = conn.SimpleQueue("q")
        for i in range(3):
            queue.put(i)
    with Connection(url) as conn:
        queue = conn.SimpleQueue("q")
        assert queue.qsize() == 3
        got = [queue.get(timeout=2) for _ in range(3)]
        assert [m.payload for m in got] == [0, 1, 2]
        for message in got:
            message.ack()


CONSUMER = """
import sys, time
from kombu import Connection
with Connection(sys.argv[1]) as conn:
    queue = conn.SimpleQueue("work")
    print("ready", flush=True)
    while True:
        message = queue.get(timeout=30)
        body = message.payload
        message.ack()
        if body == "stop":
            break
        print(body, flush=True)
        time.sleep(0.001)
"""

PRODUCER = """
import sys
from kombu import Connection
with Connection(sys.argv[1]) as conn:
    queue = conn.SimpleQueue("work")
    for i in range(500):
        queue.put(i)
    queue.put("stop")
    queue.put("stop")
"""


def test_two_consumer_processes_get_every_message_exactly_once(url: str) -> None:
    with Connection(url) as conn:
        conn.SimpleQueue("work").close()  # create the file and queue before the race
    consumers = [spawn(CONSUMER, url) for _ in range(2)]
    for proc in consumers:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    run(PRODUCER, url)
    results = []
    for proc in consumers:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append([int(line) for line in out.split()])
    everything = results[0] + results[1]
    assert sorted(everything) == list(range(500))  # none lost, none doubled
    assert all(results), "both consumers should have taken part"
    assert rows(url) == []


OPENER = """
import sys, time
from kombu import Connection
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all open the new file at the same moment
with Connection(sys.argv[1]) as conn:
    queue = conn.SimpleQueue("q")
    for i in range(100):
        queue.put(i)
        queue.get(timeout=10).ack()
"""


def test_many_processes_creating_and_using_the_file_at_once(url: str) -> None:
    start = str(time.time() + 1.5)
    openers = [spawn(OPENER, url, start) for _ in range(10)]
    for proc in openers:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert rows(url) == []


HOLDER = """
import sys, time
from kombu import Connection
with Connection(sys.argv[1]) as conn:
    message = conn.SimpleQueue("work").get(timeout=30)
    print("got", message.payload, flush=True)
    time.sleep(120)
"""


def test_message_of_a_killed_consumer_is_redelivered(url: str) -> None:
    with Connection(url) as conn:
        conn.SimpleQueue("work").put("precious")
    holder = spawn(HOLDER, url)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "got precious"
        with Connection(url, transport_options={"recovery_interval": 0}) as conn:
            queue = conn.SimpleQueue("work")
            with pytest.raises(Empty):  # its owner is alive: not handed out twice
                queue.get(timeout=0.5)
            os.kill(holder.pid, signal.SIGKILL)  # not reaped yet: a zombie is dead too
            message = queue.get(timeout=10)
            assert message.payload == "precious"
            assert message.delivery_info["redelivered"] is True and message.headers["redelivered"] is True
            message.ack()
    finally:
        holder.kill()
        holder.wait()
    assert rows(url) == []


BINDER = """
import sys
from kombu import Connection, Exchange, Queue
with Connection(sys.argv[1]) as conn:
    Queue("bound", Exchange("ex", "direct"), routing_key="rk")(conn.default_channel).declare()
"""


def test_direct_exchange_bound_in_one_process_published_from_another(url: str) -> None:
    run(BINDER, url)
    with Connection(url) as conn:  # this process never declared "ex" nor the binding
        producer = Producer(conn.default_channel)
        producer.publish({"routed": True}, exchange="ex", routing_key="rk")
        producer.publish({"routed": False}, exchange="ex", routing_key="other")  # no binding: dropped
    assert rows(url) == [("bound", None)]
    with Connection(url) as conn:
        got = []
        with Consumer(conn, [Queue("bound", no_declare=True)], callbacks=[lambda b, m: got.append(m)]):
            conn.drain_events(timeout=2)
        assert [m.payload for m in got] == [{"routed": True}]
        got[0].ack()


def test_fanout_copies_to_every_bound_queue(url: str) -> None:
    fan = Exchange("fan", "fanout")
    queues = [Queue("q1", fan), Queue("q2", fan)]
    with Connection(url) as conn:
        for queue in queues:
            queue(conn.default_channel).declare()
    with Connection(url) as conn:  # a fresh connection knows the exchange only from the file
        Producer(conn.default_channel).publish("hello", exchange="fan", routing_key="")
    assert sorted(rows(url)) == [("q1", None), ("q2", None)]
    with Connection(url) as conn:
        got = []
        with Consumer(conn, queues, callbacks=[lambda b, m: got.append(m)]):
            for _ in range(2):
                conn.drain_events(timeout=2)
        assert [m.payload for m in got] == ["hello", "hello"]
        assert {m.delivery_info["routing_key"] for m in got} == {""}
        assert len({m.delivery_tag for m in got}) == 2  # each copy acks on its own
        for message in got:
            message.ack()
    assert rows(url) == []


def test_topic_exchange_across_connections(url: str) -> None:
    topic = Exchange("t", "topic")
    with Connection(url) as conn:
        Queue("stars", topic, routing_key="a.*")(conn.default_channel).declare()
    with Connection(url) as conn:
        producer = Producer(conn.default_channel)
        producer.publish("yes", exchange="t", routing_key="a.b")
        producer.publish("no", exchange="t", routing_key="b.a")
    assert rows(url) == [("stars", None)]


def test_purge_counts_only_waiting_messages_and_size(url: str) -> None:
    with Connection(url) as conn:
        queue = conn.SimpleQueue("q")
        for i in range(5):
            queue.put(i)
        assert queue.qsize() == 5
        held = queue.get(timeout=2)
        assert queue.qsize() == 4
        assert conn.default_channel.queue_purge("q") == 4
        assert queue.qsize() == 0
        held.ack()
    assert rows(url) == []


def test_no_ack_consumer_deletes_on_delivery(url: str) -> None:
    with Connection(url) as conn:
        conn.SimpleQueue("q").put("fire and forget")
        got = []
        with Consumer(conn, [Queue("q")], no_ack=True, callbacks=[lambda b, m: got.append(b)]):
            conn.drain_events(timeout=2)
        assert got == ["fire and forget"]
        assert rows(url) == []


def test_bad_path_is_reported_with_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ImproperlyConfigured, match=str(blocker)):
        Connection(f"sqlite:///{blocker}/b.db").connect()
    with pytest.raises(ImproperlyConfigured, match=str(tmp_path)):
        Connection(f"sqlite:///{tmp_path}").connect()  # a directory is no database file
    blocker.write_text("x" * 4096)
    with pytest.raises(ImproperlyConfigured, match=str(blocker)):
        Connection(f"sqlite:///{blocker}").connect()  # not a database
