"""A broker restarted under a running worker and a publishing client: no confirmed task is lost.

The worker must notice, log, retry with back-off, re-declare, resume on its own and answer
remote control again; the client must ride out the restart on its publish retry policy.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from e2e.helpers import running_worker, wait_for

from .load import (
    CONCURRENCY,
    CONNECTED_LINE,
    LOST_LINE,
    POOLS,
    Ledger,
    Publisher,
    Scenario,
    explain,
    logged_at,
    received_before_loss,
    report,
    verdict,
    worker_args,
)
from .servers import PrivateRedis, RabbitControl

pytestmark = pytest.mark.e2e

TASKS = 300
PACE = 0.01  # ~3 s of publishing, a little faster than two 30 ms slots drain: a backlog forms
STOP_WITHIN = 10.0  # generous: the back-off looks at the stop flag about once a second
DOWN_FOR = 1.0  # seconds the broker stays down: clients and worker must retry meanwhile


def restart_under_load(
    name: str, scenario: Scenario, ledger: Ledger, restart: Callable[[], None], client: Any, pool: str
) -> None:
    """Publish TASKS, restart the broker once the worker is busy, and judge every task."""
    with running_worker(scenario.directory, *worker_args(pool)) as worker:
        publisher = Publisher(client, TASKS, PACE)
        publisher.start()
        try:
            wait_for(lambda: ledger.size() >= TASKS // 8, 30, "the worker to get busy")
            down_at = time.time()
            restart()
            up_at = time.time()
            worker.wait_for_log(LOST_LINE, 30)
            wait_for(
                lambda: logged_at(worker.output, CONNECTED_LINE, after=down_at), 90, "the worker to reconnect"
            )
        finally:
            publisher.finish(90)
        assert not publisher.failed, f"the client gave up publishing: {publisher.failed[:3]}"
        ledger.wait_all_ran(set(publisher.confirmed), 60)
        ledger.settle()
        # Remote control came back with the connection (the pidbox consumer is re-opened).
        replies = wait_for(lambda: client.control.ping(timeout=1.0), 15, "a ping reply after the reconnect")
        assert len(replies) == 1, replies
        output = worker.output
    assert worker.proc.returncode == 0, output
    result = verdict(publisher, ledger, worker)
    lost_at = logged_at(output, LOST_LINE, after=down_at)
    back_at = logged_at(output, CONNECTED_LINE, after=down_at)
    assert lost_at is not None and back_at is not None, output
    report(
        name,
        noticed=lost_at - down_at,
        broker_down=up_at - down_at,
        resumed_after_broker_up=back_at - up_at,
        retries_logged=output.count("Cannot connect to"),
        longest_publish=publisher.longest_publish,
        verdict=result.summary().replace(" ", ","),
    )
    try:
        result.check()
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\n--- worker log ({worker.log_path}) ---\n{explain(result, output)}"
        ) from None


@pytest.mark.parametrize("pool", POOLS)
def test_redis_restart_under_load(private_redis: PrivateRedis, scenario_for: Any, pool: str) -> None:
    scenario, ledger = scenario_for(private_redis.url)
    client = scenario.client()
    try:
        restart_under_load(
            f"redis kill -9 + restart ({pool})",
            scenario,
            ledger,
            lambda: private_redis.restart(down_for=DOWN_FOR),
            client,
            pool,
        )
    finally:
        client.close()


@pytest.mark.parametrize("pool", POOLS)
def test_rabbitmq_restart_under_load(rabbit: tuple[RabbitControl, str], scenario_for: Any, pool: str) -> None:
    control, url = rabbit
    # confirm_publish: a publish returns only once RabbitMQ took the message, so "confirmed"
    # in the ledger's sense means what it says.
    scenario, ledger = scenario_for(
        url, client_settings={"broker_transport_options": {"confirm_publish": True}}
    )
    client = scenario.client()
    try:
        restart_under_load(
            f"rabbitmq stop_app/start_app ({pool})",
            scenario,
            ledger,
            lambda: control.restart(url),  # stop_app + start_app alone: down ~2 s
            client,
            pool,
        )
    finally:
        client.close()


def test_redis_restart_hands_back_reserved_messages(private_redis: PrivateRedis, scenario_for: Any) -> None:
    """Unlimited prefetch: the worker holds every message when Redis dies; none may be stranded.

    Redis keeps a reserved message in its unacked index, and only a live server can move it
    back to the queue; done while the server is down it fails, and the message would wait out
    the visibility timeout (an hour). So all of them must run, and only the ones running at
    the loss may run twice (late-acked: redelivered; early-acked ones were acked at start).
    """
    scenario, ledger = scenario_for(
        private_redis.url, worker_settings={"worker_prefetch_multiplier": 0}, work=0.1
    )
    client = scenario.client()
    try:
        publisher = Publisher(client, 40, 0.0)
        publisher.run()  # all queued before the worker starts: it reserves them at once
        assert not publisher.failed, publisher.failed
        with running_worker(scenario.directory, *worker_args()) as worker:
            wait_for(lambda: len(received_before_loss(worker.output)) == 40, 20, "every task to be reserved")
            private_redis.restart(down_for=DOWN_FOR)
            worker.wait_for_log(LOST_LINE, 30)
            ledger.wait_all_ran(set(publisher.confirmed), 30)
            ledger.settle()
            output = worker.output
    finally:
        client.close()
    result = verdict(publisher, ledger, worker)
    report("redis restart, 40 reserved", verdict=result.summary().replace(" ", ","))
    doubled = result.duplicated("early") | result.duplicated("late")
    try:
        assert not result.lost("early") | result.lost("late"), "reserved messages were stranded"
        assert not result.duplicated("early"), "an early-acked task ran twice"
        assert len(doubled) <= CONCURRENCY and doubled <= result.redelivered, doubled
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {result.summary()}\n{explain(result, output)}") from None


def test_redis_restart_without_persistence_redeclares(tmp_path: Path, scenario_for: Any) -> None:
    """A Redis that comes back empty has lost the queue's binding; the worker declares it again.

    Nothing is published after the restart until the binding is back, so only the worker can
    have declared it; then tasks flow and remote control answers.
    """
    directory = tmp_path / "volatile"
    directory.mkdir()
    server = PrivateRedis(directory, aof=False)
    try:
        server.start()
        scenario, ledger = scenario_for(server.url)
        binding = f"_kombu.binding.{scenario.queue}"
        probe = redis.Redis(port=server.port)
        client = scenario.client()
        try:
            with running_worker(scenario.directory, *worker_args()) as worker:
                assert probe.exists(binding)
                probe.set("faults-marker", 1)
                server.restart()
                assert not probe.exists("faults-marker"), "the restart kept the data"
                worker.wait_for_log(LOST_LINE, 30)
                wait_for(lambda: probe.exists(binding), 30, "the worker to declare its queue again")
                publisher = Publisher(client, 10, 0.0)
                publisher.run()
                assert not publisher.failed, publisher.failed
                ledger.wait_all_ran(set(publisher.confirmed), 20)
                assert set(publisher.confirmed) <= set(ledger.runs())
                assert len(wait_for(lambda: client.control.ping(timeout=1.0), 15, "a ping reply")) == 1
        finally:
            client.close()
            probe.close()
    finally:
        server.stop()


def test_stop_during_an_outage_does_not_wait_for_the_broker(
    private_redis: PrivateRedis, scenario_for: Any
) -> None:
    """SIGTERM while reconnecting ends the worker at once, cleanly, instead of after 100 retries."""
    scenario, _ = scenario_for(private_redis.url)
    with running_worker(scenario.directory, *worker_args()) as worker:
        private_redis.stop()
        worker.wait_for_log("Cannot connect to", 30)
        stopped_at = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(STOP_WITHIN)
        report("stop during an outage", exited_after=time.monotonic() - stopped_at)
    assert code == 0, worker.output
    assert "Stopped while reconnecting" in worker.output
