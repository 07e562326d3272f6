"""kombu's filesystem transport (``filesystem://``), without the race that loses messages.

kombu's channel creates a message file under its final name and only then locks and writes it,
and its reader takes any file it lists without waiting for the writer. A consumer that polls in
between moves the still-empty file away, deletes it and raises ``JSONDecodeError`` out of
``drain_events`` (kombu issue #1551): the message is gone, and the worker's loop with it. Two
threads or processes of one machine, a client and a worker, meet that window now and then, more
often on a loaded machine. This channel:

- publishes whole files: a message is written under a hidden name no reader lists, then renamed to
  its final name, so every message file a reader sees is complete;
- reads what other publishers (Celery, kombu used directly) still write in place without taking
  it too early: a file is claimed by renaming it to a hidden name in the same folder (atomic, and
  exactly one consumer wins), read under a shared lock (kombu's writer writes under an exclusive
  one), and given back under its own name while it is still empty, to be read at a later poll;
- sets aside as ``.<name>.bad`` (logged) a file that is not a message at all, where kombu deletes
  it and raises.

File names, folders and options are kombu's, so Celery and taskq share one folder.
``taskq.broker`` names this transport for the ``filesystem`` scheme.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from queue import Empty
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)

#: An empty message file older than this (seconds) is no publish in progress: its writer died.
STALE_EMPTY = 60.0


def _write_whole(folder: str, name: str, data: bytes) -> None:
    """``folder/name`` appears with all of ``data`` or not at all (no fsync, as kombu)."""
    final = os.path.join(folder, name)
    temp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temp, "wb") as fh:
            fh.write(data)
        os.rename(temp, final)
    except OSError as exc:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Channel(filesystem.Channel):
    # kombu names the argument ``message`` in its virtual channel and ``payload`` in this one.
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Put ``payload`` onto ``queue``: kombu's file name, written whole before it is listed."""
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        _write_whole(self.data_folder_out, name, str_to_bytes(dumps(payload)))

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        """The oldest complete message of ``queue``; ``Empty`` when there is none yet."""
        folder = self.data_folder_in
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(folder)):
            if name.partition(".")[2] != wanted:  # kombu's rule: <time>_<uuid>.<queue>.msg
                continue
            path = os.path.join(folder, name)
            claimed = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.taken")
            try:
                os.rename(path, claimed)
            except OSError:  # another consumer took it first
                continue
            try:
                with open(claimed, "rb") as fh:
                    filesystem.lock(fh, filesystem.LOCK_SH)  # waits for a writer holding the file
                    try:
                        data = fh.read()
                    finally:
                        filesystem.unlock(fh)
                age = time.time() - os.stat(claimed).st_mtime
            except OSError as exc:
                raise ChannelError(f"Cannot read file {claimed!r} from queue.") from exc
            if not data and age < STALE_EMPTY:
                # Created, not yet written by a publisher that writes in place: its writer still
                # holds the file open and writes to it wherever it is. Give it back for later.
                try:
                    os.rename(claimed, path)
                except OSError as exc:
                    raise ChannelError(f"Cannot return file {claimed!r} to the queue.") from exc
                continue
            try:
                payload = loads(bytes_to_str(data))
            except ValueError:
                payload = None
            if not isinstance(payload, dict):
                bad = os.path.join(folder, f".{name}.bad")
                try:
                    os.replace(claimed, bad)
                except OSError:
                    bad = claimed
                logger.error("Set aside %s: not a message (%d bytes)", bad, len(data))
                continue
            self._processed(claimed, name)
            return payload
        raise Empty()

    def _processed(self, claimed: str, name: str) -> None:
        """A message read: kept in ``processed_folder`` with ``store_processed``, else deleted."""
        try:
            if self.store_processed:
                shutil.move(claimed, os.path.join(self.processed_folder, name))
            else:
                os.unlink(claimed)
        except OSError as exc:  # the message is read: losing its copy must not lose it
            logger.warning("Cannot move or delete the processed message file %s: %s", claimed, exc)


class Transport(filesystem.Transport):
    Channel = Channel
