"""``taskq inspect``, ``taskq control`` and ``taskq status``: Celery's remote-control commands.

Requests go out with ``app.control.broadcast`` on the ``celery.pidbox`` mailbox, so the same
command reaches taskq and Celery workers alike, and the output is Celery's
(``->  node: OK`` then the indented reply, ``N nodes online.``) so scripts reading it keep working.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pprint import pformat
from typing import TYPE_CHECKING, Any

import click
from kombu.utils.json import dumps

from taskq.cli_common import EX_UNAVAILABLE, NO_REPLY, CommandError, broker_errors, pluralize, say

if TYPE_CHECKING:
    from taskq.cli import Settings


def strtobool(value: str) -> bool:
    """``conf true`` / ``conf 0``: the words Celery's ``strtobool`` accepts."""
    lowered = value.lower()
    if lowered in ("y", "yes", "t", "true", "on", "1"):
        return True
    if lowered in ("n", "no", "f", "false", "off", "0"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass(frozen=True)
class RemoteCommand:
    """How one pidbox command reads its positional arguments, as Celery's ``Panel.meta`` says."""

    kind: str  # "inspect" or "control"
    help: str
    args: tuple[tuple[str, Callable[[str], Any]], ...] = ()
    variadic: str | None = None  # name of the list the remaining arguments become
    signature: str = ""


_I, _C = "inspect", "control"
COMMANDS: dict[str, RemoteCommand] = {
    "active": RemoteCommand(_I, "List of tasks currently being executed."),
    "active_queues": RemoteCommand(_I, "List the task queues a worker is currently consuming from."),
    "clock": RemoteCommand(_I, "Get current logical clock value."),
    "conf": RemoteCommand(
        _I, "List configuration.", (("with_defaults", strtobool),), signature="[include_defaults=False]"
    ),
    "memdump": RemoteCommand(
        _I, "Dump statistics of previous memsample requests.", (("samples", int),), signature="[n_samples=10]"
    ),
    "memsample": RemoteCommand(_I, "Sample current RSS memory usage."),
    "objgraph": RemoteCommand(
        _I,
        "Create graph of uncollected objects (memory-leak debugging).",
        (("type", str), ("num", int), ("max_depth", int)),
        signature="[object_type=Request] [num=200 [max_depth=10]]",
    ),
    "ping": RemoteCommand(_I, "Ping worker(s)."),
    "query_task": RemoteCommand(
        _I, "Query for task information by id.", variadic="ids", signature="[id1 [id2 [... [idN]]]]"
    ),
    "registered": RemoteCommand(
        _I, "List of registered tasks.", variadic="taskinfoitems", signature="[attr1 [attr2 [... [attrN]]]]"
    ),
    "report": RemoteCommand(_I, "Information about the installation for bug reports."),
    "reserved": RemoteCommand(_I, "List of currently reserved tasks, not including scheduled/active."),
    "revoked": RemoteCommand(_I, "List of revoked task-ids."),
    "scheduled": RemoteCommand(_I, "List of currently scheduled ETA/countdown tasks."),
    "stats": RemoteCommand(_I, "Request worker statistics/information."),
    "add_consumer": RemoteCommand(
        _C,
        "Tell worker(s) to consume from task queue by name.",
        (("queue", str), ("exchange", str), ("exchange_type", str), ("routing_key", str)),
        signature="<queue> [exchange [type [routing_key]]]",
    ),
    "autoscale": RemoteCommand(
        _C, "Modify autoscale settings.", (("max", int), ("min", int)), signature="[max [min]]"
    ),
    "cancel_consumer": RemoteCommand(
        _C,
        "Tell worker(s) to stop consuming from task queue by name.",
        (("queue", str),),
        signature="<queue>",
    ),
    "disable_events": RemoteCommand(_C, "Tell worker(s) to stop sending task-related events."),
    "election": RemoteCommand(_C, "Hold election."),
    "enable_events": RemoteCommand(_C, "Tell worker(s) to send task-related events."),
    "heartbeat": RemoteCommand(_C, "Tell worker(s) to send event heartbeat immediately."),
    "pool_grow": RemoteCommand(_C, "Grow pool by n processes/threads.", (("n", int),), signature="[N=1]"),
    "pool_restart": RemoteCommand(_C, "Restart execution pool."),
    "pool_shrink": RemoteCommand(_C, "Shrink pool by n processes/threads.", (("n", int),), signature="[N=1]"),
    "rate_limit": RemoteCommand(
        _C,
        "Tell worker(s) to modify the rate limit for a task by type.",
        (("task_name", str), ("rate_limit", str)),
        signature="<task_name> <rate_limit (e.g., 5/s | 5/m | 5/h)>",
    ),
    "revoke": RemoteCommand(
        _C,
        "Revoke task by task id (or list of ids).",
        variadic="task_id",
        signature="[id1 [id2 [... [idN]]]]",
    ),
    "revoke_by_stamped_headers": RemoteCommand(
        _C,
        "Revoke task by header (or list of headers).",
        variadic="headers",
        signature="[key1=value1 [key2=value2 [... [keyN=valueN]]]]",
    ),
    "shutdown": RemoteCommand(_C, "Shutdown worker(s)."),
    "terminate": RemoteCommand(
        _C,
        "Terminate task by task id (or list of ids).",
        (("signal", str),),
        variadic="task_id",
        signature="<signal> [id1 [id2 [... [idN]]]]",
    ),
    "time_limit": RemoteCommand(
        _C,
        "Tell worker(s) to modify the time limit for task by type.",
        (("task_name", str), ("soft", float), ("hard", float)),
        signature="<task_name> <soft_secs> [hard_secs]",
    ),
}


def commands_of(kind: str) -> dict[str, RemoteCommand]:
    return {name: meta for name, meta in sorted(COMMANDS.items()) if meta.kind == kind}


def compile_arguments(kind: str, name: str, args: list[str]) -> dict[str, Any]:
    """The positional words after the command name, as the keyword arguments the worker expects.

    Fixed arguments are taken in order and converted; what is left becomes the variadic list.
    Too many words for a command without one is a usage error, as in Celery.
    """
    choices = commands_of(kind)
    if name not in choices:
        raise click.UsageError(
            f"Command {name} not recognized. Available {kind} commands: {', '.join(choices)}"
        )
    meta = choices[name]
    if len(args) > len(meta.args) and not meta.variadic:
        raise click.UsageError(f"Command {name!r} takes arguments: {meta.signature or '(none)'}")
    arguments: dict[str, Any] = {}
    for (arg_name, convert), word in zip(meta.args, args, strict=False):
        try:
            arguments[arg_name] = convert(word)
        except ValueError as exc:
            raise click.UsageError(f"Command {name!r}: bad value for {arg_name}: {exc}") from None
    if meta.variadic:
        arguments[meta.variadic] = list(args[len(meta.args) :])
    return arguments


# -- Celery's rendering of replies ----------------------------------------------------------
def indent(text: str, width: int) -> str:
    return "\n".join(" " * width + line for line in text.splitlines())


def pretty(reply: Any) -> tuple[str, str]:
    """(status, body) of one node's reply: ``OK``/``ERROR`` and the text printed under it."""
    if isinstance(reply, list):
        return "OK", pretty_list(reply)
    if isinstance(reply, dict):
        if "ok" in reply:
            return "OK", indent(pretty(reply["ok"])[1], 4)
        if "error" in reply:
            return "ERROR", indent(pretty(reply["error"])[1], 4)
        return "OK", json.dumps(reply, sort_keys=True, indent=4, default=str)
    if isinstance(reply, str):
        return "OK", reply
    return "OK", pformat(reply)


def pretty_list(items: list[Any]) -> str:
    if not items:
        return "- empty -"
    return "\n".join(f"* {item}" for item in items)


def say_reply(node: str, reply: Any, *, show_body: bool, quiet: bool) -> None:
    """``->  node: OK`` (Celery's double space after the arrow) and the reply indented by 4."""
    status, body = pretty(reply)
    arrow = "" if quiet else "-> "
    say(f"{arrow} {node}: {status}")
    if show_body and body:
        say(indent(body, 4))


def merge(replies: list[dict[str, Any]] | None) -> dict[str, Any]:
    """``[{node: reply}, ...]`` -> ``{node: reply}``, as Celery's ``Inspect`` returns them."""
    merged: dict[str, Any] = {}
    for reply in replies or ():
        merged.update(reply)
    return merged


def _broadcast(
    settings: Settings, command: str, arguments: Mapping[str, Any], destination: list[str], timeout: float
) -> list[dict[str, Any]]:
    app = settings.app
    with broker_errors(app):
        replies = app.control.broadcast(
            command, dict(arguments), destination=destination or None, reply=True, timeout=timeout
        )
    if not replies:
        raise CommandError(NO_REPLY, EX_UNAVAILABLE)
    return replies


def _destinations(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _list_option(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--list``: print the commands with their arguments and stop."""

    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if not value or ctx.resilient_parsing:
            return
        formatter = click.HelpFormatter()
        with formatter.section(f"{kind.capitalize()} Commands"):
            formatter.write_dl(
                [(f"{name} {meta.signature}".strip(), meta.help) for name, meta in commands_of(kind).items()]
            )
        click.echo(formatter.getvalue(), nl=False)
        ctx.exit()

    return click.option(
        "--list",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=callback,
        help=f"List available {kind} commands and exit.",
    )


def _remote_options(fun: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        (
            click.option("-t", "--timeout", type=float, default=1.0, show_default=True,
                         help="Seconds to wait for replies."),
            click.option("-d", "--destination", help="Comma-separated node names (default: every worker)."),
            click.option("-j", "--json", "as_json", is_flag=True, help="Print the replies as JSON."),
        )
    ):  # fmt: skip
        fun = option(fun)
    return fun


def _replies_in_order(replies: list[dict[str, Any]]) -> Iterator[tuple[str, Any]]:
    for reply in replies:
        yield from reply.items()


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("method")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@_list_option("inspect")
@_remote_options
@click.pass_obj
def inspect(
    settings: Settings,
    method: str,
    args: tuple[str, ...],
    timeout: float,
    destination: str | None,
    as_json: bool,
) -> None:
    """Ask the workers for information: METHOD is ping, active, registered, stats... (see --list)."""
    arguments = compile_arguments("inspect", method, list(args))
    replies = _broadcast(settings, method, arguments, _destinations(destination), timeout)
    if as_json:
        say(dumps(merge(replies)))
        return
    for node, reply in _replies_in_order(replies):
        say_reply(node, reply, show_body=True, quiet=settings.quiet)
    if not settings.quiet:
        count = len(merge(replies))
        say(f"\n{count} {pluralize(count, 'node')} online.")


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("method")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@_list_option("control")
@_remote_options
@click.pass_obj
def control(
    settings: Settings,
    method: str,
    args: tuple[str, ...],
    timeout: float,
    destination: str | None,
    as_json: bool,
) -> None:
    """Send the workers a command: METHOD is revoke, rate_limit, pool_grow, shutdown... (see --list)."""
    arguments = compile_arguments("control", method, list(args))
    replies = _broadcast(settings, method, arguments, _destinations(destination), timeout)
    if as_json:
        say(dumps(replies))
        return
    for node, reply in _replies_in_order(replies):
        say_reply(node, reply, show_body=True, quiet=settings.quiet)


@click.command()
@_remote_options
@click.pass_obj
def status(settings: Settings, timeout: float, destination: str | None, as_json: bool) -> None:
    """Show the workers that are online (those answering a ping within --timeout)."""
    replies = _broadcast(settings, "ping", {}, _destinations(destination), timeout)
    if as_json:
        say(dumps(merge(replies)))
        return
    for node, reply in _replies_in_order(replies):
        say_reply(node, reply, show_body=False, quiet=settings.quiet)
    if not settings.quiet:
        count = len(merge(replies))
        say(f"\n{count} {pluralize(count, 'node')} online.")
