"""Chord counting on Redis, on Celery 5.7's keys and with its scripts' effects.

So that Celery 5.7 workers and taskq workers count one chord together, every command a
script runs, and every key, score, member encoding and TTL, are what Celery 5.7 produces:

- part (each finished header task), KEYS ``[.j, .t, .s, .d, <group key>, .c]``, ARGV
  ``[task_id, [1, task_id, state, result], ordered, group_index | "+inf", chord_expires,
  group_expires, claim_ttl, token]``: nothing if ``.c`` is "done"; unless ``<id>:<index>`` is
  in ``.d``: ``ZADD .j <index> <part>`` (``RPUSH`` when ``result_chord_ordered`` is off) and
  ``SADD .d``; ``EXPIRE`` ``.j .t .s .d`` (and the group key); when the count reaches
  ``.s + .t``, ``SET .c <token> NX EX <claim_ttl>``. Returns ``{count, .t, .s, claimed}``.
- extend (the claimer, before publishing the body), KEYS ``[.c, .s]``: keep or retake the claim.
- cleanup (after publishing), KEYS ``[.c, .j, .t, .s, .d]``: if the claim is ours, ``DEL`` the
  chord data and ``SET .c done EX 300``.

Celery 5.3-5.6 workers only ``ZADD``/``ZCOUNT`` (no ``.d``/``.c``): they count with us as long as
each task reports once; only 5.7 and taskq workers guard against double counting.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from taskq.backend import chord

if TYPE_CHECKING:
    from taskq.backend.redis import RedisBackend

PART_LUA = """
local j, t, s, d, g, c = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local task_id, part, ordered, index = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4]
local ttl, group_ttl, claim_ttl, token = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
if redis.call('GET', c) == 'done' then
    return {-1, 0, 0, 0}
end
local seen = task_id .. ':' .. index
if redis.call('SISMEMBER', d, seen) == 0 then
    if ordered then
        redis.call('ZADD', j, index, part)
    else
        redis.call('RPUSH', j, part)
    end
    redis.call('SADD', d, seen)
end
local count
if ordered then
    count = redis.call('ZCOUNT', j, '-inf', '+inf')
else
    count = redis.call('LLEN', j)
end
if ttl > 0 then
    redis.call('EXPIRE', j, ttl)
    redis.call('EXPIRE', t, ttl)
    redis.call('EXPIRE', s, ttl)
    redis.call('EXPIRE', d, ttl)
    if group_ttl > 0 then
        redis.call('EXPIRE', g, group_ttl)
    end
end
local diff = redis.call('GET', t)
local size = redis.call('GET', s)
local claimed = 0
if size and count == tonumber(size) + tonumber(diff or 0) then
    if redis.call('SET', c, token, 'NX', 'EX', claim_ttl) then
        claimed = 1
    end
end
return {count, diff, size, claimed}
"""

EXTEND_LUA = """
local c, s = KEYS[1], KEYS[2]
local token, ttl = ARGV[1], tonumber(ARGV[2])
local current = redis.call('GET', c)
if current == token then
    return redis.call('EXPIRE', c, ttl)
end
if not current and redis.call('EXISTS', s) == 1 then
    if redis.call('SET', c, token, 'EX', ttl, 'NX') then
        return 1
    end
end
return 0
"""

CLEANUP_LUA = """
local c, j, t, s, d = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local token, done_ttl = ARGV[1], tonumber(ARGV[2])
if redis.call('GET', c) ~= token then
    return 0
end
redis.call('DEL', j, t, s, d)
if done_ttl and done_ttl > 0 then
    redis.call('SET', c, 'done', 'EX', done_ttl)
end
return 1
"""


@functools.cache
def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


def run_script(backend: RedisBackend, what: str, source: str, keys: list[str], args: list[Any]) -> Any:
    """``EVALSHA``; after ``NOSCRIPT`` (a restarted server) ``SCRIPT LOAD`` it and try again."""

    def call() -> Any:
        client = backend.client
        try:
            return client.evalsha(_sha(source), len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(source)
            return client.evalsha(_sha(source), len(keys), *keys, *args)

    return backend._call(what, call, store=True)


def ordered(backend: RedisBackend) -> bool:
    options = backend.app.conf.get("result_backend_transport_options") or {}
    return bool(options.get("result_chord_ordered", True))


def set_chord_size(backend: RedisBackend, group_id: str, size: int) -> None:
    """``DEL .c`` (a frozen chord sent again is a new run), ``SET .s <size> EX <chord_expires>``."""
    key = backend.group_key_for(group_id)
    expires = chord.chord_expires(backend) or None
    backend._call("delete", backend.client.delete, key + ".c", store=True)
    backend._call("store", lambda: backend.client.set(key + ".s", int(size), ex=expires), store=True)


def on_chord_part_return(backend: RedisBackend, request: Any, state: str, result: Any) -> None:
    """Count one header part with the script; the claimer sends the body (``chord.complete``)."""
    task_id, gid, index = request.id, request.group, request.group_index
    if not task_id or not gid or not getattr(request, "chord", None):
        return
    key = backend.group_key_for(gid)
    j, t, s, d, c = (key + suffix for suffix in (".j", ".t", ".s", ".d", ".c"))
    claim_ttl, _ = chord.claim_ttls(backend.app)
    token = uuid.uuid4().hex
    is_ordered = ordered(backend)
    args = [
        task_id, chord.encode_part(backend, task_id, state, result), 1 if is_ordered else 0,
        "+inf" if index is None else int(index), chord.chord_expires(backend),
        chord.chord_result_expires(backend), claim_ttl, token,
    ]  # fmt: skip
    count, diff, size, claimed = run_script(
        backend, "count a chord part", PART_LUA, [j, t, s, d, key, c], args
    )
    if count == -1 or not size or not claimed or count != int(size) + int(diff or 0):
        return

    def read_parts() -> list[Any]:
        if is_ordered:
            raws = backend._call("read", backend.client.zrange, j, 0, -1)
        else:
            raws = backend._call("read", backend.client.lrange, j, 0, count)
        return [backend.decode(raw) for raw in raws]

    def extend_claim(token: str, seconds: int) -> bool:
        return bool(run_script(backend, "extend a chord claim", EXTEND_LUA, [c, s], [token, seconds]))

    def cleanup(token: str, done_ttl: int) -> bool:
        return bool(run_script(backend, "clean up a chord", CLEANUP_LUA, [c, j, t, s, d], [token, done_ttl]))

    chord.complete(
        backend, request, token, read_parts, extend_claim, cleanup,
        lambda: backend._call("delete", backend.client.delete, s, store=True),
    )  # fmt: skip
