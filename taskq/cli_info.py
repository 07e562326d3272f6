"""``taskq report`` and ``taskq list bindings``: what is installed and how the broker is wired.

``report`` is what a bug report needs, so it must be safe to paste: every password in a URL and
every setting whose name suggests a secret is masked (Celery's rules, plus any other URL value).
``list bindings`` reads bindings from the broker: Redis and the other virtual transports keep
them in the broker itself (kombu lists them); RabbitMQ only tells them through its management
API, so without that plugin the bindings this app declares are listed, with a note saying so.
"""

from __future__ import annotations

import base64
import json
import platform
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pprint import pformat
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import click
import kombu
from kombu import Connection

from taskq import __version__
from taskq.broker import mask_url, transport_name
from taskq.cli_common import EX_UNAVAILABLE, CommandError, broker_errors, say

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.cli import Settings

COMPATIBLE_WITH = "Celery 5 compatible, task protocol 2"
# Celery's pattern of secret-looking setting names (yes, it masks *_routing_key too).
HIDDEN_SETTINGS = re.compile("API|TOKEN|KEY|SECRET|PASS|PROFANITIES_LIST|SIGNATURE|DATABASE|BEAT_DBURI", re.I)
MASK = "*" * 8
MANAGEMENT_PORT = 15672
HTTP_TIMEOUT = 5.0

REPORT = """\
software -> taskq:{taskq_v} ({compat}) kombu:{kombu_v} py:{py_v}
            billiard:{billiard_v} {driver_v}
platform -> system:{system} arch:{arch}
            kernel version:{kernel} imp:{py_i}
loader   -> {loader}
settings -> transport:{transport} results:{results}

{settings}
"""


def _mask_urls(value: str) -> str:
    """Each URL of a ``;``-separated failover list with its password masked."""
    return ";".join(mask_url(part) if "://" in part else part for part in value.split(";"))


def censor(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings as safe to show: secrets by name, passwords in URLs, nested mappings too."""

    def one(key: Any, value: Any) -> Any:
        if isinstance(value, Mapping):
            return censor(value)
        if isinstance(key, str) and HIDDEN_SETTINGS.search(key):
            return MASK
        if isinstance(value, str) and "://" in value:
            return _mask_urls(value)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return type(value)(_mask_urls(v) if "://" in v else v for v in value)
        return value

    return {key: one(key, value) for key, value in settings.items()}


def configured(app: App) -> dict[str, Any]:
    """Settings given explicitly (config, constructor, ``-b``, environment), not the defaults."""
    conf = app.conf
    table = {key: conf[key] for key in conf if conf.is_set(key)}
    table.update(conf.changes())
    return table


def report_text(app: App) -> str:
    import billiard

    try:
        connection = app.broker.new_connection()
        transport = transport_name(connection)
        driver_v = f"{connection.transport.driver_name}:{connection.transport.driver_version()}"
    except Exception:  # an unknown transport name: the report still helps
        transport = driver_v = ""
    human = "\n".join(
        f"{key}: {pformat(value, width=50)}" for key, value in sorted(censor(configured(app)).items())
    )
    backend = app.result_backend_url
    return REPORT.format(
        taskq_v=__version__,
        compat=COMPATIBLE_WITH,
        kombu_v=kombu.__version__,
        py_v=platform.python_version(),
        billiard_v=billiard.__version__,
        driver_v=driver_v,
        system=platform.system(),
        arch=", ".join(part for part in platform.architecture() if part),
        kernel=platform.release(),
        py_i=platform.python_implementation(),
        loader=f"{type(app).__module__}.{type(app).__qualname__} (app {app.main or '__main__'})",
        transport=transport,
        results=_mask_urls(backend) if backend else "disabled",
        settings=human,
    )


@click.command()
@click.pass_obj
def report(settings: Settings) -> None:
    """Show versions, platform and settings (secrets masked), for bug reports."""
    app = settings.app
    try:
        app.import_modules()
    except ImportError as exc:
        raise CommandError(f"cannot import {exc.name or exc} (listed in imports/include)") from None
    say(report_text(app))


# -- list bindings --------------------------------------------------------------------------
@click.group(name="list")
def list_() -> None:
    """Get info from the broker."""


def management_url(connection: Connection, override: str | None) -> str:
    """Where RabbitMQ's management API answers: ``--management-url``, else the broker's host."""
    if override:
        return override.rstrip("/")
    userinfo = (
        f"{quote(connection.userid or 'guest', safe='')}:{quote(connection.password or 'guest', safe='')}"
    )
    return f"http://{userinfo}@{connection.hostname or 'localhost'}:{MANAGEMENT_PORT}"


def fetch_management_bindings(base: str, vhost: str) -> list[tuple[str, str, str]]:
    """(queue, exchange, routing key) of every binding of ``vhost``, from ``/api/bindings``."""
    parts = urlsplit(base)
    netloc = parts.hostname or "localhost"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    url = f"{parts.scheme}://{netloc}{parts.path}/api/bindings/{quote(vhost, safe='')}"
    request = urllib.request.Request(url)
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
        rows = json.load(response)
    return [
        (b["destination"], b["source"], b["routing_key"])
        for b in rows
        if b.get("destination_type") == "queue"
    ]


def declared_bindings(app: App) -> list[tuple[str, str, str]]:
    """The bindings the app's own queue table declares (what ``declare`` just made sure exist)."""
    rows: list[tuple[str, str, str]] = []
    for queue in app.broker.queues.select():
        if queue.bindings:
            rows.extend(
                (queue.name, b.exchange.name if b.exchange else "", b.routing_key or "")
                for b in queue.bindings
            )
        else:
            rows.append((queue.name, queue.exchange.name if queue.exchange else "", queue.routing_key or ""))
    return rows


def _print_table(rows: Iterable[tuple[str, str, str]]) -> None:
    def line(queue: str, exchange: str, key: str) -> None:
        say(f"{queue:<28} {exchange:<28} {key}")

    line("Queue", "Exchange", "Routing Key")
    line("-" * 16, "-" * 16, "-" * 16)
    for row in rows:
        line(*row)


@list_.command()
@click.option(
    "--management-url",
    help=f"RabbitMQ management API base URL (default: http://<broker user:password@host>:{MANAGEMENT_PORT}).",
)
@click.pass_obj
def bindings(settings: Settings, management_url: str | None) -> None:
    """List queue bindings (Redis and other virtual transports; RabbitMQ via its management API)."""
    app = settings.app
    with broker_errors(app), app.broker.new_connection() as connection:
        channel = connection.default_channel
        for queue in app.broker.queues.select():  # as Celery: the app's queues exist before listing
            queue(channel).declare()
        if hasattr(channel, "list_bindings"):
            rows = sorted(channel.list_bindings())
        elif connection.transport_cls in ("amqp", "pyamqp", "amqps", "librabbitmq"):
            rows = _amqp_bindings(app, connection, management_url)
        else:
            raise click.UsageError("Your transport cannot list bindings.")
    _print_table(rows)


def _amqp_bindings(app: App, connection: Connection, override: str | None) -> list[tuple[str, str, str]]:
    base = management_url(connection, override)
    try:
        return sorted(fetch_management_bindings(base, connection.virtual_host or "/"))
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        reason = getattr(exc, "reason", None) or exc
        if override:  # asked for explicitly: not reaching it is the error
            raise CommandError(
                f"cannot read bindings from {mask_url(base)}: {reason}", EX_UNAVAILABLE
            ) from None
        say(
            f"note: RabbitMQ management API not reachable at {mask_url(base)} ({reason}); "
            "listing the bindings this app declares",
            err=True,
        )
        return sorted(declared_bindings(app))
