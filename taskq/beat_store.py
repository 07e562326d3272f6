"""The schedule file: when each periodic entry last ran, kept across beat restarts.

Celery keeps this in a ``shelve`` (pickled classes in a dbm file whose suffixes depend on the
platform). taskq writes a small JSON document instead, readable by people and by any taskq
version, and writes it so that a crash at any moment leaves either the old or the new file:
the text goes to a temporary file in the same directory, is fsynced, and replaces the old file
with ``os.replace`` (atomic on POSIX and Windows), then the directory is fsynced.

A file that cannot be read (truncated by a full disk, a Celery shelve at the same path, edited
by hand) is not fatal: it is logged, kept beside as ``<file>.corrupt`` and beat starts afresh,
as Celery does with a corrupt shelve.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from taskq.files import write_atomically

__all__ = ["FORMAT", "VERSION", "EntryState", "ScheduleFile", "StoredSchedule"]

logger = logging.getLogger("taskq.beat")

FORMAT = "taskq-beat-schedule"
VERSION = 1


@dataclass
class EntryState:
    """What beat remembers of one entry: the last time it was sent, and how many times."""

    last_run_at: datetime
    total_run_count: int = 0
    task: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "last_run_at": self.last_run_at.isoformat(),
            "total_run_count": self.total_run_count,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EntryState:
        """Parse one stored entry; ``ValueError`` when it is not what taskq wrote."""
        when = datetime.fromisoformat(str(data["last_run_at"]))
        if when.tzinfo is None:
            raise ValueError(f"last_run_at {data['last_run_at']!r} has no UTC offset")
        count = data.get("total_run_count", 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"total_run_count {count!r} is not a count")
        task = data.get("task")
        return cls(when, count, str(task) if task is not None else None)


@dataclass
class StoredSchedule:
    """The whole file: entries by name, and the time zone settings they were written under."""

    entries: dict[str, EntryState] = field(default_factory=dict)
    tz: str | None = None
    utc_enabled: bool | None = None


class ScheduleFile:
    """Load and atomically save a ``StoredSchedule`` at ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))

    def check_writable(self) -> None:
        """Fail at start-up, with the path in the message, rather than at the first sync."""
        directory = os.path.dirname(self.path)
        if os.path.isdir(self.path):
            raise OSError(f"schedule file {self.path!r} is a directory")
        if not os.path.isdir(directory):
            raise OSError(f"the directory of schedule file {self.path!r} does not exist")
        if not os.access(directory, os.W_OK):
            raise OSError(f"cannot write schedule file {self.path!r}: directory not writable")

    def load(self) -> StoredSchedule:
        """The stored schedule; empty when there is no file or it is unreadable (kept as .corrupt)."""
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return StoredSchedule()
        try:
            return self._parse(raw)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            self._set_aside(exc)
            return StoredSchedule()

    @staticmethod
    def _parse(raw: bytes) -> StoredSchedule:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a taskq beat schedule file")
        if data.get("version") != VERSION:
            raise ValueError(f"schedule file version {data.get('version')!r}, this taskq reads {VERSION}")
        entries = data.get("entries")
        if not isinstance(entries, dict):
            raise ValueError("'entries' is not an object")
        utc = data.get("utc_enabled")
        return StoredSchedule(
            entries={str(name): EntryState.from_json(value) for name, value in entries.items()},
            tz=data.get("tz"),
            utc_enabled=bool(utc) if utc is not None else None,
        )

    def _set_aside(self, exc: Exception) -> None:
        corrupt = self.path + ".corrupt"
        logger.error(
            "beat: cannot read schedule file %s (%s); starting with a fresh schedule, the old file is kept as %s",
            self.path,
            exc,
            corrupt,
        )
        try:
            os.replace(self.path, corrupt)
        except OSError as move_error:
            logger.error("beat: could not keep %s as %s: %s", self.path, corrupt, move_error)

    def save(self, stored: StoredSchedule) -> None:
        """Write the file so that a crash leaves the old or the new version, never a mix."""
        document = {
            "format": FORMAT,
            "version": VERSION,
            "tz": stored.tz,
            "utc_enabled": stored.utc_enabled,
            "entries": {name: state.to_json() for name, state in sorted(stored.entries.items())},
        }
        data = json.dumps(document, indent=1, sort_keys=False).encode("utf-8") + b"\n"
        write_atomically(self.path, data)
