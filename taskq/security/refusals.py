"""Naming a refused message in the worker's log, and telling a forged one from a broken one.

A message refused before it is decoded has no parsed request, so the reason is logged with what
the headers say (task name and id, from an unsigned part an attacker controls: good for finding
the message, not for trusting it).
"""

from __future__ import annotations

from typing import Any

from taskq.exceptions import SecurityError

__all__ = ["message_label", "security_cause"]


def security_cause(exc: BaseException) -> SecurityError | None:
    """The ``SecurityError`` behind kombu's ``DecodeError`` (it wraps every decoder error)."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return None
        if isinstance(seen, SecurityError):
            return seen
        inner = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        seen = inner or seen.__cause__ or seen.__context__
    return None


def message_label(message: Any) -> str:
    """``name[id]`` from the headers (protocol 2), else the correlation id, else ``<no id>``."""
    headers = getattr(message, "headers", None) or {}
    properties = getattr(message, "properties", None) or {}
    task_id = headers.get("id") or properties.get("correlation_id") or "<no id>"
    name = headers.get("task")
    return f"{str(name)[:200]}[{str(task_id)[:200]}]" if name else f"[{str(task_id)[:200]}]"
