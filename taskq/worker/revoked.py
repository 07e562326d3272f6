"""Revoked task ids (and stamps) a worker remembers, so it discards their messages on arrival.

The ``revoke`` command fills it, ``--statedb`` saves and restores it, and a starting Celery
worker's mingle (``hello``) merges it with its own.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

REVOKES_MAX = 50_000  # Celery's bound on remembered revoked ids
REVOKE_EXPIRES = 3 * 3600.0  # and how long each is remembered (seconds)


class Revoked:
    """Revoked task ids, bounded in number and age, oldest dropped first."""

    def __init__(self, maxlen: int = REVOKES_MAX, expires: float = REVOKE_EXPIRES) -> None:
        self.maxlen = maxlen
        self.expires = expires
        self._ids: OrderedDict[str, float] = OrderedDict()
        #: called once per revoke command, so --statedb saves what a restart must not forget
        self.on_change: Callable[[], None] | None = None
        #: stamp name -> revoked values (revoke_by_stamped_headers); in memory only, as Celery's
        self.stamps: dict[str, list[Any]] = {}

    def add(self, task_id: str) -> None:
        self._ids[task_id] = time.monotonic()
        self._ids.move_to_end(task_id)
        while len(self._ids) > self.maxlen:
            self._ids.popitem(last=False)

    def __contains__(self, task_id: object) -> bool:
        added = self._ids.get(task_id)  # type: ignore[call-overload]
        if added is None:
            return False
        if time.monotonic() - added > self.expires:
            del self._ids[task_id]  # type: ignore[arg-type]
            return False
        return True

    def __len__(self) -> int:
        return len(self._ids)

    def add_stamps(self, headers: Mapping[str, Any]) -> None:
        for name, values in headers.items():
            self.stamps.setdefault(name, []).extend(values if isinstance(values, (list, tuple)) else [values])

    def stamped(self, headers: Mapping[str, Any]) -> bool:
        """Whether a message with these headers carries a revoked stamp."""
        return bool(self.stamps) and bool(self.stamp_hits(self.stamps, headers))

    @staticmethod
    def stamp_hits(revoked: Mapping[str, Any], headers: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """The (stamp, value) pairs of a message (``stamped_headers`` + ``stamps``) found in ``revoked``."""
        stamps = headers.get("stamps") or {}
        hits = []
        for name in headers.get("stamped_headers") or ():
            if name not in revoked or stamps.get(name) is None:
                continue
            wanted = revoked[name] if isinstance(revoked[name], (list, tuple)) else [revoked[name]]
            values = stamps[name] if isinstance(stamps[name], (list, tuple)) else [stamps[name]]
            hits += [(name, v) for v in values if v in wanted]
        return hits

    def __iter__(self) -> Any:
        return iter(list(self._ids))

    def changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def snapshot(self) -> dict[str, float]:
        """Live ids with the wall-clock time of their revoke, oldest first (what --statedb saves).

        The stamps are monotonic, immune to clock changes but meaningless to another process, so
        they leave as wall-clock times and come back through ``restore`` with their age intact.
        """
        mono, wall = time.monotonic(), time.time()
        return {
            tid: wall - (mono - added) for tid, added in self._ids.items() if mono - added <= self.expires
        }

    def restore(self, saved: Mapping[str, float]) -> None:
        """Merge ids from ``snapshot`` (maybe of an earlier run): expired ones dropped, bounds kept."""
        mono, wall = time.monotonic(), time.time()
        merged = dict(self._ids)
        for tid, revoked_at in saved.items():
            age = max(wall - revoked_at, 0.0)  # a future time (clock set back) counts as now
            if age <= self.expires and mono - age > merged.get(tid, float("-inf")):
                merged[tid] = mono - age
        self._ids = OrderedDict(sorted(merged.items(), key=lambda item: item[1]))
        while len(self._ids) > self.maxlen:
            self._ids.popitem(last=False)
