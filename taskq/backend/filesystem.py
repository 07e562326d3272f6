"""Filesystem result backend: Celery's ``file:///path``, for single-machine setups.

One file per result, named by its key and holding exactly the bytes Celery's backend writes
(``<path>/celery-task-meta-<id>``), so a Celery worker and a taskq client on one machine (or on
a shared disk) read each other's results. Each file is replaced whole (``files.write_atomically``):
Celery writes in place, and a reader can then see half a result.

As in Celery, results are not dropped on read when ``result_expires`` has passed; the
``celery.backend_cleanup`` task (``cleanup()``) deletes the files older than that. Chord
bookkeeping, which needs expiry and atomic steps, lives in ``<path>/.taskq-chords/``: each file
starts with its deadline, and an exclusive ``flock`` on one lock file makes a step atomic
across threads and processes.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from taskq.backend.base import GROUP_KEY_PREFIX, TASK_KEY_PREFIX, ResultBackend
from taskq.exceptions import BackendError, BackendGetMetaError, BackendStoreError, ImproperlyConfigured
from taskq.files import write_atomically

if TYPE_CHECKING:
    from taskq.app import App

POLL_CAP = 0.05  # the longest pause between two reads while waiting for a result
CHORD_DIR = ".taskq-chords"
LOCK_FILE = ".taskq-chords.lock"
NO_DEADLINE = b"-"


def path_from_url(url: str | None) -> str:
    """``file:///abs/path``, ``file://localhost/abs/path`` or ``file://rel/path``, as Celery reads them."""
    if not url or not url.startswith("file://"):
        raise ImproperlyConfigured(
            f"the filesystem result backend needs a file:// URL (file:///var/lib/results), got {url!r}"
        )
    path = url[len("file://localhost") :] if url.startswith("file://localhost/") else url[len("file://") :]
    if not path:
        raise ImproperlyConfigured(f"no directory in result backend URL {url!r}")
    return path


def check_key(key: str) -> str:
    """A key is one file name: refuse what would leave the directory (ids come from messages)."""
    if not key or "/" in key or "\x00" in key or os.sep in key or key in (".", ".."):
        raise BackendError(f"result key {key!r} cannot be a file name")
    return key


def _is_bookkeeping(key: str) -> bool:
    """Chord keys (``celery-taskset-meta-<gid>.<suffix>``) expire; results and groups do not."""
    return key.startswith(GROUP_KEY_PREFIX) and "." in key[len(GROUP_KEY_PREFIX) :]


class FilesystemBackend(ResultBackend):
    """Results as files in one directory; chords counted under an exclusive file lock."""

    poll_cap = POLL_CAP

    supports_native_chord = True
    supports_autoexpire = False  # beat schedules celery.backend_cleanup daily, as for Celery's

    def __init__(self, app: App, url: str | None = None) -> None:
        super().__init__(app, url)
        self.path = os.path.abspath(path_from_url(url))
        self.chord_path = os.path.join(self.path, CHORD_DIR)
        self._local = threading.local()
        probe = f".fs-backend-{uuid.uuid4()}"
        try:  # as Celery: a directory that does not work is a configuration error, said now
            if not os.path.isdir(self.path):
                raise NotADirectoryError(f"no directory {self.path!r}")
            os.makedirs(self.chord_path, exist_ok=True)
            write_atomically(os.path.join(self.path, probe), b"test value")
            os.unlink(os.path.join(self.path, probe))
        except OSError as exc:
            raise ImproperlyConfigured(
                f"the filesystem result backend cannot use {self.path!r} (it must exist and be "
                f"writable): {exc}"
            ) from exc

    def _file(self, key: str) -> str:
        check_key(key)
        return os.path.join(self.chord_path if _is_bookkeeping(key) else self.path, key)

    # -- primitives ---------------------------------------------------------------------------
    def _get(self, key: str) -> bytes | str | None:
        try:
            with open(self._file(key), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendGetMetaError(f"cannot read result {key!r} in {self.path}: {exc}") from exc
        if not _is_bookkeeping(key):
            return data
        deadline, _, value = data.partition(b"\n")
        if deadline == NO_DEADLINE:
            return value
        try:
            expired = float(deadline) <= time.time()
        except ValueError as exc:
            raise BackendGetMetaError(f"chord record {key!r} in {self.chord_path} is malformed") from exc
        return None if expired else value

    def _set(self, key: str, value: bytes | str, ttl: float | None) -> None:
        data = value.encode() if isinstance(value, str) else value
        if _is_bookkeeping(key):
            data = (repr(time.time() + ttl).encode() if ttl else NO_DEADLINE) + b"\n" + data
        try:
            write_atomically(self._file(key), data)
        except OSError as exc:
            raise BackendStoreError(f"cannot store result {key!r} in {self.path}: {exc}") from exc

    def _delete(self, key: str) -> None:
        try:
            os.unlink(self._file(key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BackendStoreError(f"cannot delete result {key!r} in {self.path}: {exc}") from exc

    # -- chord primitives: one exclusive flock per step, re-entrant within a thread -------------
    @contextmanager
    def _atomic(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth = depth
            return
        fd = os.open(os.path.join(self.path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a new descriptor: threads of this process wait too
            self._local.depth = 1
            try:
                yield
            finally:
                self._local.depth = 0
        finally:
            os.close(fd)  # releases the lock

    def _incr(self, key: str, ttl: float | None) -> int:
        with self._atomic():
            value = int(self._get(key) or 0) + 1
            self._set(key, str(value), ttl)
            return value

    def _add(self, key: str, value: bytes | str, ttl: float | None) -> bool:
        with self._atomic():
            if self._get(key) is not None:
                return False
            self._set(key, value, ttl)
            return True

    def _expire(self, key: str, ttl: float | None) -> None:
        if not _is_bookkeeping(key):
            return  # results and groups expire by cleanup(), as in Celery
        with self._atomic():
            value = self._get(key)
            if value is not None:
                self._set(key, value, ttl)

    def _bookkeeping_keys(self, prefix: str) -> list[str]:
        return [name for name in os.listdir(self.chord_path) if name.startswith(prefix)]

    def _expire_prefix(self, prefix: str, ttl: float | None) -> None:
        with self._atomic():
            for key in self._bookkeeping_keys(prefix):
                self._expire(key, ttl)

    def _delete_prefix(self, prefix: str) -> None:
        with self._atomic():
            for key in self._bookkeeping_keys(prefix):
                self._delete(key)

    def chord_keys(self, group_id: str) -> list[str]:
        """The chord bookkeeping keys alive for ``group_id`` (the claim ``.c`` included)."""
        prefix = self.group_key_for(group_id) + "."
        return sorted(k for k in self._bookkeeping_keys(prefix) if self._get(k) is not None)

    def cleanup(self) -> None:
        """``celery.backend_cleanup``: delete results older than ``result_expires`` (by mtime, as
        Celery) and chord bookkeeping whose deadline passed."""
        now = time.time()
        if self.expires:
            for name in os.listdir(self.path):
                if name.startswith((TASK_KEY_PREFIX, GROUP_KEY_PREFIX)):
                    path = os.path.join(self.path, name)
                    try:
                        if os.stat(path).st_mtime < now - self.expires:
                            os.unlink(path)
                    except FileNotFoundError:
                        pass
        with self._atomic():
            for key in self._bookkeeping_keys(""):
                if self._get(key) is None:
                    self._delete(key)
