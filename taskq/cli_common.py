"""What the client commands (inspect, call, purge, events...) share: exit codes and one-line errors.

Celery's commands end with sysexits codes a shell script can test (``EX_UNAVAILABLE`` when no
worker answered or the broker is down), so taskq's do too; anything the broker raises becomes one
line naming the broker by its masked URL, never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from taskq.broker import CONNECTION_ERRORS
from taskq.exceptions import OperationalError

if TYPE_CHECKING:
    from taskq.app import App

# sysexits.h, the codes Celery's commands use
EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70

NO_REPLY = "No nodes replied within time constraint"


class CommandError(click.ClickException):
    """``Error: <message>`` on stderr and the given exit code (click's own exceptions exit 1)."""

    def __init__(self, message: str, exit_code: int = EX_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class


@contextmanager
def broker_errors(app: App, what: str = "connect to") -> Iterator[None]:
    """Turn a refused, lost or timed-out broker connection into one line and exit 69."""
    try:
        yield
    except OperationalError as exc:  # taskq's own already names the masked URL
        raise CommandError(str(exc), EX_UNAVAILABLE) from None
    except Exception as exc:
        connection_errors, channel_errors = transport_errors(app)
        if isinstance(exc, connection_errors):
            raise CommandError(f"cannot {what} {app.broker.masked_url}: {exc}", EX_UNAVAILABLE) from None
        if isinstance(exc, channel_errors):  # e.g. a queue declared with other arguments
            raise CommandError(f"the broker {app.broker.masked_url} refused: {exc}", EX_UNAVAILABLE) from None
        raise


def transport_errors(app: App) -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """What a refused or lost connection (a refused login too) and a refused request raise here."""
    try:
        connection = app.broker.connection
        return CONNECTION_ERRORS + tuple(connection.connection_errors), tuple(connection.channel_errors)
    except Exception:  # an unknown transport: the generic ones
        return CONNECTION_ERRORS, ()


def pluralize(n: int, word: str) -> str:
    """``1 node`` / ``2 nodes``: Celery's wording of counts."""
    return word if n == 1 else f"{word}s"


def say(message: str = "", *, err: bool = False) -> None:
    """One line of output (click flushes it at once, so a pipe such as ``| grep`` sees it live)."""
    click.echo(message, err=err)
