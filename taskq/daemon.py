"""Process plumbing shared by ``taskq worker`` and ``taskq beat``: pid files, detaching,
privileges, and Celery's ``%n``-style file names.

POSIX only where it forks; everything else is plain file handling. Re-running the command line
(``worker -D`` and the SIGHUP restart) is in ``taskq.relaunch``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import stat
import sys

import click

__all__ = [
    "DEFAULT_LOGFILE",
    "DEFAULT_PIDFILE",
    "PidfileLocked",
    "apply_umask",
    "check_pidfile",
    "create_pidfile",
    "detach",
    "drop_privileges",
    "node_format",
    "pidlock",
    "remove_pidfile",
    "stderr_is_devnull",
]

EX_CANTCREAT = 73  # what Celery exits with when the pid file is held (sysexits.h)
# Used when -D is given without them, as ``celery multi`` does: a daemon that logs to /dev/null
# and leaves no pid behind (what Celery 5's own ``worker -D`` does then) cannot be watched or stopped.
DEFAULT_LOGFILE = "%n%I.log"
DEFAULT_PIDFILE = "%n.pid"
_FORMAT_KEY = re.compile(r"%([%\w])")


class PidfileLocked(click.ClickException):
    """The pid file names a live process: another instance is running."""

    exit_code = EX_CANTCREAT


def node_format(template: str, nodename: str, index: int | None = None) -> str:
    """Expand Celery's file-name keys for node ``name@host``.

    ``%n`` name, ``%h`` host, ``%d`` domain, ``%p`` whole node name, ``%i`` pool process index
    (``0`` for the main process), ``%I`` ``-<index>`` (empty for the main process), ``%%`` a
    literal ``%``. Anything else is an error, as in Celery, because a typo would otherwise name a
    file nobody looks for.
    """
    name, sep, host = nodename.partition("@")
    if not sep:
        name, host = "", nodename
    keys = {
        "n": name or "celery",
        "h": host,
        "d": host.partition(".")[2],
        "p": nodename,
        "i": str(index) if index else "0",
        "I": f"-{index}" if index else "",
        "%": "%",
    }

    def resolve(match: re.Match[str]) -> str:
        try:
            return keys[match.group(1)]
        except KeyError:
            raise ValueError(
                f"unknown format %{match.group(1)} in {template!r} (write %% for a literal %)"
            ) from None

    return _FORMAT_KEY.sub(resolve, template)


# -- pid files ---------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, and not ours to replace
        return True
    return True


def _read_pid(path: str) -> int | None:
    """The pid the file names; None when there is no file, 0 when it holds no pid."""
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text)
    except ValueError:
        return 0


def check_pidfile(path: str, what: str) -> str:
    """Refuse (one line, exit 73) when ``path`` names another live process; its absolute path."""
    path = os.path.abspath(path)
    pid = _read_pid(path)
    if pid and pid != os.getpid() and _alive(pid):
        raise PidfileLocked(f"pidfile {path} names running process {pid}: is {what} already running?")
    return path


def create_pidfile(path: str, what: str = "it") -> str:
    """Write our pid to ``path``; refuse if it names a live process, replace it if stale.

    The file is created complete (written aside, then hard-linked into place) so two starts racing
    for it never both win, and a reader never sees it empty.
    """
    for _ in range(5):
        path = check_pidfile(path, what)
        pid = _read_pid(path)
        if pid == os.getpid():  # re-executed by a SIGHUP restart: the file already names us
            return path
        if pid is not None:
            click.echo(f"Stale pidfile {path} (pid {pid or '?'} is not running): replacing it.", err=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        try:
            if _link_new(path, f"{os.getpid()}\n"):
                return path
        except OSError as exc:
            raise click.ClickException(f"cannot write pidfile {path}: {exc.strerror or exc}") from None
    raise PidfileLocked(f"pidfile {path} keeps changing: is {what} being started twice?")


def _link_new(path: str, content: str) -> bool:
    """Create ``path`` holding ``content`` unless it exists; False when someone else made it first."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write(content)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError:  # no hard links on this file system: exclusive create instead
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(content)
    finally:
        os.unlink(tmp)
    return True


def remove_pidfile(path: str) -> None:
    """Remove the pid file if it still names us (a successor may have replaced it)."""
    try:
        with open(path) as fh:
            if fh.read().strip() == str(os.getpid()):
                os.unlink(path)
    except OSError:
        pass


# -- privileges and detaching ------------------------------------------------------------------
def apply_umask(umask: str | None) -> None:
    """``--umask``, always octal (``022``, ``22``, ``0o22``): Celery reads ``22`` as decimal 22."""
    if umask:
        try:
            os.umask(int(umask.removeprefix("0o"), 8))
        except ValueError:
            raise click.BadParameter(f"{umask!r} is not an octal umask", param_hint="--umask") from None


def drop_privileges(uid: str | None, gid: str | None) -> None:
    """``--gid`` then ``--uid`` (names or numbers), as Celery's ``maybe_drop_privileges``."""
    try:
        if gid:
            import grp

            os.setgid(int(gid) if gid.isdigit() else grp.getgrnam(gid).gr_gid)
        if uid:
            import pwd

            os.setuid(int(uid) if uid.isdigit() else pwd.getpwnam(uid).pw_uid)
    except KeyError as exc:
        raise click.ClickException(f"no such user or group: {exc.args[0]}") from None
    except PermissionError as exc:
        raise click.ClickException(f"cannot change user/group: {exc.strerror}") from None


def detach(workdir: str | None = None) -> None:
    """Become a daemon: fork twice, new session, standard streams to /dev/null (POSIX)."""
    if not hasattr(os, "fork"):
        raise click.UsageError("--detach needs a POSIX system; run under a service manager instead")
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


def stderr_is_devnull() -> bool:
    """True when nobody reads what we print (detached, or a supervisor discarding it)."""
    try:
        err, null = os.fstat(2), os.stat(os.devnull)
    except OSError:
        return False
    return stat.S_ISCHR(err.st_mode) and err.st_rdev == null.st_rdev


def pidlock(path: str, what: str) -> str:
    """``create_pidfile``, removed when the interpreter exits (not on exec: a restart keeps it)."""
    path = create_pidfile(path, what)
    atexit.register(remove_pidfile, path)
    return path
