"""Taking messages off Redis queues so that a process killed at any instant loses none.

kombu takes a message with ``BRPOP`` and records it in ``unacked`` in a second round trip: a
process killed between the two (kill -9, OOM, a node lost) has taken the message out of every
list and hash, and nothing can bring it back. Here a Lua script pops and records in one atomic
step, owner included (redis_leases.py), and takes up to as many messages as the worker wants in
that one round trip.

A script cannot block, so when the queues are empty the channel waits without taking anything:
``BLMOVE q q LEFT LEFT`` moves the head of ``q`` onto itself, which changes nothing yet returns
as soon as ``q`` has a message (Redis >= 6.2). ``BLMOVE`` watches one list, so a worker
consuming several queues, or a server older than 6.2, waits with kombu's ``BRPOP`` instead: a
message taken that way still has the old one-round-trip window, but only when it reached an
idle worker, never under load. Priority sub-lists of a single queue are looked at on each
wake-up (``brpop_timeout``, 1 s) and on every fetch.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, NamedTuple

from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

logger = logging.getLogger("taskq.broker")

#: messages taken in one round trip at most, whatever the worker would take
BATCH_MAX = 64

# KEYS: unacked, unacked_index, owners, lease, then the lists to pop, in kombu's BRPOP order.
# ARGV: owner id, lease TTL (ms), one '1'/'0' per list (record it as unacked?), now, how many
# (the two that change from one fetch to the next last: see packed_fetch).
# Returns {list, message, recorded (1/0), ...}. The unacked value is kombu's own
# [message, exchange, routing_key] JSON, with the message's bytes kept as they were pushed.
FETCH = """
local want, flags, out, n = tonumber(ARGV[5]), ARGV[3], {}, 0
for i = 5, #KEYS do
  local record = string.sub(flags, i - 4, i - 4) == '1'
  while n < want do
    local item = redis.call('RPOP', KEYS[i])
    if not item then break end
    local recorded = 0
    if record then
      local ok, msg = pcall(cjson.decode, item)
      local props = ok and type(msg) == 'table' and msg.properties
      local info = type(props) == 'table' and props.delivery_info
      local tag = type(props) == 'table' and props.delivery_tag
      if type(tag) == 'string' and type(info) == 'table' then
        local entry = '[' .. item .. ',' .. cjson.encode(info.exchange or '') .. ','
          .. cjson.encode(info.routing_key or '') .. ']'
        redis.call('ZADD', KEYS[2], ARGV[4], tag)
        redis.call('HSET', KEYS[1], tag, entry)
        redis.call('HSET', KEYS[3], tag, ARGV[1])
        recorded = 1
      end
    end
    n = n + 1
    out[#out + 1] = KEYS[i]
    out[#out + 1] = item
    out[#out + 1] = recorded
  end
  if n >= want then break end
end
if n > 0 then redis.call('SET', KEYS[4], '1', 'PX', ARGV[2]) end
return out
"""
FETCH_SHA = hashlib.sha1(FETCH.encode()).hexdigest()


def fetch_command(channel: Any, keys: list[str], record: list[bool], want: int, now: float) -> list[Any]:
    """The ``EVALSHA`` arguments that take up to ``want`` messages from ``keys``."""
    return [*_fixed_args(channel, keys, record), repr(now), want]


def _fixed_args(channel: Any, keys: list[str], record: list[bool]) -> list[Any]:
    qos = channel.qos
    prefix = getattr(channel, "global_keyprefix", "") or ""
    fixed = [channel.unacked_key, channel.unacked_index_key, qos.owners_key, qos.lease_key]
    all_keys = [prefix + k for k in (*fixed, *keys)]
    flags = "".join("1" if r else "0" for r in record)
    ttl_ms = max(int(qos.lease_timeout * 1000), 1000)
    return ["EVALSHA", FETCH_SHA, len(all_keys), *all_keys, qos.lease.id, ttl_ms, flags]


def _resp(*args: Any) -> bytes:
    """Redis' wire form (RESP) of command arguments, the part after the argument count."""
    out = []
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def packed_fetch(channel: Any, keys: list[str], record: list[bool], want: int, now: float) -> bytes:
    """:func:`fetch_command` as the bytes to send, all but its last two arguments cached.

    A worker sends the same fetch for every task it takes, with only the time and the count
    changing; redis-py encoding the fifteen arguments anew each time was a twentieth of the
    worker's main process.
    """
    cache: dict[tuple[Any, ...], tuple[int, bytes]] = channel.__dict__.setdefault("_packed_fetches", {})
    key = (tuple(keys), tuple(record), channel.qos.lease.id, channel.qos.lease_timeout)
    known = cache.get(key)
    if known is None:
        if len(cache) > 64:  # the consumed queues changed many times: start afresh
            cache.clear()
        fixed = _fixed_args(channel, keys, record)
        known = cache[key] = (len(fixed) + 2, _resp(*fixed))
    count, head = known
    return b"*%d\r\n%s%s" % (count, head, _resp(repr(now), want))


def wait_command(channel: Any, key: str, timeout: float) -> list[Any]:
    """A blocking wait for ``key`` to hold a message that leaves the message where it is."""
    prefix = getattr(channel, "global_keyprefix", "") or ""
    return ["BLMOVE", prefix + key, prefix + key, "LEFT", "LEFT", timeout]


class Taken(NamedTuple):
    key: str  #: the list it came from (a queue, or one of its priority lists)
    queue: str
    raw: bytes
    message: dict[str, Any]
    recorded: bool  #: in unacked, its index and the owners hash


def parse_fetched(channel: Any, reply: list[Any]) -> list[Taken]:
    """The messages of a fetch reply, in the order taken.

    An item that is not a kombu message (JSON with a delivery tag) is dropped with an error, as
    kombu's BRPOP drops it, and never costs the rest of the batch.
    """
    prefix = getattr(channel, "global_keyprefix", "") or ""
    taken = []
    for i in range(0, len(reply), 3):
        key = bytes_to_str(reply[i]).removeprefix(prefix)
        raw = reply[i + 1]
        try:
            message = loads(bytes_to_str(raw))
            message["properties"]["delivery_tag"]
        except Exception as exc:
            logger.error(
                "Dropped an item of Redis list %s that is no kombu message: %r (%.200r)", key, exc, raw
            )
            continue
        taken.append(Taken(key, key.rsplit(channel.sep, 1)[0], raw, message, bool(reply[i + 2])))
    return taken


def put_back(channel: Any, taken: list[Taken]) -> None:
    """Return messages taken but never handed to the consumer to the front of their lists,
    unchanged and in order, their unacked records removed: as if never fetched."""
    owners_key = channel.qos.owners_key
    with channel.conn_or_acquire() as client, client.pipeline() as pipe:
        for item in reversed(taken):
            if item.recorded:
                tag = item.message["properties"]["delivery_tag"]
                pipe.zrem(channel.unacked_index_key, tag)
                pipe.hdel(channel.unacked_key, tag)
                pipe.hdel(owners_key, tag)
            pipe.rpush(item.key, item.raw)
        pipe.execute()


def server_has_blmove(client: Any) -> bool:
    """Whether the server takes ``BLMOVE`` (Redis >= 6.2)."""
    try:
        version = str(client.info("server").get("redis_version", "0"))
        major, minor = (int(x) for x in version.split(".")[:2])
    except Exception:  # not Redis' INFO (a proxy, an emulator): BRPOP is safe everywhere
        return False
    return (major, minor) >= (6, 2)


def load_script(client: Any) -> None:
    """Load the fetch script (after a Redis restart emptied its script cache)."""
    sha = client.script_load(FETCH)
    if sha != FETCH_SHA:  # pragma: no cover - Redis hashes scripts with SHA-1 as we do
        raise RuntimeError(f"Redis loaded the fetch script as {sha}, not {FETCH_SHA}")
