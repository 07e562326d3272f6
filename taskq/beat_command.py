"""What ``taskq beat`` and ``taskq worker -B`` do once click has parsed their options.

Kept out of ``cli.py`` (which only declares options) and out of ``beat.py`` (which knows nothing
of processes): logging, the banner, stop signals; pid file, detaching and privileges come from
``taskq.daemon``, shared with the worker.
"""

from __future__ import annotations

import signal
from datetime import datetime
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from taskq import __version__
from taskq.beat import Service
from taskq.daemon import apply_umask, check_pidfile, create_pidfile, detach, drop_privileges, remove_pidfile
from taskq.exceptions import ImproperlyConfigured, OperationalError

if TYPE_CHECKING:
    from taskq.app import App

__all__ = ["banner", "run_beat"]


def banner(service: Service, loglevel: str, logfile: str | None) -> str:
    scheduler = service.scheduler
    cls = type(scheduler)
    interval = float(getattr(scheduler, "max_interval", 0) or 0)
    lines = [
        f"taskq beat v{__version__} is starting.",
        f"LocalTime -> {datetime.now().replace(microsecond=0)}",
        "Configuration ->",
        f"    . broker -> {service.app.broker.masked_url}",
        f"    . scheduler -> {cls.__module__}.{cls.__qualname__}",
    ]
    info = getattr(scheduler, "info", "")
    if info:
        lines.append(info)
    lines += [
        f"    . logfile -> {logfile or '[stderr]'}@%{loglevel.upper()}",
        f"    . maxinterval -> {interval:g} s",
        f"    . lease -> {service.describe_lease()}",
    ]
    return "\n".join(lines)


def run_beat(app: App, *, quiet: bool = False, **opts: Any) -> None:
    """``taskq beat``: options as the command declares them (see ``cli.beat``)."""
    from taskq.worker.worker import setup_logging

    apply_umask(opts.get("umask"))
    if opts.get("detach"):
        if opts.get("pidfile"):  # once detached, nobody would see the refusal
            check_pidfile(opts["pidfile"], "beat")
        detach(opts.get("workdir"))
    drop_privileges(opts.get("uid"), opts.get("gid"))
    setup_logging(opts["loglevel"], opts.get("logfile"))
    pidfile = create_pidfile(opts["pidfile"], "beat") if opts.get("pidfile") else None
    try:
        service = Service(
            app,
            max_interval=opts.get("max_interval"),
            schedule_filename=opts.get("schedule"),
            scheduler_cls=opts.get("scheduler"),
            hostname=opts.get("hostname"),
        )
        try:
            text = banner(service, opts["loglevel"], opts.get("logfile"))
        except (ImproperlyConfigured, OSError) as exc:
            raise click.ClickException(str(exc)) from None
        if not quiet:
            click.echo(text, err=True)
        if opts.get("remote_control"):
            click.echo(
                "beat: remote control (--enable-remote-control) is not available in taskq yet", err=True
            )

        def on_signal(signum: int, frame: FrameType | None) -> None:
            service.stop()

        for name in ("SIGTERM", "SIGINT", "SIGQUIT"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), on_signal)
        try:
            service.start()
        except OperationalError as exc:
            raise click.ClickException(str(exc)) from None
    finally:
        if pidfile:
            remove_pidfile(pidfile)
