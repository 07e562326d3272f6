"""Running this taskq command line again: in the background (``worker -D``), or in place of this
process (the SIGHUP restart).

Both re-run what the user typed rather than continue in a forked copy, as Celery does: the new
process starts clean (no imports, threads or connections of the old one), and since the
background one's command line has no ``-D``, a restart re-executes it in place, keeping its pid.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

import click

from taskq.daemon import (
    DEFAULT_LOGFILE,
    DEFAULT_PIDFILE,
    apply_umask,
    check_pidfile,
    detach,
    drop_privileges,
    node_format,
)

__all__ = [
    "CommandLine",
    "command_line",
    "detach_and_exec",
    "reexec",
    "remember_command_line",
    "without_options",
]


@dataclass(frozen=True)
class CommandLine:
    """How this process was started: interpreter part, taskq's arguments, starting directory."""

    prefix: list[str]  # [python, interpreter options..., script] or [python, ..., "-m", "taskq.cli"]
    args: list[str]
    cwd: str

    @property
    def argv(self) -> list[str]:
        return [*self.prefix, *self.args]


_command_line: CommandLine | None = None


def remember_command_line(argv: Sequence[str] | None) -> None:
    """Record the invocation before ``--workdir`` changes directory, so it can be run again.

    ``argv`` is what ``cli.main`` was given: None means the process's own command line (the
    ``taskq`` script or ``python -m taskq.cli``, with the interpreter's own options kept), a list
    means an embedding caller, which a restart replays as ``python -m taskq.cli <argv>``.
    """
    global _command_line
    if argv is None:
        args = list(sys.argv[1:])
        orig = list(getattr(sys, "orig_argv", ()))
        cut = len(orig) - len(args)
        if orig and cut > 0 and orig[cut:] == args:
            prefix = [sys.executable, *orig[1:cut]]
            if len(prefix) > 1 and prefix[-1] == sys.argv[0] and os.path.isfile(prefix[-1]):
                prefix[-1] = os.path.abspath(prefix[-1])  # a script run by a relative path
        else:
            prefix = [sys.executable, "-m", "taskq.cli"]
    else:
        args, prefix = list(argv), [sys.executable, "-m", "taskq.cli"]
    _command_line = CommandLine(prefix, _absolute_workdir(args), os.getcwd())


def command_line() -> CommandLine | None:
    """The invocation ``remember_command_line`` saw; None when taskq was not run through ``main``."""
    return _command_line


def _absolute_workdir(args: list[str]) -> list[str]:
    """A relative ``--workdir`` would be resolved twice by a re-run started inside it."""
    out = list(args)
    for i, token in enumerate(out):
        if token == "--workdir" and i + 1 < len(out):
            out[i + 1] = os.path.abspath(out[i + 1])
        elif token.startswith("--workdir="):
            out[i] = "--workdir=" + os.path.abspath(token.partition("=")[2])
    return out


def value_options(ctx: click.Context) -> dict[str, bool]:
    """Every option name of this command and its parents, and whether it takes a value."""
    out: dict[str, bool] = {}
    current: click.Context | None = ctx
    while current is not None:
        for param in current.command.params:
            if isinstance(param, click.Option):
                for name in (*param.opts, *param.secondary_opts):
                    out.setdefault(name, not param.is_flag and not param.count)
        current = current.parent
    return out


def without_options(args: Sequence[str], drop: Collection[str], takes_value: Mapping[str, bool]) -> list[str]:
    """``args`` less the options named in ``drop`` (and their values), read as click reads them.

    Short flags may be clustered (``-BD``), and a short option's value may be attached (``-Qa``)
    or the next word, so a plain word search would miss some and remove values by mistake.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if token == "--":
            out += args[i - 1 :]
            break
        if token.startswith("--"):
            name, eq, _ = token.partition("=")
            value = [args[i]] if takes_value.get(name) and not eq and i < len(args) else []
            i += len(value)
            if name not in drop:
                out += [token, *value]
            continue
        if not token.startswith("-") or len(token) < 2:
            out.append(token)
            continue
        kept, value = "-", []
        for j, char in enumerate(token[1:], start=1):
            option = f"-{char}"
            if takes_value.get(option):  # the rest of the word, or the next word, is its value
                if j == len(token) - 1 and i < len(args):
                    value = [args[i]]
                    i += 1
                if option not in drop:
                    kept += token[j:]
                else:
                    value = []
                break
            if option not in drop:
                kept += char
        if kept != "-":
            out += [kept, *value]
    return out


def _with_option(args: list[str], name: str, value: str) -> list[str]:
    cut = args.index("--") if "--" in args else len(args)
    return [*args[:cut], name, value.replace("%", "%%"), *args[cut:]]


def detach_and_exec(
    nodename: str,
    *,
    logfile: str | None,
    pidfile: str | None,
    uid: str | None,
    gid: str | None,
    umask: str | None,
    executable: str | None,
    what: str,
) -> NoReturn:
    """``-D``: check what would fail unseen, let go of the terminal, run this command without -D.

    The daemon is a fresh process (none of this one's imports or connections) whose command line
    has no ``-D``, so a SIGHUP restart re-executes it in place and keeps its pid, as in Celery.
    """
    line = command_line()
    if line is None:
        raise click.UsageError("-D/--detach: taskq was not started from its command line; nothing to re-run")
    takes_value = value_options(click.get_current_context())
    args = without_options(line.args, {"-D", "--detach"}, takes_value)
    if args == line.args:
        raise click.UsageError("-D/--detach: cannot find the option in the command line to remove it")
    args = without_options(args, {"--uid", "--gid"}, takes_value)  # dropped here, before forking
    apply_umask(umask)
    drop_privileges(uid, gid)
    try:
        log_path = node_format(logfile or DEFAULT_LOGFILE, nodename)
        pid_path = node_format(pidfile or DEFAULT_PIDFILE, nodename)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if not logfile:
        args = _with_option(args, "--logfile", os.path.abspath(log_path))
    if not pidfile:
        args = _with_option(args, "--pidfile", os.path.abspath(pid_path))
    check_pidfile(pid_path, what)  # once detached, nobody would see these errors
    try:
        with open(log_path, "a"):
            pass
    except OSError as exc:
        raise click.ClickException(f"cannot write log file {log_path}: {exc.strerror}") from None
    exe = executable or sys.executable
    argv = [exe, *line.prefix[1:], *args]
    detach()
    try:
        os.execv(exe, argv)
    except OSError as exc:
        with contextlib.suppress(OSError), open(log_path, "a") as fh:
            fh.write(f"taskq: cannot exec {' '.join(argv)}: {exc}\n")
    os._exit(1)


def reexec(line: CommandLine) -> NoReturn:
    """Replace this process with a new run of ``line`` (same pid): the SIGHUP restart."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(OSError):
        os.chdir(line.cwd)
    with contextlib.suppress(OSError, ValueError):  # no descriptor of this run may leak into the next
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    try:
        os.execv(line.prefix[0], line.argv)
    except OSError as exc:
        raise click.ClickException(f"cannot restart: exec {' '.join(line.argv)}: {exc}") from None
