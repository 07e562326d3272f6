"""The ``taskq`` command: Celery's commands and flags, with one-line errors.

Options are accepted in both orders found in guides: Celery 5's ``taskq -A proj worker`` and
the older ``taskq worker -A proj`` (also ``taskq -B -A proj worker``); ``main`` moves each
option to the command it belongs to before click parses the line.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from taskq import __version__
from taskq.app import App
from taskq.cli_commands import register as register_commands
from taskq.exceptions import ImproperlyConfigured, OperationalError

# Global options: (names, takes a value)
GLOBAL_OPTIONS: dict[str, bool] = {
    "-A": True, "--app": True, "-b": True, "--broker": True, "--result-backend": True,
    "--loader": True, "--config": True, "--workdir": True, "-C": False, "--no-color": False,
    "-q": False, "--quiet": False, "--skip-checks": False,
}  # fmt: skip


def find_app(name: str) -> App:
    """Locate the app as Celery does: ``module:attr``, ``module.attr``, or a module holding one.

    In a module: attribute ``app``, then ``celery``, then a ``<pkg>.celery`` submodule, then
    any App instance among its attributes.
    """
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name or "." not in module_name or attr:
            raise
        module_name, _, attr = module_name.rpartition(".")
        module = importlib.import_module(module_name)
    if attr:
        found = getattr(module, attr, None)
        if isinstance(found, App):
            return found
        if callable(found):  # an app factory
            made = found()
            if isinstance(made, App):
                return made
        raise ImproperlyConfigured(f"{module_name}:{attr} is not a taskq/Celery app")
    for candidate in ("app", "celery"):
        found = getattr(module, candidate, None)
        if isinstance(found, App):
            return found
    if hasattr(module, "__path__"):
        try:
            sub = importlib.import_module(f"{module_name}.celery")
        except ModuleNotFoundError as exc:
            if exc.name != f"{module_name}.celery":
                raise
        else:
            for candidate in ("app", "celery"):
                found = getattr(sub, candidate, None)
                if isinstance(found, App):
                    return found
    for value in vars(module).values():
        if isinstance(value, App):
            return value
    raise ImproperlyConfigured(
        f"module {module_name!r} has no taskq/Celery app (looked for 'app' and 'celery')"
    )


class Settings:
    """What the group options resolved to, handed to each command."""

    def __init__(
        self, app_name: str | None, broker: str | None, backend: str | None, config: str | None, quiet: bool
    ) -> None:
        self.app_name = app_name
        self.config = config
        self.broker = broker
        self.backend = backend
        self.quiet = quiet
        self._app: App | None = None

    @property
    def app(self) -> App:
        if self._app is None:
            self._app = self._load()
        return self._app

    def _load(self) -> App:
        if self.app_name:
            try:
                app = find_app(self.app_name)
            except ImproperlyConfigured as exc:
                raise click.ClickException(f"Unable to load app {self.app_name!r}: {exc}") from None
            except ImportError as exc:
                raise click.ClickException(
                    f"Unable to load app {self.app_name!r}: cannot import {exc.name or exc}"
                ) from None
            except Exception as exc:  # the user's module raised while importing
                raise click.ClickException(
                    f"Unable to load app {self.app_name!r}: {type(exc).__name__}: {exc}"
                ) from None
        else:
            app = App("default")
        if self.config:
            try:
                app.config_from_object(self.config)
            except ImproperlyConfigured as exc:
                raise click.ClickException(str(exc)) from None
        if self.broker:
            app.conf.broker_url = self.broker
            app._reset_connections()
        if self.backend:
            app.conf.result_backend = self.backend
            app._reset_connections()
        return app


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-A", "--app", "app_name", envvar="TASKQ_APP", help="Application: module, module:attr or module.attr."
)
@click.option("-b", "--broker", help="Broker URL (overrides broker_url).")
@click.option("--result-backend", help="Result backend URL (overrides result_backend).")
@click.option("--loader", hidden=True, help="Accepted for Celery compatibility; taskq has one loader.")
@click.option("--config", "config_module", help="Config module to load (dotted path).")
@click.option(
    "--workdir", type=click.Path(file_okay=False, exists=True), help="Change to this directory first."
)
@click.option("-C", "--no-color", is_flag=True, help="Accepted for compatibility; output is uncoloured.")
@click.option("-q", "--quiet", is_flag=True, help="Less output.")
@click.option("--skip-checks", is_flag=True, hidden=True, help="Accepted for compatibility.")
@click.version_option(__version__, "--version", prog_name="taskq", message="%(prog)s %(version)s")
@click.pass_context
def cli(
    ctx: click.Context,
    app_name: str | None,
    broker: str | None,
    result_backend: str | None,
    loader: str | None,
    config_module: str | None,
    workdir: str | None,
    no_color: bool,
    quiet: bool,
    skip_checks: bool,
) -> None:
    """taskq: run and manage workers of a Celery-compatible app."""
    if workdir:
        os.chdir(workdir)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    ctx.obj = Settings(app_name, broker, result_backend, config_module, quiet)


# Options several commands share, declared once.
loglevel_option = click.option(
    "-l",
    "--loglevel",
    default="WARNING",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL"], case_sensitive=False),
    help="Logging level.",
)
logfile_option = click.option("-f", "--logfile", help="Log to this file instead of stderr.")


def _csv(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _not_yet(flag: str, what: str) -> None:
    raise click.UsageError(f"{flag} ({what}) is not available in taskq {__version__} yet")


@cli.command()
@click.option("-c", "--concurrency", type=int, help="Number of pool slots (default: CPU count).")
@click.option(
    "-P",
    "--pool",
    type=click.Choice(["threads", "solo", "prefork", "processes", "asyncio", "gevent", "eventlet"]),
    help="Pool implementation.",
)
@click.option("-Q", "--queues", help="Comma-separated queues to consume (default: all known queues).")
@click.option("-X", "--exclude-queues", help="Comma-separated queues not to consume.")
@click.option("-I", "--include", help="Comma-separated modules to import.")
@click.option("-n", "--hostname", help="Node name, e.g. name@%h (default celery@%h).")
@loglevel_option
@logfile_option
@click.option(
    "--pidfile", help="Write the worker's pid here; refuse to start if it names a live process (%n expands)."
)
@click.option("--prefetch-multiplier", type=int, help="Messages reserved per pool slot.")
@click.option(
    "-O", "--optimization", type=click.Choice(["default", "fair"]), help="fair: reserve one message per slot."
)
@click.option(
    "--purge",
    "--discard",
    "purge",
    is_flag=True,
    help="Delete waiting messages of the consumed queues first.",
)
@click.option(
    "-E",
    "--task-events",
    "--events",
    "task_events",
    is_flag=True,
    help="Send task events (task-received, -started, -succeeded, ...) for monitors such as Flower.",
)
@click.option("--without-heartbeat", is_flag=True, help="Send no worker-online/heartbeat/offline events.")
@click.option("--without-gossip", is_flag=True, hidden=True)
@click.option("--without-mingle", is_flag=True, hidden=True)
@click.option(
    "-B", "--beat", is_flag=True, help="Also run beat in this worker (safe on many with a lease store)."
)
@click.option(
    "-s", "--schedule-filename", "--schedule", "schedule_filename", help="Embedded beat's schedule file."
)
@click.option("--scheduler", help="Embedded beat's scheduler class.")
@click.option("-D", "--detach", is_flag=True, help="Run in the background (logfile default %n%I.log).")
@click.option("--uid", help="Drop privileges to this user (name or id).")
@click.option("--gid", help="Drop privileges to this group (name or id).")
@click.option("--umask", help="umask of the process (octal), e.g. 022.")
@click.option("--executable", help="Python interpreter a detached worker runs (default: this one).")
@click.option("--autoscale", help="MAX,MIN: grow the pool up to MAX when work waits, shrink to MIN.")
@click.option("--max-tasks-per-child", type=int, help="Replace a prefork child after it ran this many tasks.")
@click.option(
    "--max-memory-per-child",
    type=int,
    help="Replace a prefork child once its resident memory passes this many KiB (after its task).",
)
@click.option("--time-limit", type=float, help="Hard time limit (s) of every task, unless it sets its own.")
@click.option(
    "--soft-time-limit", type=float, help="Soft time limit (s) of every task, unless it sets its own."
)
@click.option("-S", "--statedb", help="File keeping revoked task ids across restarts (%n expands).")
@click.pass_obj
def worker(settings: Settings, **opts: Any) -> None:
    """Start a worker."""
    pool = opts["pool"]
    from taskq import daemon, relaunch
    from taskq.worker.autoscale import parse_autoscale
    from taskq.worker.worker import Worker, expand_hostname, setup_logging

    try:
        autoscale = parse_autoscale(opts["autoscale"]) if opts["autoscale"] else None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    nodename = expand_hostname(opts["hostname"])
    if opts["detach"]:
        app = settings.app  # an app that cannot load says so here, on the terminal
        daemon_opts = {k: opts[k] for k in ("logfile", "pidfile", "uid", "gid", "umask", "executable")}
        relaunch.detach_and_exec(nodename, what="the worker", **daemon_opts)
    daemon.apply_umask(opts["umask"])
    daemon.drop_privileges(opts["uid"], opts["gid"])
    try:
        logfile = daemon.node_format(opts["logfile"], nodename) if opts["logfile"] else None
        pidfile = daemon.node_format(opts["pidfile"], nodename) if opts["pidfile"] else None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    setup_logging(opts["loglevel"], logfile)
    app = settings.app
    if pidfile:
        daemon.pidlock(pidfile, "the worker")
    multiplier = 1 if opts["optimization"] == "fair" else opts["prefetch_multiplier"]
    try:
        node = Worker(
            app,
            concurrency=opts["concurrency"],
            pool=pool,
            queues=_csv(opts["queues"]),
            exclude_queues=_csv(opts["exclude_queues"]),
            hostname=opts["hostname"],
            prefetch_multiplier=multiplier,
            include=_csv(opts["include"]),
            statedb=opts["statedb"],
            beat=opts["beat"],
            schedule_filename=opts["schedule_filename"],
            scheduler=opts["scheduler"],
            max_tasks_per_child=opts["max_tasks_per_child"],
            max_memory_per_child=opts["max_memory_per_child"],
            autoscale=autoscale,
            time_limit=opts["time_limit"],
            soft_time_limit=opts["soft_time_limit"],
            task_events=True if opts["task_events"] else None,  # without -E: worker_send_task_events
            without_heartbeat=opts["without_heartbeat"],
        )
    except ImportError as exc:
        raise click.ClickException(f"cannot import {exc.name or exc} (listed in imports/include)") from None
    except (ValueError, ImproperlyConfigured) as exc:
        raise click.ClickException(str(exc)) from None
    if opts["purge"]:
        try:
            count = app.broker.purge([q.name for q in node.consumer.queues])
        except OperationalError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"Purged {count} message(s) from {', '.join(q.name for q in node.consumer.queues)}.")
    node.restart_command = relaunch.command_line()
    if not settings.quiet:
        click.echo(node.banner(), err=True)
        if logfile and daemon.stderr_is_devnull():  # detached: the log file is all anyone reads
            with open(logfile, "a") as fh:
                fh.write(f"{node.banner()}\n")
    try:
        node.start()
    except OperationalError as exc:
        raise click.ClickException(str(exc)) from None
    if node.restart_requested and node.restart_command is not None:
        relaunch.reexec(node.restart_command)  # SIGHUP: the same command line, same pid


@cli.command()
@click.option(
    "-s", "--schedule", help="Schedule file (default: beat_schedule_filename, taskq-beat-schedule)."
)
@click.option("-S", "--scheduler", help="Scheduler class (default: beat_scheduler).")
@click.option("--max-interval", type=float, help="Longest sleep between two looks at the schedule (s).")
@loglevel_option
@logfile_option
@click.option("--pidfile", help="Write beat's pid here; refuse to start if it names a live process.")
@click.option("--detach", is_flag=True, help="Run in the background (POSIX).")
@click.option("--uid", help="Drop privileges to this user.")
@click.option("--gid", help="Drop privileges to this group.")
@click.option("--umask", help="umask of the process (octal), e.g. 022.")
@click.option("--executable", hidden=True, help="Accepted for compatibility.")
@click.option("-n", "--hostname", help="Node name (accepted; used in logs).")
@click.option(
    "--enable-remote-control/--no-enable-remote-control", "remote_control", default=None, hidden=True
)
@click.pass_obj
def beat(settings: Settings, **opts: Any) -> None:
    """Start the beat periodic task scheduler."""
    from taskq.beat_command import run_beat

    run_beat(settings.app, quiet=settings.quiet, **opts)


register_commands(cli)  # inspect, control, status, call, purge, result, events, shell, report, list


def reorder_args(argv: Sequence[str]) -> list[str]:
    """Put global options before the command and command options after it."""
    commands = cli.commands
    pre: list[str] = []
    i = 0
    while i < len(argv) and argv[i] not in commands:
        pre.append(argv[i])
        i += 1
    if i == len(argv):
        return list(argv)
    command, post = argv[i], list(argv[i + 1 :])
    global_part: list[str] = []
    command_part: list[str] = []
    takes_value = _command_value_options(commands[command])
    j = 0
    while j < len(pre):
        token = pre[j]
        name = token.split("=", 1)[0]
        if name in GLOBAL_OPTIONS or _short_with_value(token) in GLOBAL_OPTIONS:
            width = 2 if GLOBAL_OPTIONS.get(name) and "=" not in token and name == token else 1
            global_part += pre[j : j + width]
        else:
            width = 2 if takes_value.get(name) and "=" not in token else 1
            command_part += pre[j : j + width]
        j += width
    rest: list[str] = []
    j = 0
    while j < len(post):
        token = post[j]
        if token == "--":
            rest += post[j:]
            break
        name = token.split("=", 1)[0]
        short = _short_with_value(token)
        if name in GLOBAL_OPTIONS and name not in takes_value:
            width = 2 if GLOBAL_OPTIONS[name] and "=" not in token else 1
            global_part += post[j : j + width]
        elif short != token and GLOBAL_OPTIONS.get(short) and short not in takes_value:
            width = 1  # -Aproj: a global option with its value attached
            global_part.append(token)
        else:
            width = 2 if takes_value.get(name) and "=" not in token else 1
            rest += post[j : j + width]
        j += width
    return [*global_part, command, *command_part, *rest]


def _short_with_value(token: str) -> str:
    """``-Aproj`` -> ``-A``, so the attached form is recognised too."""
    return token[:2] if len(token) > 2 and token[0] == "-" and token[1] != "-" else token


def _command_value_options(command: click.Command) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for opt in (*param.opts, *param.secondary_opts):
                out[opt] = not param.is_flag and not param.count
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    from taskq.relaunch import remember_command_line

    remember_command_line(argv)  # before --workdir moves us: what -D and SIGHUP re-run
    cli.main(args=reorder_args(args), prog_name="taskq")


if __name__ == "__main__":
    main()
