"""Waiting for a child a test forked, without the risk of waiting forever.

A fork copies only the forking thread: a lock another thread (pytest-xdist's, a lease
renewer's) held at that instant stays held in the child for good. A test that then waits
with ``os.waitpid(pid, 0)`` would hang the whole run instead of failing; this one fails,
names the cause and kills the child.
"""

from __future__ import annotations

import os
import signal
import time


def wait_child(pid: int, timeout: float = 30.0) -> int:
    """The forked child's exit code, or an AssertionError once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the forked child {pid} was still running after {timeout} s")
        time.sleep(0.01)
