"""Reading pickled rows without letting the row choose what runs.

Celery before 5.7 kept the ``result`` column as a SQLAlchemy ``PickleType``: a pickle of the
result itself. Celery 5.7 still unpickles such legacy rows (a payload starting with the pickle
protocol marker ``0x80`` that the configured serializer cannot read). A pickle can call any
importable callable, so a row someone wrote into the table could run code in every reader;
taskq reads these rows with an unpickler that only admits plain data (and builtin exception
classes, which a FAILURE row holds) and refuses everything else with a SecurityError.
"""

from __future__ import annotations

import builtins
import io
import pickle
from typing import Any

from taskq.exceptions import SecurityError

PICKLE_MARKER = b"\x80"  # protocol 2+ opcode PROTO: every pickle Celery or kombu wrote starts so

_PLAIN = {
    ("builtins", name)
    for name in (
        "dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray",
        "int", "float", "complex", "bool", "slice", "range",
    )
} | {
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time"),
    ("datetime", "timedelta"), ("datetime", "timezone"),
    ("decimal", "Decimal"), ("uuid", "UUID"), ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocol 2 spells bytes
}  # fmt: skip


class PlainUnpickler(pickle.Unpickler):
    """Resolves only plain data types and builtin exception classes."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN:
            return super().find_class(module, name)
        if module == "builtins":
            found = getattr(builtins, name, None)
            if isinstance(found, type) and issubclass(found, BaseException):
                return found
        raise SecurityError(
            f"a pickled row refers to {module}.{name}; taskq only loads plain data from a result store"
        )


def loads_plain(payload: bytes) -> Any:
    """Unpickle ``payload`` if it holds plain data only; else SecurityError, nothing called."""
    return PlainUnpickler(io.BytesIO(payload)).load()


def looks_pickled(payload: bytes) -> bool:
    return payload[:1] == PICKLE_MARKER
