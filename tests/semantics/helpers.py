"""Things the semantics tests share that must live in an importable module.

Exceptions a task raises are rebuilt from the result backend by module and class name, so they
are defined here (``semantics.helpers``) rather than inside a test function.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class Flaky(Exception):
    """A temporary failure: the kind of error a task retries."""


class Fatal(Flaky):
    """A subclass of ``Flaky`` that must not be retried (``dont_autoretry_for``)."""


class Boom(Exception):
    """A task failure with a custom type, to check it round-trips."""


class Point:
    """A plain object that only pickle can carry."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
