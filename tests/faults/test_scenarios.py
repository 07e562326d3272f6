"""The fault suite's scenarios (``benchmarks/faults_scenarios.py``) at CI size, on both brokers.

The same code runs at full size as ``python -m benchmarks.faults``; here each scenario not
covered by the other fault tests runs small: children and whole workers killed -9 mid-task,
SIGTERM past the warm-shutdown bound, and two beats whose leader is killed. Each must lose
nothing it may not lose, and double nothing a fault does not explain.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.faults import rabbit_env, redis_env
from benchmarks.faults_scenarios import (
    Env,
    Size,
    child_kill,
    eta_restarts,
    sigterm_past_grace,
    two_beats,
    worker_kill,
)

from .servers import PrivateRedis, RabbitControl

pytestmark = pytest.mark.e2e

CI = Size(
    tasks=12, child_kills=3, worker_kills=2, sigterms=1, beat_seconds=7.0, eta_tasks=60, eta_spread=12.0,
    eta_restarts=2,
)  # fmt: skip


@pytest.fixture(params=["redis", "rabbitmq"])
def env(request: Any, tmp_path: Path, redis_url: str, redis_client: Any) -> Env:
    if request.param == "redis":
        server: PrivateRedis = request.getfixturevalue("private_redis")
        return redis_env(server, redis_url, redis_client, tmp_path)
    control, url = request.getfixturevalue("rabbit")
    assert isinstance(control, RabbitControl)
    return rabbit_env(control, url, redis_url, redis_client, tmp_path)


def check(scenario: Callable[[Env, Size], list[Any]], env: Env) -> list[Any]:
    rows = scenario(env, CI)
    for row in rows:
        print(f"\n[faults] {row.line()}")
    assert rows, "the scenario reported nothing"
    failed = [f"{row.scenario}/{row.mode}: {row.unexplained}" for row in rows if not row.ok]
    assert not failed, failed
    return rows


def test_child_killed_mid_task(env: Env) -> None:
    rows = check(child_kill, env)
    late = next(r for r in rows if r.mode == "at-least-once")
    assert late.lost == 0 and late.confirmed == CI.tasks // 2


def test_worker_killed_mid_task(env: Env) -> None:
    rows = check(worker_kill, env)
    assert next(r for r in rows if r.mode == "at-least-once").lost == 0


def test_eta_tasks_through_a_warm_stop_and_a_kill(env: Env) -> None:
    rows = check(eta_restarts, env)
    late = next(r for r in rows if r.mode == "at-least-once")
    assert late.lost == 0 and late.confirmed == CI.eta_tasks // 2


def test_sigterm_past_the_grace_period(env: Env) -> None:
    rows = check(sigterm_past_grace, env)
    assert next(r for r in rows if r.mode == "at-least-once").lost == 0


def test_two_beats_leader_killed(
    private_redis: PrivateRedis, tmp_path: Path, redis_url: str, redis_client: Any
) -> None:
    """On Redis only: the lease lives in Redis whatever the broker (RabbitMQ's beats use the backend)."""
    (row,) = check(two_beats, redis_env(private_redis, redis_url, redis_client, tmp_path))
    assert row.duplicated == 0 and row.confirmed >= 3, row.line()
