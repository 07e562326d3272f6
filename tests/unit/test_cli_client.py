"""The client commands' pure parts, held against Celery's own code (installed as a test
dependency): reply rendering, argument compilation, the command table, the event dump format,
secret masking; and click's surface (usage errors, option order) without a broker."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from taskq.cli import cli, reorder_args
from taskq.cli_control import COMMANDS, compile_arguments, pretty
from taskq.cli_events import Dumper, parse_rate
from taskq.cli_info import censor

VECTORS = Path(__file__).resolve().parents[1] / "data" / "vectors"

REPLIES: list[Any] = [
    {"ok": "pong"},
    {"error": "unknown task"},
    [],
    ["proj.add", "proj.mul [rate_limit=10/s]"],
    [{"id": "x", "name": "proj.add", "args": [1, 2]}],
    {"pid": 42, "pool": {"max-concurrency": 4, "processes": [1, 2]}, "clock": "7"},
    {"ok": {"nested": True}},
    {"ok": ["a", "b"]},
    "text",
    None,
    17,
]


@pytest.mark.parametrize("reply", REPLIES, ids=range(len(REPLIES)))
def test_pretty_is_celerys(reply: Any) -> None:
    from celery.bin.base import CLIContext

    celery = CLIContext(app=object(), no_color=True, workdir=None)
    assert pretty(reply) == celery.pretty(reply)


def test_command_table_is_celerys() -> None:
    from celery.worker.control import Panel

    visible = {name: meta for name, meta in Panel.meta.items() if meta.visible}
    assert set(COMMANDS) == set(visible)
    for name, meta in visible.items():
        ours = COMMANDS[name]
        assert (ours.kind, ours.variadic, ours.signature or None) == (
            meta.type,
            meta.variadic,
            meta.signature,
        ), name
        assert [arg for arg, _ in ours.args] == [arg for arg, _ in meta.args or ()], name


@pytest.mark.parametrize(
    ("kind", "name", "args"),
    [
        ("control", "revoke", ["a", "b"]),
        ("control", "terminate", ["SIGKILL", "a", "b"]),
        ("control", "rate_limit", ["proj.add", "10/s"]),
        ("control", "time_limit", ["proj.add", "1.5", "3"]),
        ("control", "time_limit", ["proj.add", "1.5"]),
        ("control", "autoscale", ["10", "2"]),
        ("control", "pool_grow", ["3"]),
        ("control", "pool_shrink", []),
        ("control", "add_consumer", ["q", "x", "topic", "k.#"]),
        ("control", "cancel_consumer", ["q"]),
        ("inspect", "query_task", ["a", "b"]),
        ("inspect", "registered", ["rate_limit", "time_limit"]),
        ("inspect", "conf", ["true"]),
        ("inspect", "memdump", ["5"]),
        ("inspect", "ping", []),
    ],
)
def test_compile_arguments_is_celerys(kind: str, name: str, args: list[str]) -> None:
    from celery.bin.control import _compile_arguments

    assert compile_arguments(kind, name, list(args)) == _compile_arguments(name, list(args))


def test_compile_arguments_refuses_what_celery_refuses() -> None:
    import click

    with pytest.raises(click.UsageError, match="Command 'rate_limit' takes arguments"):
        compile_arguments("control", "rate_limit", ["a", "b", "c"])
    with pytest.raises(click.UsageError, match="Available control commands: add_consumer, autoscale"):
        compile_arguments("control", "ping", [])  # an inspect command is not a control one
    with pytest.raises(click.UsageError, match="bad value for n"):
        compile_arguments("control", "pool_grow", ["x"])


def _celery_dump(event: dict[str, Any], dumper: Any) -> str:
    out = io.StringIO()
    dumper.out = out
    dumper.on_event(dict(event))
    return out.getvalue().rstrip("\n")


def test_dump_format_is_celerys() -> None:
    from celery.events.dumper import TASK_NAMES
    from celery.events.dumper import Dumper as CeleryDumper

    samples = json.loads((VECTORS / "events" / "redis_events.json").read_text())["samples_by_type"]
    order = ["worker-online", "task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
             "task-retried", "task-revoked", "worker-heartbeat", "worker-offline"]  # fmt: skip
    ours, theirs = Dumper(), CeleryDumper()
    TASK_NAMES.clear()
    for kind in order:
        event = samples[kind]["event"]
        assert ours.format(event) == _celery_dump(event, theirs), kind
    assert "task succeeded: specapp.add(" in ours.format(samples["task-succeeded"]["event"])


def test_censor() -> None:
    masked = censor(
        {
            "broker_url": "amqp://user:pw1@host//",
            "result_backend": "redis://:pw2@host/1",
            "broker_transport_options": {"sentinel_kwargs": {"password": "pw3"}, "visibility_timeout": 10},
            "aws_secret": "pw4",
            "my_token": "pw5",
            "beat_dburi": "sqlite:///x",
            "broker_read_url": "amqp://u:pw6@a//;amqp://u:pw7@b//",
            "include": ["proj.tasks"],
            "worker_concurrency": 4,
        }
    )
    assert "pw" not in json.dumps(masked).replace("password", "")
    assert masked["broker_url"] == "amqp://user:**@host//"
    assert masked["broker_read_url"] == "amqp://u:**@a//;amqp://u:**@b//"
    assert masked["broker_transport_options"]["sentinel_kwargs"]["password"] == "********"
    assert masked["include"] == ["proj.tasks"] and masked["worker_concurrency"] == 4


def test_parse_rate() -> None:
    assert parse_rate(None) == 0.0
    assert parse_rate("10/m") == 6.0
    assert parse_rate("2") == 0.5
    assert parse_rate("1/h") == 3600.0
    with pytest.raises(Exception, match="is not a rate"):
        parse_rate("fast")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["inspect", "ping", "-A", "proj", "-t", "2"], ["-A", "proj", "inspect", "ping", "-t", "2"]),
        (["control", "-d", "a@h", "revoke", "id1", "-b", "redis://"], ["-b", "redis://", "control", "-d", "a@h", "revoke", "id1"]),
        (["list", "bindings", "-A", "proj"], ["-A", "proj", "list", "bindings"]),
        (["events", "--dump", "-Aproj"], ["-Aproj", "events", "--dump"]),
        (["-A", "proj", "call", "proj.add", "-a", "[1, 2]"], ["-A", "proj", "call", "proj.add", "-a", "[1, 2]"]),
        (["purge", "-Q", "a,b", "-f", "-q"], ["-q", "purge", "-Q", "a,b", "-f"]),
        (["shell", "-B"], ["shell", "-B"]),  # -B is bpython here, not the worker's beat
    ],
)  # fmt: skip
def test_reorder_args_for_client_commands(argv: list[str], expected: list[str]) -> None:
    assert reorder_args(argv) == expected


def test_usage_errors_need_no_broker() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["-b", "redis://127.0.0.1:1/0", "inspect", "nope"])
    assert result.exit_code == 2
    assert "Command nope not recognized. Available inspect commands: active, active_queues" in result.output
    result = runner.invoke(cli, ["-b", "redis://127.0.0.1:1/0", "call", "x", "-a", "{}"])
    assert result.exit_code == 2 and "{} was not an array" in result.output


def test_list_of_remote_commands() -> None:
    result = CliRunner().invoke(cli, ["control", "--list"])
    assert result.exit_code == 0
    assert "Control Commands:" in result.output
    assert "rate_limit <task_name> <rate_limit (e.g., 5/s | 5/m | 5/h)>" in result.output
    assert "ping" not in result.output.split()
    result = CliRunner().invoke(cli, ["inspect", "--list"])
    assert "query_task [id1 [id2 [... [idN]]]]" in result.output


def test_every_client_command_is_registered() -> None:
    for name in (
        "inspect",
        "control",
        "status",
        "call",
        "purge",
        "result",
        "events",
        "shell",
        "report",
        "list",
    ):
        assert name in cli.commands, name
