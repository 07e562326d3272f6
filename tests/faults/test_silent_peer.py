"""A broker that goes silent without closing anything: only timeouts and heartbeats can tell.

The worker reaches its broker through a proxy that stops forwarding (``freeze``) while keeping
every socket open. With short timeouts set in the app (socket timeouts and health checks for
Redis, the AMQP heartbeat for RabbitMQ) the worker must notice within seconds, log it, keep
retrying while the peer stays silent, reconnect once traffic flows again, and run the tasks
published meanwhile (the client talks to the broker directly, not through the proxy).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from e2e.helpers import running_worker, wait_for

from .load import CONNECTED_LINE, LOST_LINE, Ledger, Publisher, Scenario, logged_at, report, worker_args
from .proxy import TcpProxy
from .servers import PrivateRedis, RabbitControl

pytestmark = pytest.mark.e2e

BATCH = 20
DETECT_WITHIN = 20.0  # generous bound on noticing: the settings below aim at ~3-5 s
REDIS_TIMEOUTS = {"socket_timeout": 2, "socket_connect_timeout": 2, "health_check_interval": 2}
AMQP_HEARTBEAT = 2  # seconds; py-amqp gives up after about 2.5 intervals without a frame


def silence_then_recover(name: str, scenario: Scenario, ledger: Ledger, proxy: TcpProxy) -> None:
    client = scenario.client()
    try:
        with running_worker(scenario.directory, *worker_args()) as worker:
            before = Publisher(client, BATCH, 0.0, prefix="before-")
            before.run()
            ledger.wait_all_ran(set(before.confirmed), 20)
            assert set(before.confirmed) <= set(ledger.runs()), "the worker did not work before the fault"

            frozen_at = time.time()
            proxy.freeze()
            worker.wait_for_log(LOST_LINE, DETECT_WITHIN)
            during = Publisher(client, BATCH, 0.0, prefix="during-")
            during.run()  # queued at the broker while the worker cannot reach it
            time.sleep(1.0)  # the worker's first reconnect attempts meet the silence too
            thawed_at = time.time()
            proxy.thaw()
            wait_for(lambda: logged_at(worker.output, CONNECTED_LINE, after=frozen_at), 60, "a reconnect")
            ledger.wait_all_ran(set(during.confirmed), 30)
            replies = wait_for(
                lambda: client.control.ping(timeout=1.0), 15, "a ping reply after the reconnect"
            )
            output = worker.output
    finally:
        client.close()
    assert worker.proc.returncode == 0, output
    assert not before.failed and not during.failed, (before.failed, during.failed)
    runs = ledger.runs()
    never_ran = sorted(i for i in (*before.confirmed, *during.confirmed) if runs[i] == 0)
    assert not never_ran, f"tasks that never ran: {never_ran}"
    assert len(replies) == 1, replies
    lost_at = logged_at(output, LOST_LINE, after=frozen_at)
    back_at = logged_at(output, CONNECTED_LINE, after=frozen_at)
    assert lost_at is not None and back_at is not None, output
    assert lost_at - frozen_at < DETECT_WITHIN
    report(
        name,
        noticed=lost_at - frozen_at,
        resumed_after_thaw=back_at - thawed_at,
        retries_logged=output.count("Cannot connect to"),
        doubled=sum(1 for n in runs.values() if n > 1),
    )


def test_redis_silent_peer(private_redis: PrivateRedis, scenario_for: Any, proxies: list[TcpProxy]) -> None:
    proxy = TcpProxy("127.0.0.1", private_redis.port)
    proxies.append(proxy)
    scenario, ledger = scenario_for(private_redis.url)
    scenario.worker_broker = proxy.url("redis://", "/0")
    scenario.worker_settings["broker_transport_options"] = REDIS_TIMEOUTS
    scenario.write_app()
    silence_then_recover("redis silent peer", scenario, ledger, proxy)


def test_rabbitmq_silent_peer(
    rabbit: tuple[RabbitControl, str], scenario_for: Any, proxies: list[TcpProxy]
) -> None:
    _, url = rabbit
    proxy = TcpProxy("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0]))
    proxies.append(proxy)
    vhost = url.rsplit("/", 1)[1]
    scenario, ledger = scenario_for(url)
    scenario.worker_broker = proxy.url("amqp://guest:guest@", f"/{vhost}")
    scenario.worker_settings["broker_heartbeat"] = AMQP_HEARTBEAT
    scenario.write_app()
    silence_then_recover("rabbitmq silent peer", scenario, ledger, proxy)
