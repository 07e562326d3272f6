"""``taskq inspect``, ``control``, ``status``, ``call``, ``result`` and ``purge`` through the CLI,
against a real worker on Redis and on RabbitMQ, with Celery's output and exit codes."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from . import cli_support
from .cli_support import APP, Cli, Cluster
from .helpers import wait_for, write_module

pytestmark = pytest.mark.e2e
cluster = cli_support.cluster  # fixtures shared with the other CLI test module
bare = cli_support.bare


def remote(cluster: Cluster, *args: str) -> str:
    """A remote-control command to this module's worker only (others may share the broker)."""
    return cluster.cli.ok(*args, "-d", cluster.node, "-t", "10")


def as_json(cluster: Cluster, *args: str) -> dict:
    return json.loads(remote(cluster, *args, "--json"))


# -- status and inspect ---------------------------------------------------------------------
def test_status(cluster: Cluster) -> None:
    assert remote(cluster, "status") == f"->  {cluster.node}: OK\n\n1 node online.\n"
    assert as_json(cluster, "status") == {cluster.node: {"ok": "pong"}}


def test_status_without_destination_counts_every_worker(cluster: Cluster) -> None:
    out = cluster.cli.ok("status", "-t", "3")
    assert f"->  {cluster.node}: OK\n" in out
    assert re.search(r"\n\n\d+ nodes? online\.\n$", out)


def test_inspect_ping_as_celery_prints_it(cluster: Cluster) -> None:
    assert remote(cluster, "inspect", "ping") == f"->  {cluster.node}: OK\n        pong\n\n1 node online.\n"
    assert as_json(cluster, "inspect", "ping") == {cluster.node: {"ok": "pong"}}


def test_quiet_drops_the_arrow_and_the_count(cluster: Cluster) -> None:
    assert (
        cluster.cli.ok("-q", "inspect", "ping", "-d", cluster.node, "-t", "10")
        == f" {cluster.node}: OK\n        pong\n"
    )


def test_inspect_registered(cluster: Cluster) -> None:
    out = remote(cluster, "inspect", "registered")
    for name in ("add", "boom", "sleepy", "limited"):
        assert f"\n    * proj.{name}\n" in out
    assert as_json(cluster, "inspect", "registered")[cluster.node] == [
        "proj.add",
        "proj.boom",
        "proj.limited",
        "proj.sleepy",
    ]


def test_inspect_stats(cluster: Cluster) -> None:
    stats = as_json(cluster, "inspect", "stats")[cluster.node]
    assert stats["pid"] == cluster.worker.pid
    assert stats["pool"]["max-concurrency"] == 2
    text = remote(cluster, "inspect", "stats")
    assert text.startswith(f"->  {cluster.node}: OK\n    {{\n")  # sorted JSON, indented under the node
    assert f'\n        "pid": {cluster.worker.pid},\n' in text


def test_inspect_active_and_query_task(cluster: Cluster) -> None:
    assert "- empty -" in remote(cluster, "inspect", "reserved")
    # long enough to outlast the three CLI calls below on a loaded machine (each waits ~1 s for replies)
    task_id = cluster.cli.ok("call", "proj.sleepy", "--args", "[10]").strip()

    def running() -> list:
        return [t for t in as_json(cluster, "inspect", "active")[cluster.node] if t["id"] == task_id]

    (info,) = wait_for(running, 15, "the task in inspect active")
    assert info["name"] == "proj.sleepy" and info["args"] == [10]
    assert f"\n    * {{'id': '{task_id}', 'name': 'proj.sleepy'" in remote(cluster, "inspect", "active")
    found = as_json(cluster, "inspect", "query_task", task_id)[cluster.node]
    assert found[task_id][0] == "active"
    assert cluster.cli.ok("result", task_id, "--timeout", "30") == "10\n"


def test_inspect_active_queues_conf_and_clock(cluster: Cluster) -> None:
    queues = as_json(cluster, "inspect", "active_queues")[cluster.node]
    assert [q["name"] for q in queues] == ["celery"]
    conf = as_json(cluster, "inspect", "conf")[cluster.node]
    assert conf["broker_url"].split(":")[0] == cluster.kind
    assert int(as_json(cluster, "inspect", "clock")[cluster.node]["clock"]) > 0


def test_inspect_unknown_method_is_a_usage_error(cluster: Cluster) -> None:
    proc = cluster.cli("inspect", "nope")
    assert proc.returncode == 2
    assert (
        "Error: Command nope not recognized. Available inspect commands: active, active_queues" in proc.stderr
    )


# -- control --------------------------------------------------------------------------------
def test_control_rate_limit(cluster: Cluster) -> None:
    out = remote(cluster, "control", "rate_limit", "proj.limited", "10/m")
    assert out.startswith(f"->  {cluster.node}: OK\n        new rate limit set successfully")
    assert "\n    * proj.limited [rate_limit=10/m]\n" in remote(cluster, "inspect", "registered")
    replies = json.loads(remote(cluster, "control", "rate_limit", "proj.nosuch", "1/s", "--json"))
    assert list(replies[0][cluster.node]) == ["error"]
    remote(cluster, "control", "rate_limit", "proj.limited", "0")


def test_control_time_limit(cluster: Cluster) -> None:
    out = remote(cluster, "control", "time_limit", "proj.sleepy", "5", "10")
    assert out.startswith(f"->  {cluster.node}: OK\n        time limits set successfully")


def test_control_revoke_a_scheduled_task(cluster: Cluster) -> None:
    task_id = cluster.cli.ok("call", "proj.add", "-a", "[1, 2]", "--countdown", "60").strip()
    wait_for(
        lambda: task_id in json.dumps(as_json(cluster, "inspect", "scheduled")),
        15,
        "the task in inspect scheduled",
    )
    out = remote(cluster, "control", "revoke", task_id)
    assert out.startswith(f"->  {cluster.node}: OK\n        tasks ") and task_id in out
    assert task_id in as_json(cluster, "inspect", "revoked")[cluster.node]
    proc = cluster.cli("result", task_id, "--timeout", "15")
    assert (proc.returncode, proc.stderr) == (1, f"Error: task {task_id} was revoked\n")


def test_control_add_and_cancel_consumer(cluster: Cluster) -> None:
    queue = f"extra-{uuid.uuid4().hex[:6]}"
    assert (
        remote(cluster, "control", "add_consumer", queue)
        == f"->  {cluster.node}: OK\n        add consumer {queue}\n"
    )
    names = [q["name"] for q in as_json(cluster, "inspect", "active_queues")[cluster.node]]
    assert queue in names
    task_id = cluster.cli.ok("call", "proj.add", "-a", "[20, 22]", "--queue", queue).strip()
    assert cluster.cli.ok("result", task_id, "--timeout", "20") == "42\n"
    out = remote(cluster, "control", "cancel_consumer", queue)
    assert out == f"->  {cluster.node}: OK\n        no longer consuming from {queue}\n"
    assert queue not in [q["name"] for q in as_json(cluster, "inspect", "active_queues")[cluster.node]]


def test_control_pool_grow_on_a_fixed_pool_is_an_error_reply(cluster: Cluster) -> None:
    """Celery prints the node's error and still exits 0: the command was delivered and answered."""
    out = remote(cluster, "control", "pool_grow", "1")
    assert out.startswith(f"->  {cluster.node}: ERROR\n        ")


def test_control_events_toggle_and_heartbeat(cluster: Cluster) -> None:
    assert "task events disabled" in remote(cluster, "control", "disable_events")
    assert "task events enabled" in remote(cluster, "control", "enable_events")
    assert remote(cluster, "control", "heartbeat") == f"->  {cluster.node}: OK\n    None\n"


def test_control_argument_errors(cluster: Cluster) -> None:
    proc = cluster.cli("control", "rate_limit", "proj.add", "1/s", "extra")
    assert (
        proc.returncode == 2
        and "Command 'rate_limit' takes arguments: <task_name> <rate_limit" in proc.stderr
    )
    proc = cluster.cli("control", "pool_grow", "many")
    assert proc.returncode == 2 and "bad value for n" in proc.stderr


def test_options_after_the_command(cluster: Cluster) -> None:
    """Celery 3's order (``inspect ping -A proj -b URL``) works as for the worker."""
    cli = cluster.cli
    args = ["inspect", "ping", "-A", "proj", "-b", cli.broker, "-d", cluster.node, "-t", "10", "-j"]
    assert json.loads(cli.ok(*args, base=False)) == {cluster.node: {"ok": "pong"}}


# -- call and result ------------------------------------------------------------------------
def test_call_then_result(cluster: Cluster) -> None:
    task_id = cluster.cli.ok("call", "proj.add", "-a", "[2, 3]").strip()
    assert uuid.UUID(task_id)
    assert cluster.cli.ok("result", task_id, "--timeout", "20") == "5\n"
    meta = json.loads(cluster.cli.ok("result", task_id, "--json"))
    assert meta == {"task_id": task_id, "status": "SUCCESS", "result": 5, "traceback": None}
    kw_id = cluster.cli.ok("call", "proj.add", "--kwargs", '{"x": 1, "y": 41}').strip()
    assert cluster.cli.ok("result", kw_id, "--timeout", "20", "-t", "proj.add") == "42\n"


def test_call_with_eta(cluster: Cluster) -> None:
    eta = (datetime.now(timezone.utc) + timedelta(seconds=2)).isoformat()
    started = time.monotonic()
    task_id = cluster.cli.ok("call", "proj.add", "-a", "[1, 1]", "--eta", eta).strip()
    assert cluster.cli.ok("result", task_id, "--timeout", "20") == "2\n"
    assert time.monotonic() - started >= 1.5


def test_call_expired_task_is_revoked(cluster: Cluster) -> None:
    task_id = cluster.cli.ok("call", "proj.add", "-a", "[1, 1]", "--countdown", "2", "--expires", "1").strip()
    proc = cluster.cli("result", task_id, "--timeout", "20")
    assert (proc.returncode, proc.stderr) == (1, f"Error: task {task_id} was revoked\n")


def test_result_of_a_failed_task(cluster: Cluster) -> None:
    task_id = cluster.cli.ok("call", "proj.boom").strip()
    proc = cluster.cli("result", task_id, "--timeout", "20")
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"Error: task {task_id} raised ZeroDivisionError: nope\n"
    traceback = cluster.cli.ok("result", task_id, "--traceback")
    assert traceback.startswith("Traceback (most recent call last):\n")
    assert "ZeroDivisionError: nope" in traceback
    meta = json.loads(cluster.cli.ok("result", task_id, "--json"))
    assert meta["status"] == "FAILURE"
    assert meta["result"] == {"exc_type": "ZeroDivisionError", "exc_message": ["nope"]}


def test_result_not_ready_is_bounded(bare: Cli) -> None:
    started = time.monotonic()
    proc = bare("result", str(uuid.uuid4()), "--timeout", "1")
    assert proc.returncode == 75
    assert re.fullmatch(
        r"Error: task \S+ is still PENDING after 1 s \(--timeout waits longer\)\n", proc.stderr
    )
    assert time.monotonic() - started < 30


def test_call_bad_json_is_a_usage_error(bare: Cli) -> None:
    proc = bare("call", "proj.add", "-a", "[1,")
    assert proc.returncode == 2
    assert "Error: Invalid value for '-a' / '--args': Expecting value" in proc.stderr
    proc = bare("call", "proj.add", "-k", "[1]")
    assert (
        proc.returncode == 2 and "Invalid value for '-k' / '--kwargs': [1] was not an object" in proc.stderr
    )
    proc = bare("call", "proj.add", "--eta", "tomorrow")
    assert proc.returncode == 2 and "Invalid value for '--eta'" in proc.stderr


# -- purge ----------------------------------------------------------------------------------
def test_purge_prompts_then_purges(bare: Cli) -> None:
    queue = f"purge-{uuid.uuid4().hex[:6]}"
    for n in range(3):
        bare.ok("call", "proj.add", "-a", f"[{n}, 1]", "--queue", queue)
    proc = bare("purge", "-Q", queue, input="n\n")
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"WARNING:This will remove all tasks from queue: {queue}.\n")
    assert (
        "(to skip this prompt use the -f option)\nAre you sure you want to delete all tasks? [y/N]: "
        in proc.stdout
    )
    assert "Aborted!" in proc.stderr
    out = bare.ok("purge", "-Q", queue, input="y\n")
    assert out.endswith("Purged 3 messages from 1 known task queue.\n")
    assert bare.ok("purge", "-f", "-Q", queue) == "No messages purged from 1 queue.\n"


def test_purge_default_queues_with_exclusions(bare: Cli) -> None:
    """Without -Q: the app's known queues (here its default queue, which no worker consumes)."""
    queue = f"default-{uuid.uuid4().hex[:6]}"
    write_module(bare.cwd, "proj", f"{APP}\napp.conf.task_default_queue = {queue!r}\n")
    bare.ok("call", "proj.add", "-a", "[1, 1]")
    bare.ok("call", "proj.add", "-a", "[1, 2]")
    assert bare.ok("purge", "-f", "-X", queue) == "No queues to purge.\n"
    assert bare.ok("purge", "-f") == "Purged 2 messages from 1 known task queue.\n"
    assert bare.ok("purge", "-f") == "No messages purged from 1 queue.\n"
