"""taskq's ``filesystem://`` transport (taskq/broker/filesystem.py): kombu's, minus the race that
lost a message to a consumer polling while it was being written (kombu issue #1551).

kombu's publisher creates the message file under its final name, then locks and writes it; its
consumer takes whatever it lists, without the lock. Here a spy on ``open`` holds each new file
before its first byte, as a descheduled publisher would be, and a consumer polls right then.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from broker_servers import transport_options
from kombu import Connection
from kombu.transport import filesystem as kombu_fs

from taskq import Celery
from taskq.broker import filesystem as taskq_fs
from taskq.testing import RunningWorker

QUEUE = "q"


@pytest.fixture
def options(tmp_path: Path) -> dict[str, Any]:
    """The broker contract's options: one folder for queues, a fast poll."""
    return transport_options("filesystem", tmp_path)


@pytest.fixture
def connect(options: dict[str, Any]) -> Iterator[Callable[[type], Any]]:
    """A channel on kombu's transport (as Celery has it) or on taskq's."""
    connections: list[Connection] = []

    def channel(transport: type) -> Any:
        conn = Connection("filesystem://", transport=transport, transport_options=options)
        connections.append(conn)
        return conn.default_channel

    yield channel
    for conn in connections:
        conn.release()


def hold_new_files(monkeypatch: pytest.MonkeyPatch, folder: str, then: Callable[[], None]) -> list[str]:
    """Make both transports call ``then`` right after creating a file in ``folder`` for writing,
    before any byte is in it (kombu's writer has not even locked it yet); the paths created."""
    created: list[str] = []

    def spy_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        file = open(path, mode, *args, **kwargs)  # noqa: SIM115 (the caller closes it)
        if "w" in mode and os.path.dirname(os.fspath(path)) == folder:
            created.append(os.fspath(path))
            then()
        return file

    for module in (kombu_fs, taskq_fs):
        monkeypatch.setattr(module, "open", spy_open, raising=False)
    return created


def publish(channel: Any, n: int) -> None:
    """A raw message, numbered in its headers, through the anonymous exchange to ``QUEUE``."""
    channel.basic_publish(channel.prepare_message("body", headers={"n": n}), "", QUEUE)


def number(payload: dict[str, Any]) -> int:
    return int(payload["headers"]["n"])


def test_the_scheme_names_taskqs_transport(options: dict[str, Any]) -> None:
    with Connection("filesystem://", transport_options=options) as conn:
        assert isinstance(conn.transport, taskq_fs.Transport)


@pytest.mark.parametrize(
    "reader", [kombu_fs.Transport, taskq_fs.Transport], ids=["kombu-reader", "taskq-reader"]
)
def test_a_message_is_listed_only_once_it_is_written(
    connect: Callable[[type], Any], options: dict[str, Any], monkeypatch: pytest.MonkeyPatch, reader: type
) -> None:
    """taskq's publisher: no consumer, not even kombu's own (a Celery worker), sees it half-written."""
    publisher, consumer = connect(taskq_fs.Transport), connect(reader)
    seen: list[object] = []

    def poll() -> None:
        seen.append(consumer._size(QUEUE))
        try:
            seen.append(consumer._get(QUEUE))
        except Empty:
            seen.append("empty")

    created = hold_new_files(monkeypatch, options["data_folder_out"], poll)
    publish(publisher, 1)
    assert created and seen == [0, "empty"]
    assert number(consumer._get(QUEUE)) == 1
    assert os.listdir(options["data_folder_in"]) == []


def test_a_message_written_in_place_is_left_until_it_is_written(
    connect: Callable[[type], Any], options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu's publisher (Celery's) creates the file before writing it: taskq's consumer waits."""
    publisher, consumer = connect(kombu_fs.Transport), connect(taskq_fs.Transport)
    seen: list[object] = []

    def poll() -> None:
        try:
            seen.append(consumer._get(QUEUE))
        except Empty:
            seen.append("empty")

    created = hold_new_files(monkeypatch, options["data_folder_out"], poll)
    publish(publisher, 2)
    [path] = created
    assert seen == ["empty"]
    assert os.listdir(options["data_folder_in"]) == [os.path.basename(path)]  # given back, whole now
    assert number(consumer._get(QUEUE)) == 2
    with pytest.raises(Empty):
        consumer._get(QUEUE)


def test_a_file_that_is_no_message_is_set_aside(
    connect: Callable[[type], Any], options: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """kombu deletes it and raises out of drain_events (the worker's loop); taskq keeps it aside."""
    channel = connect(taskq_fs.Transport)
    folder = Path(options["data_folder_in"])
    # Named to sort before the message published below (<monotonic ms>_<uuid>.q.msg).
    (folder / f"01_garbage.{QUEUE}.msg").write_bytes(b"{not json")
    stale = folder / f"02_stale.{QUEUE}.msg"
    stale.touch()  # created by a publisher that died before writing it
    os.utime(stale, (time.time() - 2 * taskq_fs.STALE_EMPTY,) * 2)
    (folder / f"03_fresh.{QUEUE}.msg").touch()  # being written: left for a later poll
    publish(channel, 3)
    assert number(channel._get(QUEUE)) == 3
    assert sorted(os.listdir(folder)) == [
        f".01_garbage.{QUEUE}.msg.bad",
        f".02_stale.{QUEUE}.msg.bad",
        f"03_fresh.{QUEUE}.msg",
    ]
    assert (folder / f".01_garbage.{QUEUE}.msg.bad").read_bytes() == b"{not json"
    assert "Set aside" in caplog.text
    assert channel._size(QUEUE) == 1


def test_store_processed_keeps_a_copy(connect: Callable[[type], Any], options: dict[str, Any]) -> None:
    options["store_processed"] = True
    channel = connect(taskq_fs.Transport)
    publish(channel, 4)
    assert number(channel._get(QUEUE)) == 4
    [kept] = os.listdir(options["processed_folder"])
    assert kept.endswith(f".{QUEUE}.msg")
    assert os.listdir(options["data_folder_in"]) == []


def test_a_task_published_while_the_worker_polls_runs(
    options: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract's test_task_routes[filesystem], the publish held before its first byte for
    longer than the worker's poll: on kombu's transport the worker took the empty file, lost the
    task and died of a JSONDecodeError."""
    (tmp_path / "results").mkdir()
    app = Celery("fs", broker="filesystem://", backend=f"file://{tmp_path}/results", set_as_current=False)
    app.conf.broker_transport_options = options
    app.conf.task_routes = {"fs.*": {"queue": "routed"}}

    @app.task(name="fs.add")
    def add(x: int, y: int) -> int:
        return x + y

    worker = RunningWorker(app, queues=["routed"], concurrency=1)
    worker.start()
    try:
        hold_new_files(monkeypatch, options["data_folder_out"], lambda: time.sleep(0.2))
        result = add.delay(3, 4)
        monkeypatch.undo()
        assert result.get(timeout=10) == 7
    finally:
        worker.stop()
        app.close()


def test_no_message_is_lost_to_a_consumer_polling_in_a_loop(
    connect: Callable[[type], Any], options: dict[str, Any]
) -> None:
    """Without a spy: one thread publishes while another polls as fast as it can."""
    publisher, consumer = connect(taskq_fs.Transport), connect(taskq_fs.Transport)
    got: list[int] = []
    done = threading.Event()

    def drain() -> None:
        while not done.is_set() or consumer._size(QUEUE):
            try:
                got.append(number(consumer._get(QUEUE)))
            except Empty:
                pass

    thread = threading.Thread(target=drain)
    thread.start()
    try:
        for n in range(300):
            publish(publisher, n)
    finally:
        done.set()
        thread.join(10)
    assert sorted(got) == list(range(300))
