"""What ``taskq beat`` and ``taskq worker -B`` do once click has parsed their options.

Kept out of ``cli.py`` (which only declares options) and out of ``beat.py`` (which knows nothing
of processes): logging, the banner, the pid file, detaching, privileges, stop signals, and the
embedded beat's start and stop around a worker's life.
"""

from __future__ import annotations

import os
import signal
import sys
from datetime import datetime
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from taskq import __version__
from taskq.beat import Service
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def create_pidfile(path: str) -> str:
    """Write our pid; refuse when the file names another live process (a beat already running)."""
    path = os.path.abspath(path)
    try:
        with open(path) as fh:
            existing = int(fh.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        existing = 0
    if existing and existing != os.getpid() and _alive(existing):
        raise click.ClickException(
            f"pidfile {path} names running process {existing}: is beat already running?"
        )
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{os.getpid()}\n")
    os.replace(tmp, path)
    return path


def remove_pidfile(path: str) -> None:
    try:
        with open(path) as fh:
            if fh.read().strip() == str(os.getpid()):
                os.unlink(path)
    except OSError:
        pass


def detach(workdir: str | None = None) -> None:
    """Become a daemon: fork twice, new session, standard streams to /dev/null (POSIX)."""
    if not hasattr(os, "fork"):
        raise click.UsageError("--detach needs a POSIX system; run beat under a service manager instead")
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    if workdir:
        os.chdir(workdir)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def drop_privileges(uid: str | None, gid: str | None) -> None:
    """``--gid`` then ``--uid`` (names or numbers), as Celery's ``maybe_drop_privileges``."""
    if gid:
        import grp

        os.setgid(int(gid) if gid.isdigit() else grp.getgrnam(gid).gr_gid)
    if uid:
        import pwd

        os.setuid(int(uid) if uid.isdigit() else pwd.getpwnam(uid).pw_uid)


def run_beat(app: App, *, quiet: bool = False, **opts: Any) -> None:
    """``taskq beat``: options as the command declares them (see ``cli.beat``)."""
    from taskq.worker.worker import setup_logging

    if opts.get("umask"):
        os.umask(int(opts["umask"], 8))
    if opts.get("detach"):
        detach(opts.get("workdir"))
    drop_privileges(opts.get("uid"), opts.get("gid"))
    setup_logging(opts["loglevel"], opts.get("logfile"))
    pidfile = create_pidfile(opts["pidfile"]) if opts.get("pidfile") else None
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
