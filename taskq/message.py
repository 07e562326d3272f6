"""Celery task messages: build protocol 2, read protocols 1 and 2.

The message is the contract between taskq, Celery and every monitoring tool, so its headers,
properties and body follow Celery 5.7 key for key (``tests/data/vectors`` are the proof). The
worker side is strict about what it needs (a task name, an id, ``[args, kwargs, embed]``) and
lenient about everything else, because messages also come from older Celery versions.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from dateutil.parser import isoparse

from taskq.exceptions import InvalidTaskError
from taskq.saferepr import REPR_MAXLEN, saferepr

EMBED_KEYS = ("callbacks", "errbacks", "chain", "chord")
# Headers Celery itself writes; anything else in a message came from apply_async(headers=...).
PROTOCOL_HEADERS = frozenset(
    {
        "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
        "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
        "replaced_task_nesting", "stamped_headers", "stamps", "compression", "redelivered",
        "celery_beat_task",
    }
)  # fmt: skip
__all__ = ["PROTOCOL_HEADERS", "REPR_MAXLEN", "OutgoingMessage", "TaskRequest", "build", "parse", "saferepr"]


_origin = (0, "")  # (pid, name): asked once per process, not once per message


def origin_name() -> str:
    """``gen<pid>@<host>``: how Celery names the process that sent a message."""
    global _origin
    pid = os.getpid()
    if _origin[0] != pid:
        _origin = (pid, f"gen{pid}@{socket.gethostname()}")
    return _origin[1]


def to_iso(value: datetime | str | None) -> str | None:
    """ETA/expires as Celery writes them: isoformat, keeping an aware value's own offset."""
    if value is None or isinstance(value, str):
        return value
    return value.isoformat()


def parse_time(value: Any, what: str) -> datetime | None:
    """Read an eta/expires header; naive values are UTC, as Celery's worker reads them."""
    if value is None or value == "":
        return None
    try:
        parsed = value if isinstance(value, datetime) else isoparse(str(value))
    except (TypeError, ValueError) as exc:
        raise InvalidTaskError(f"{what} {value!r} is not an ISO-8601 datetime") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@dataclass
class OutgoingMessage:
    """What ``Broker.publish`` sends: body tuple, headers and AMQP properties."""

    headers: dict[str, Any]
    properties: dict[str, Any]
    body: tuple[Sequence[Any], Mapping[str, Any], dict[str, Any]]

    @property
    def id(self) -> str:
        return str(self.headers["id"])


def build(
    name: str,
    task_id: str,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    eta: datetime | str | None = None,
    expires: datetime | str | None = None,
    expires_in: float | None = None,
    group_id: str | None = None,
    group_index: int | None = None,
    retries: int = 0,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    root_id: str | None = None,
    parent_id: str | None = None,
    shadow: str | None = None,
    ignore_result: bool | None = False,
    reply_to: str = "",
    origin: str | None = None,
    callbacks: list[Any] | None = None,
    errbacks: list[Any] | None = None,
    chain: list[Any] | None = None,
    chord: Any = None,
    argsrepr: str | None = None,
    kwargsrepr: str | None = None,
    repr_maxlevels: int = 3,
    replaced_task_nesting: int = 0,
    stamped_headers: list[str] | None = None,
    stamps: dict[str, Any] | None = None,
    extra_headers: Mapping[str, Any] | None = None,
) -> OutgoingMessage:
    """A protocol-2 task message, headers in the order Celery writes them.

    ``expires_in`` is the number of seconds until ``expires`` and becomes the AMQP
    ``expiration`` property (kombu writes it in milliseconds), as Celery does.
    """
    args = args if args is not None else ()
    kwargs = kwargs if kwargs is not None else {}
    if not isinstance(args, (list, tuple)):
        raise TypeError(f"task args must be a list or tuple, not {type(args).__name__}")
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"task kwargs must be a mapping, not {type(kwargs).__name__}")
    headers: dict[str, Any] = {
        "lang": "py",
        "task": name,
        "id": task_id,
        "shadow": shadow,
        "eta": to_iso(eta),
        "expires": to_iso(expires),
        "group": group_id,
        "group_index": group_index,
        "retries": retries,
        "timelimit": [time_limit, soft_time_limit],
        "root_id": root_id or task_id,
        "parent_id": parent_id,
        "argsrepr": argsrepr if argsrepr is not None else saferepr(args, repr_maxlevels),
        "kwargsrepr": kwargsrepr if kwargsrepr is not None else saferepr(kwargs, repr_maxlevels),
        "origin": origin or origin_name(),
        "ignore_result": ignore_result,
        "replaced_task_nesting": replaced_task_nesting,
        "stamped_headers": stamped_headers,
        "stamps": stamps or {},
    }
    if extra_headers:
        headers.update(extra_headers)
    properties: dict[str, Any] = {"correlation_id": task_id, "reply_to": reply_to}
    if expires_in is not None:
        properties["expiration"] = max(expires_in, 0)
    embed = {"callbacks": callbacks, "errbacks": errbacks, "chain": chain, "chord": chord}
    return OutgoingMessage(headers, properties, (args, dict(kwargs), embed))


@dataclass
class TaskRequest:
    """A received task message, validated: everything the worker needs to run it."""

    name: str
    id: str
    args: list[Any]
    kwargs: dict[str, Any]
    headers: dict[str, Any]
    callbacks: list[Any] | None = None
    errbacks: list[Any] | None = None
    chain: list[Any] | None = None
    chord: Any = None
    eta: datetime | None = None
    expires: datetime | None = None
    retries: int = 0
    group: str | None = None
    group_index: int | None = None
    root_id: str | None = None
    parent_id: str | None = None
    timelimit: tuple[float | None, float | None] = (None, None)
    ignore_result: bool = False
    shadow: str | None = None
    origin: str | None = None
    argsrepr: str = ""
    kwargsrepr: str = ""
    properties: dict[str, Any] = field(default_factory=dict)
    delivery_info: dict[str, Any] = field(default_factory=dict)
    protocol: int = 2

    @property
    def correlation_id(self) -> str:
        return str(self.properties.get("correlation_id") or self.id)

    @property
    def reply_to(self) -> str | None:
        return self.properties.get("reply_to") or None


def parse(
    headers: Mapping[str, Any] | None,
    body: Any,
    properties: Mapping[str, Any] | None = None,
    delivery_info: Mapping[str, Any] | None = None,
) -> TaskRequest:
    """Validate a decoded message into a ``TaskRequest``; raise ``InvalidTaskError`` if broken.

    Accepts protocol 2, protocol 1 (empty headers, everything in a body dict) and the hybrid
    that has protocol-2 headers with a protocol-1 body, as a Celery 5.7 worker does.
    """
    headers = dict(headers or {})
    properties = dict(properties or {})
    if "task" not in headers or isinstance(body, Mapping):
        fields, args, kwargs, embed = _from_protocol1(headers, body)
        protocol = 1
    else:
        fields = headers
        args, kwargs, embed = _split_body(body)
        protocol = 2
    name, task_id = fields.get("task"), fields.get("id")
    if not name or not isinstance(name, str):
        raise InvalidTaskError("message has no task name")
    if not task_id:
        raise InvalidTaskError(f"message for {name} has no task id")
    timelimit = fields.get("timelimit") or (None, None)
    if not isinstance(timelimit, (list, tuple)) or len(timelimit) != 2:
        raise InvalidTaskError(f"timelimit {timelimit!r} is not [hard, soft]")
    return TaskRequest(
        name=name,
        id=str(task_id),
        args=args,
        kwargs=kwargs,
        headers=headers,
        callbacks=embed.get("callbacks"),
        errbacks=embed.get("errbacks"),
        chain=embed.get("chain"),
        chord=embed.get("chord"),
        eta=parse_time(fields.get("eta"), "eta"),
        expires=parse_time(fields.get("expires"), "expires"),
        retries=_int(fields.get("retries"), "retries"),
        group=fields.get("group"),
        group_index=None
        if fields.get("group_index") is None
        else _int(fields.get("group_index"), "group_index"),
        root_id=fields.get("root_id") or str(task_id),
        parent_id=fields.get("parent_id"),
        timelimit=(timelimit[0], timelimit[1]),
        ignore_result=bool(fields.get("ignore_result")),
        shadow=fields.get("shadow"),
        origin=fields.get("origin"),
        argsrepr=fields.get("argsrepr") or saferepr(args),
        kwargsrepr=fields.get("kwargsrepr") or saferepr(kwargs),
        properties=properties,
        delivery_info=dict(delivery_info or {}),
        protocol=protocol,
    )


def _int(value: Any, what: str) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        raise InvalidTaskError(f"{what} {value!r} is not a number") from None


def _split_body(body: Any) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    if not isinstance(body, (list, tuple)) or len(body) != 3:
        size = len(body) if isinstance(body, (list, tuple)) else type(body).__name__
        raise InvalidTaskError(f"body must be [args, kwargs, embed], got {size}")
    args, kwargs, embed = body
    if not isinstance(args, (list, tuple)):
        raise InvalidTaskError(f"task args must be a list, got {type(args).__name__}")
    if not isinstance(kwargs, Mapping):
        raise InvalidTaskError(f"task keyword arguments must be a mapping, got {kwargs!r}")
    if embed is None:
        embed = {}
    if not isinstance(embed, Mapping):
        raise InvalidTaskError(f"embed must be a mapping, got {type(embed).__name__}")
    return list(args), dict(kwargs), dict(embed)


def _from_protocol1(
    headers: dict[str, Any], body: Any
) -> tuple[dict[str, Any], list[Any], dict[str, Any], dict[str, Any]]:
    if not isinstance(body, Mapping):
        raise InvalidTaskError("message has no task header and its body is not a protocol-1 dict")
    fields = {**body, **{k: v for k, v in headers.items() if v is not None}}
    fields.setdefault("group", body.get("taskset"))
    args, kwargs = body.get("args") or [], body.get("kwargs") or {}
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, Mapping):
        raise InvalidTaskError("protocol-1 body has malformed args or kwargs")
    embed = {key: body.get(key) for key in EMBED_KEYS}
    return fields, list(args), dict(kwargs), embed
