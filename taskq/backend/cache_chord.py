"""Chord counting on memcached, which has atomic single-key operations but no transactions.

Under ``celery-taskset-meta-<gid>``: ``.s`` the size, ``.t`` the size adjustment
(``add_to_chord``), ``.m`` the parts counted so far (a JSON list of ``<task id>:<index>``),
``.p.<task id>:<index>`` each part, ``.r`` a refresh mark, ``.c`` the claim (then "done").

A finishing header task first ``add``s its part (the first run's value wins, so a redelivered
copy cannot change it), then joins ``.m`` by compare-and-swap: the list is both the dedupe set
and the counter, so a copy reported twice counts once, and a task that died between the two
steps is counted when it is redelivered. The part that completes the count takes the claim
with ``add``; from there ``chord.complete`` sends the body once, as on every other store.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import TYPE_CHECKING, Any

from taskq.backend import chord
from taskq.exceptions import BackendGetMetaError, ChordError

if TYPE_CHECKING:
    from taskq.backend.cache import CacheBackend

CAS_ATTEMPTS = 1000  # a part gives up (and says so) rather than spin forever


def set_chord_size(backend: CacheBackend, group_id: str, size: int) -> None:
    """Before the header is sent: its size; a chord sent again starts a new run (no claim)."""
    key = backend.group_key_for(group_id)
    backend._delete(key + ".c")
    backend._set(key + ".s", str(int(size)), chord.chord_expires(backend) or None)


def _members(backend: CacheBackend, key: str) -> list[str]:
    raw = backend._get(key + ".m")
    return [] if raw is None else _members_from(backend, key, raw)


def _join(backend: CacheBackend, key: str, member: str, ttl: float | None) -> int:
    """Add ``member`` to ``.m`` (compare-and-swap); the number of parts counted."""
    from taskq.backend.cache import expire_arg

    for _ in range(CAS_ATTEMPTS):
        raw, token = backend.call("read", "gets", key + ".m")
        if raw is None:
            if backend.call("store", "add", key + ".m", json.dumps([member]), expire_arg(ttl), store=True):
                return 1
            continue
        members = _members_from(backend, key, raw)
        if member in members:
            return len(members)
        members.append(member)
        if backend.call("store", "cas", key + ".m", json.dumps(members), token, expire_arg(ttl), store=True):
            return len(members)
    raise ChordError(f"chord {key}: gave up counting a part after {CAS_ATTEMPTS} conflicting writes")


def _members_from(backend: CacheBackend, key: str, raw: bytes | str) -> list[str]:
    try:
        members = json.loads(raw)
    except ValueError:
        members = None
    if not isinstance(members, list):
        raise BackendGetMetaError(f"chord counter {key}.m in {backend.masked_url} is malformed")
    return [str(m) for m in members]


def part_return(backend: CacheBackend, request: Any, state: str, result: Any) -> None:
    """Record one header part; the caller that completes the count sends the body."""
    from taskq.backend.cache import expire_arg

    task_id, gid, index = request.id, request.group, request.group_index
    if not task_id or not gid:
        return
    key = backend.group_key_for(gid)
    ttl, group_ttl = chord.chord_expires(backend) or None, chord.chord_result_expires(backend)
    claim_ttl, _ = chord.claim_ttls(backend.app)
    if chord.text(backend._get(key + ".c")) == chord.DONE:
        return  # finished already: a late copy must not start the chord again
    member = f"{task_id}:{'+inf' if index is None else int(index)}"
    part_ttl = expire_arg(ttl * 1.1 if ttl else None)
    part = chord.encode_part(backend, task_id, state, result, index)
    backend.call("store", "add", f"{key}.p.{member}", part, part_ttl, store=True)
    count = _join(backend, key, member, ttl)
    if ttl:
        if backend.call("store", "add", key + ".r", b"1", expire_arg(ttl / 10), store=True):
            for name in _members(backend, key):  # parts live as long as the chord: O(n) per ttl/10
                backend.call("store", "touch", f"{key}.p.{name}", part_ttl, store=True)
        for suffix in (".s", ".t"):
            backend.call("store", "touch", key + suffix, expire_arg(ttl), store=True)
        if group_ttl:
            backend.call("store", "touch", key, expire_arg(group_ttl), store=True)
    size = chord.text(backend._get(key + ".s"))
    total = None if size is None else int(size) + int(chord.text(backend._get(key + ".t")) or 0)
    token = uuid.uuid4().hex
    if count != total or not backend.call("store", "add", key + ".c", token, claim_ttl, store=True):
        return
    chord.complete(
        backend, request, token,
        lambda: _read_parts(backend, key, gid),
        lambda token, seconds: _extend_claim(backend, key, token, seconds),
        lambda token, done_ttl: _cleanup(backend, key, token, done_ttl),
        lambda: backend._delete(key + ".s"),
    )  # fmt: skip


def _read_parts(backend: CacheBackend, key: str, gid: str) -> list[Any]:
    names = [f"{key}.p.{member}" for member in _members(backend, key)]
    found = backend.call("read", "get_many", names) if names else {}
    parts = []
    for name in names:
        raw = found.get(name)
        if raw is None:
            raise ChordError(f"part {name} of chord {gid} is missing (expired or evicted?)")
        parts.append(backend.decode(raw))
    parts.sort(key=lambda part: math.inf if part[4] is None else part[4])
    return parts


def _extend_claim(backend: CacheBackend, key: str, token: str, seconds: int) -> bool:
    current, cas = backend.call("read", "gets", key + ".c")
    if current is None:
        if backend._get(key + ".s") is None:
            return False
        return bool(backend.call("store", "add", key + ".c", token, seconds, store=True))
    if chord.text(current) != token:
        return False
    return bool(backend.call("store", "cas", key + ".c", token, cas, seconds, store=True))


def _cleanup(backend: CacheBackend, key: str, token: str, done_ttl: int) -> bool:
    """Mark the chord done first (late copies stop there), then drop its data."""
    current, cas = backend.call("read", "gets", key + ".c")
    if chord.text(current) != token:
        return False
    if not backend.call("store", "cas", key + ".c", chord.DONE, cas, done_ttl, store=True):
        return False
    names = [f"{key}.p.{member}" for member in _members(backend, key)]
    backend.call("delete", "delete_many", [*names, *(key + s for s in (".m", ".s", ".t", ".r"))], store=True)
    return True


def live_keys(backend: CacheBackend, group_id: str) -> list[str]:
    """The bookkeeping keys of a chord still in memcached (the claim ``.c`` excepted)."""
    key = backend.group_key_for(group_id)
    names = [key + s for s in (".m", ".r", ".s", ".t")]
    names += [f"{key}.p.{member}" for member in _members(backend, key)]
    found = backend.call("read", "get_many", names)
    return sorted(name for name in names if found.get(name) is not None)
