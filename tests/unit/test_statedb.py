"""--statedb's file: round trip, the bounds of Revoked on load, atomic writes, unusable files."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest

from taskq.worker.control import Revoked
from taskq.worker.statedb import StateDB


def write_state(path: Path, revoked: dict[str, float], version: object = 1) -> None:
    path.write_text(json.dumps({"taskq_statedb": version, "revoked": revoked}))


def test_round_trip_keeps_ids_order_and_age(tmp_path: Path) -> None:
    db = StateDB(str(tmp_path / "state.json"))
    before = Revoked()
    for task_id in ("a", "b", "c"):
        before.add(task_id)
    before._ids["a"] -= 600.0  # revoked ten minutes ago
    db.save(before)
    after = Revoked()
    assert db.load(after) == 3
    assert list(after) == ["a", "b", "c"]
    assert all(task_id in after for task_id in "abc")
    age = time.monotonic() - after._ids["a"]
    assert 599 < age < 610  # the age survives, so the expiry still counts from the revoke


def test_expired_entries_are_dropped_on_load(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    now = time.time()
    write_state(path, {"old": now - 3 * 3600 - 5, "fresh": now - 60, "future": now + 3600})
    revoked = Revoked()
    StateDB(str(path)).load(revoked)
    assert "old" not in revoked
    assert "fresh" in revoked
    assert "future" in revoked  # a clock set back: counts as revoked now, not as never expiring
    assert time.monotonic() - revoked._ids["future"] < 5


def test_load_keeps_the_newest_up_to_maxlen(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    now = time.time()
    write_state(path, {f"id{i}": now - 100 + i for i in range(10)})
    revoked = Revoked(maxlen=3)
    StateDB(str(path)).load(revoked)
    assert list(revoked) == ["id7", "id8", "id9"]


def test_load_merges_with_ids_revoked_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_state(path, {"saved": time.time() - 10, "both": time.time() - 10})
    revoked = Revoked()
    revoked.add("both")
    revoked.add("live")
    StateDB(str(path)).load(revoked)
    assert list(revoked) == ["saved", "both", "live"]  # oldest first; the newer stamp of "both" wins
    assert time.monotonic() - revoked._ids["both"] < 5


def test_custom_expiry_applies_on_load(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_state(path, {"a": time.time() - 20, "b": time.time() - 5})
    revoked = Revoked(expires=10)
    StateDB(str(path)).load(revoked)
    assert list(revoked) == ["b"]


def test_save_leaves_out_expired_ids(tmp_path: Path) -> None:
    revoked = Revoked(expires=10)
    revoked.add("gone")
    revoked.add("kept")
    revoked._ids["gone"] -= 60
    db = StateDB(str(tmp_path / "state.json"))
    db.save(revoked)
    assert list(json.loads(Path(db.path).read_text())["revoked"]) == ["kept"]


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_a_failed_save_leaves_the_previous_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "state.json"
    db = StateDB(str(path))
    first = Revoked()
    first.add("first")
    db.save(first)
    previous = path.read_bytes()
    second = Revoked()
    second.add("second")

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, boom)  # the rename, or the write before it
    with pytest.raises(OSError):
        db.save(second)
    assert path.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary file left


@pytest.mark.parametrize(
    "content",
    [
        b"\x00{not json",
        b"[1, 2]",
        b'{"revoked": {}}',
        b'{"taskq_statedb": 2, "revoked": {}}',
        b'{"taskq_statedb": 1, "revoked": []}',
        b"\xff\xfe",
    ],
    ids=["garbage", "list", "no-marker", "newer-version", "bad-revoked", "not-utf8"],
)
def test_unusable_file_warns_once_and_loads_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    revoked = Revoked()
    with caplog.at_level(logging.WARNING, logger="taskq.worker"):
        assert StateDB(str(path)).load(revoked) == 0
    assert len(revoked) == 0
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert message.startswith(f"--statedb: {path} is unreadable (")
    assert message.endswith("); starting with no remembered revokes")


def test_unreadable_path_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="taskq.worker"):
        assert StateDB(str(tmp_path)).load(Revoked()) == 0  # a directory
    assert "is unreadable" in caplog.text


def test_bad_entries_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    now = time.time()
    path.write_text(f'{{"taskq_statedb": 1, "revoked": {{"ok": {now}, "s": "x", "b": true, "i": Infinity}}}}')
    revoked = Revoked()
    assert StateDB(str(path)).load(revoked) == 1
    assert list(revoked) == ["ok"]


def test_missing_file_is_an_empty_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert StateDB(str(tmp_path / "none.json")).load(Revoked()) == 0
    assert caplog.records == []


def test_attach_saves_on_each_revoke_command(tmp_path: Path) -> None:
    db = StateDB(str(tmp_path / "state.json"))
    revoked = Revoked()
    db.attach(revoked)
    revoked.add("x")
    assert not Path(db.path).exists()  # add alone does not write: one write per command
    revoked.changed()
    assert list(json.loads(Path(db.path).read_text())["revoked"]) == ["x"]


def test_save_quietly_reports_an_unwritable_path(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = StateDB(str(tmp_path / "missing-dir" / "state.json"))
    with caplog.at_level(logging.WARNING, logger="taskq.worker"):
        assert db.save_quietly(Revoked()) is False
    assert "cannot write" in caplog.text and "will not survive a restart" in caplog.text
