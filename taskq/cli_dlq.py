"""``taskq dlq list|replay|purge``: look at, send back, or drop dead-lettered task messages.

A worker moves a message that kept killing its workers to a dead-letter queue
(``taskq/worker/deliveries.py``). These commands take the messages off that queue with kombu's
``basic_get`` and no ack, act on the chosen ones, and hand the rest back, so they work the same
on every transport and a crash half-way leaves the untouched messages where they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from taskq.cli_common import broker_errors, pluralize, say
from taskq.worker import deliveries

if TYPE_CHECKING:
    from kombu.message import Message

    from taskq.app import App
    from taskq.cli import Settings


@click.group()
def dlq() -> None:
    """Dead-lettered tasks: list them, replay them to their queue, or purge them."""


def _queue_option(fn: Any) -> Any:
    return click.option(
        "-Q", "--queue", help="The work queue whose dead letters to use (default: task_default_queue)."
    )(fn)


def _ids_option(fn: Any) -> Any:
    return click.option("--id", "ids", multiple=True, help="Only this task id (repeatable).")(fn)


@contextmanager
def _taken(app: App, queue: str | None) -> Iterator[tuple[str, list[Message], Any]]:
    """Every message of the dead-letter queue, taken unacked; whatever is not acked goes back."""
    name = deliveries.dead_letter_queue(app, queue or app.conf.task_default_queue)
    with broker_errors(app), app.broker.connection.clone() as conn:
        channel = conn.channel()
        bound = deliveries.plain_queue(name)(channel)
        bound.declare()
        taken: list[Message] = []
        try:
            while (message := bound.get(no_ack=False)) is not None:
                taken.append(message)
            yield name, taken, channel
        finally:
            for message in taken:
                if not message.acknowledged:
                    message.reject(requeue=True)
            channel.close()


def _chosen(messages: list[Message], ids: tuple[str, ...]) -> list[Message]:
    return [m for m in messages if not ids or (m.headers or {}).get("id") in ids]


@dlq.command("list")
@_queue_option
@click.pass_obj
def list_(settings: Settings, queue: str | None) -> None:
    """Show each dead-lettered task: id, name, deliveries, when, origin, reason."""
    with _taken(settings.app, queue) as (name, messages, _):
        say(f"{name}: {len(messages)} dead-lettered {pluralize(len(messages), 'task')}")
        for message in messages:
            h = message.headers or {}
            say(
                f"{h.get('id', '?')}  {h.get('task', '?')}  deliveries={h.get(deliveries.COUNT, '?')}  "
                f"at={h.get(deliveries.WHEN, '?')}  from={h.get(deliveries.ORIGIN, '?')}  "
                f"reason: {h.get(deliveries.REASON, '?')}"
            )


@dlq.command()
@_queue_option
@_ids_option
@click.pass_obj
def replay(settings: Settings, queue: str | None, ids: tuple[str, ...]) -> None:
    """Send dead-lettered tasks back to their original queue, their delivery count reset."""
    app = settings.app
    with _taken(app, queue) as (name, messages, _):
        chosen = _chosen(messages, ids)
        for message in chosen:
            headers = message.headers or {}
            origin = headers.get(deliveries.ORIGIN) or name.removesuffix(".dlq")
            deliveries.republish(message, origin, deliveries.original_headers(headers), declare=True)
            message.ack()  # after the copy is out: a crash in between keeps both, loses neither
            say(f"{headers.get('id', '?')} -> {origin}")
    say(f"Replayed {len(chosen)} {pluralize(len(chosen), 'task')} from {name}.")


@dlq.command()
@_queue_option
@_ids_option
@click.option("-f", "--force", is_flag=True, help="Don't prompt for verification.")
@click.pass_obj
def purge(settings: Settings, queue: str | None, ids: tuple[str, ...], force: bool) -> None:
    """Delete dead-lettered tasks. There is no undo."""
    app = settings.app
    if not force:
        click.confirm("Delete the dead-lettered tasks? There is no undo", abort=True)
    with _taken(app, queue) as (name, messages, _):
        chosen = _chosen(messages, ids)
        for message in chosen:
            message.ack()
    say(f"Purged {len(chosen)} {pluralize(len(chosen), 'task')} from {name}.")
