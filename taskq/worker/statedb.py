"""``-S/--statedb``: revoked task ids outlive a worker restart.

Without it a revoke reaches only the workers running at that moment, and a task revoked just
before a restart (a deploy) runs anyway when the new worker receives it. With it the worker
loads the file before consuming, writes it after each revoke command and at shutdown.

The file is JSON, one object::

    {"taskq_statedb": 1, "revoked": {"<task id>": <wall-clock time of the revoke>, ...}}

with the times in seconds since the epoch, oldest first. Loading keeps the bounds of the live
set (50 000 ids, 3 hours each): an entry older than the expiry is dropped, and so are the oldest
beyond the count. Celery's own file (a ``shelve`` of pickles) is neither read nor written, so a
Celery worker and a taskq worker must not share one path. Every write goes to a temporary file
renamed over the old one, so a crash mid-write leaves the previous state, never half of one.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

from taskq.files import write_atomically
from taskq.worker.control import Revoked

__all__ = ["FORMAT_VERSION", "StateDB"]

logger = logging.getLogger("taskq.worker")
FORMAT_VERSION = 1
_KEY = "taskq_statedb"


class StateDB:
    """The state file at ``path``, and the ``Revoked`` set it keeps."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def __repr__(self) -> str:
        return f"<StateDB {self.path}>"

    def load(self, revoked: Revoked) -> int:
        """Merge the saved ids into ``revoked``; how many the file held (0 if none or unusable).

        A file that cannot be read or understood is a warning, not an error: losing remembered
        revokes is better than a worker that will not start until someone edits a file.
        """
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            self._unusable(exc)
            return 0
        try:
            entries = _entries(data)
        except ValueError as exc:
            self._unusable(exc)
            return 0
        revoked.restore(entries)
        return len(entries)

    def save(self, revoked: Revoked) -> None:
        """Write the live ids atomically; raises OSError when the file cannot be written."""
        data = {_KEY: FORMAT_VERSION, "revoked": revoked.snapshot()}
        write_atomically(self.path, json.dumps(data, separators=(",", ":")).encode("utf-8"))

    def save_quietly(self, revoked: Revoked) -> bool:
        """``save`` for places that must go on (a control command, shutdown): failure is logged."""
        try:
            self.save(revoked)
        except OSError as exc:
            logger.warning(
                "--statedb: cannot write %s (%s); revoked ids will not survive a restart",
                self.path,
                exc.strerror or exc,
            )
            return False
        return True

    def attach(self, revoked: Revoked) -> None:
        """Save after every revoke command from now on."""

        def on_change() -> None:
            self.save_quietly(revoked)

        revoked.on_change = on_change

    def _unusable(self, exc: BaseException) -> None:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        logger.warning(
            "--statedb: %s is unreadable (%s); starting with no remembered revokes", self.path, reason
        )


def _entries(data: Any) -> dict[str, float]:
    """The ``revoked`` mapping of a parsed file; ValueError when it is not a file of ours."""
    if not isinstance(data, dict) or _KEY not in data:
        raise ValueError("not a taskq state file")
    if data[_KEY] != FORMAT_VERSION:
        raise ValueError(f"format version {data[_KEY]!r}, this taskq reads {FORMAT_VERSION}")
    saved = data.get("revoked")
    if not isinstance(saved, dict):
        raise ValueError("'revoked' is not an object")
    return {
        str(tid): float(at)
        for tid, at in saved.items()
        if isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at)
    }
