"""``argsrepr``/``kwargsrepr``: the argument text Celery puts in headers, logs and events.

Monitoring tools show these strings, so they follow Celery's rendering rather than Python's
``repr``: dicts keep insertion order, strings are quoted with ``'`` (an inner ``'`` escaped),
bytes print as UTF-8 text or, failing that, hex, and containers nested deeper than
``maxlevels`` print as ``[...]``. Identical to Celery's for anything under ``maxlen``
characters; past that the text is cut with ``...``. It never raises.
"""

from __future__ import annotations

from typing import Any

REPR_MAXLEN = 1024

# container type -> (open, close, empty form)
_BRACKETS: dict[type, tuple[str, str, str]] = {
    list: ("[", "]", "[]"),
    tuple: ("(", ")", "()"),
    set: ("{", "}", "set()"),
    frozenset: ("frozenset({", "})", "frozenset()"),
}


def saferepr(obj: Any, maxlevels: int = 3, maxlen: int = REPR_MAXLEN) -> str:
    """Celery-style repr of ``obj``, at most ``maxlen`` characters."""
    try:
        text = _render(obj, maxlevels, 0)
    except Exception as exc:  # a user __repr__ may raise; a log line must not
        text = f"<unrepresentable {type(obj).__name__}: {exc!r}>"
    return text if len(text) <= maxlen else text[: max(maxlen - 3, 0)] + "..."


def _render(obj: Any, maxlevels: int, level: int) -> str:
    if isinstance(obj, str):
        return "'" + obj.replace("'", "\\'") + "'"
    if isinstance(obj, bytes):
        try:
            return "b'" + obj.decode("utf-8") + "'"  # Celery escapes nothing in bytes
        except UnicodeDecodeError:
            return f"b'{obj.hex()}'"
    if isinstance(obj, dict):
        if level >= maxlevels:
            return "{...}"
        if not obj:
            return "{}"
        items = (
            f"{_render(k, maxlevels, level + 1)}: {_render(v, maxlevels, level + 1)}" for k, v in obj.items()
        )
        return "{" + ", ".join(items) + "}"
    brackets = _BRACKETS.get(type(obj))
    if brackets is None:
        return repr(obj)
    opening, closing, empty = brackets
    if not obj and isinstance(obj, (set, frozenset)):
        return empty  # an empty set prints as set() even where nesting is cut
    if level >= maxlevels:
        return f"{opening}...{',' if isinstance(obj, tuple) and len(obj) == 1 else ''}{closing}"
    if not obj:
        return empty
    inner = ", ".join(_render(item, maxlevels, level + 1) for item in obj)
    if isinstance(obj, tuple) and len(obj) == 1:
        inner += ","
    return opening + inner + closing
