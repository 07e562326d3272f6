"""The fault suite's checker (``benchmarks/faults_ledger.judge``) on hand-made ledgers."""

from __future__ import annotations

from benchmarks.faults_ledger import Record, Row, judge


def run(task_id: str, start: float, end: float | None, pid: int = 1) -> list[Record]:
    records = [Record("S", task_id, pid, start)]
    return records + ([Record("E", task_id, pid, end)] if end is not None else [])


def verdict(mode: str, records: list[Record], faults: list[float], **kwargs: set[str]) -> Row:
    return judge(Row("t", "redis", mode), {"a", "b"}, records, faults, **kwargs)


def test_clean_run_is_ok() -> None:
    row = verdict("at-least-once", run("a", 1, 2) + run("b", 1, 2), [])
    assert row.ok and (row.lost, row.duplicated, row.unexpected) == (0, 0, 0)


def test_a_loss_fails_at_least_once_whatever_the_faults() -> None:
    row = verdict("at-least-once", run("a", 1, 2) + run("b", 1, None), [1.5])
    assert not row.ok and row.lost == 1 and row.unexplained == ["lost b"]


def test_at_most_once_may_lose_a_task_cut_short_or_held_by_a_killed_worker_only() -> None:
    assert verdict("at-most-once", run("a", 1, 2) + run("b", 1, None), [1.5]).ok
    assert not verdict("at-most-once", run("a", 1, 2) + run("b", 1, None), [0.5]).ok  # fault before it
    assert verdict("at-most-once", run("a", 1, 2), [0.5], held={"b"}).ok  # acked, never started
    assert not verdict("at-most-once", run("a", 1, 2), [0.5]).ok


def test_a_duplicate_needs_a_fault_between_the_runs_or_a_retried_publish() -> None:
    twice = run("a", 1, 2) + run("a", 5, 6, pid=2) + run("b", 1, 2)
    assert verdict("at-least-once", twice, [3]).ok
    assert verdict("at-least-once", twice, [1.5]).ok  # the connection died during the run: its ack too
    assert not verdict("at-least-once", twice, [7]).ok  # the fault came after both runs
    assert not verdict("at-least-once", twice, []).ok
    assert verdict("at-least-once", twice, [], retried={"a"}).ok
    # held by a worker that was killed before either run: at least once only
    assert verdict("at-least-once", twice, [0.5], held={"a"}).ok
    assert not verdict("at-most-once", twice, [0.5], held={"a"}).ok


def test_an_execution_nobody_published_is_unexpected() -> None:
    row = verdict("at-least-once", run("a", 1, 2) + run("b", 1, 2) + run("z", 1, 2), [])
    assert not row.ok and row.unexpected == 1
