"""The client commands beyond ``worker`` and ``beat``, each in a module of its own.

``cli.py`` calls ``register`` once at import, before ``main`` reorders options (it reads
``cli.commands`` to know which options belong to which command).
"""

from __future__ import annotations

import click

from taskq.check_compat import check_compat
from taskq.cli_control import control, inspect, status
from taskq.cli_dlq import dlq
from taskq.cli_events import events
from taskq.cli_info import list_, report
from taskq.cli_purge_results import purge_results
from taskq.cli_tools import call, purge, result, shell

COMMANDS: tuple[click.Command, ...] = (
    call,
    check_compat,
    control,
    dlq,
    events,
    inspect,
    list_,
    purge,
    purge_results,
    report,
    result,
    shell,
    status,
)


def register(group: click.Group) -> None:
    for command in COMMANDS:
        group.add_command(command)
