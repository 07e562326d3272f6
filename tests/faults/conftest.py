"""Fixtures that break brokers on purpose, and always put them back.

A private redis-server is killed with the test; RabbitMQ is the machine's own, so whatever a
test did, teardown starts its application again before deleting the test's vhost.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AMQP_HOST, AMQP_PORT, IN_CI, need_service

from .load import Ledger, Scenario
from .proxy import TcpProxy
from .servers import PrivateRedis, RabbitControl


def need_tool(name: str) -> str:
    """The tool's path; a missing one fails under CI=true, like a missing service."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: fault tests must run, not skip)")
        pytest.skip(f"SKIPPED FAULT TEST: {message}")
    return path


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server (AOF, fsync always) on a free port, ours to kill and restart."""
    need_tool("redis-server")
    directory = tmp_path / "redis-data"
    directory.mkdir()
    server = PrivateRedis(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def rabbit() -> Iterator[tuple[RabbitControl, str]]:
    """``rabbitmqctl`` and the URL of a vhost made for this test; RabbitMQ is always left running."""
    need_service("RabbitMQ", AMQP_HOST, AMQP_PORT)
    control = RabbitControl(need_tool("rabbitmqctl"))
    vhost = f"taskq-faults-{uuid.uuid4().hex[:8]}"
    url = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{vhost}"
    control.add_vhost(vhost)
    try:
        yield control, url
    finally:
        try:
            if control.stopped:
                control.start_app(url)
        finally:
            control.delete_vhost(vhost)


@pytest.fixture
def proxies() -> Iterator[list[TcpProxy]]:
    """Proxies a test makes (append them); all closed at teardown."""
    made: list[TcpProxy] = []
    try:
        yield made
    finally:
        for proxy in made:
            proxy.close()


@pytest.fixture
def scenario_for(tmp_path: Path, redis_url: str, redis_client: Any) -> Any:
    """Builds the test's Scenario; the ledger lives on the shared Redis, which no test breaks."""

    def make(broker: str, **kwargs: Any) -> tuple[Scenario, Ledger]:
        scenario = Scenario(tmp_path, broker, redis_url, **kwargs)
        scenario.write_app()
        return scenario, Ledger(redis_client, scenario.key)

    return make
