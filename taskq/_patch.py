"""Monkey-patch for ``-P gevent``/``-P eventlet`` before anything opens a socket (Celery does the same).

Imported first by ``taskq/__init__.py``. It acts only for the ``taskq`` command asking for a
green pool, so importing taskq in any other program never patches anything.
"""

from __future__ import annotations

import os
import sys

GREEN_POOLS = ("gevent", "eventlet")


def requested_green_pool(argv: list[str]) -> str | None:
    """The green pool named on a ``taskq ... worker`` command line, if any."""
    program = os.path.basename(argv[0]) if argv else ""
    if program not in ("taskq", "cli.py", "-m", "__main__.py"):
        return None
    for i, arg in enumerate(argv[1:], 1):
        value = None
        if arg in ("-P", "--pool") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--pool="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-P") and len(arg) > 2:
            value = arg[2:]
        if value in GREEN_POOLS:
            return value
    return None


def maybe_patch(argv: list[str] | None = None) -> str | None:
    pool = requested_green_pool(sys.argv if argv is None else argv)
    if pool == "gevent":
        try:
            from gevent import monkey
        except ImportError:
            return None  # the worker explains the missing package
        monkey.patch_all()
    elif pool == "eventlet":
        try:
            import eventlet
        except ImportError:
            return None
        eventlet.monkey_patch()
    return pool
