"""Crontab field syntax: ``'*/15'``, ``'1-5,10'``, ``'mon-fri'``, ``'@daily'`` to sets of numbers.

Celery's grammar (``crontab_parser``), with two things plain cron also accepts: ``5/10`` (every
10th from 5) and ``7`` for Sunday in ``day_of_week``. Kept apart from ``schedules`` because it is
pure text-to-numbers with no notion of time.
"""

from __future__ import annotations

import re

__all__ = ["DAYS_IN_MONTH", "MACROS", "MONTHS", "WEEKDAYS", "ParseException", "crontab_parser"]

WEEKDAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}  # fmt: skip
# The longest February: a day_of_month that never occurs in any chosen month is refused.
DAYS_IN_MONTH = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}
MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}  # fmt: skip


class ParseException(ValueError):
    """A crontab field that cannot be parsed (a ``ValueError``, as Celery's range errors are)."""


class crontab_parser:  # noqa: N801 - Celery's name
    """Expand one crontab field (``'*/15'``, ``'1-5,10'``, ``'mon-fri'``) to a set of numbers."""

    _part = re.compile(r"^(?:(\*)|(\w+)(?:-(\w+))?)(?:/(\w*))?$")

    def __init__(self, max_: int = 60, min_: int = 0) -> None:
        self.max_ = max_
        self.min_ = min_

    def parse(self, spec: str) -> set[int]:
        values: set[int] = set()
        for part in spec.split(","):
            if not part.strip():
                raise ParseException(f"empty part in crontab field {spec!r}")
            values.update(self._parse_part(part.strip()))
        return values

    def _parse_part(self, part: str) -> list[int]:
        found = self._part.match(part)
        if found is None:
            raise ParseException(f"cannot parse crontab field part {part!r}")
        star, start, end, step = found.groups()
        last = self.min_ + self.max_ - 1
        if star:
            values = list(range(self.min_, last + 1))
        else:
            low = self._number(start)
            high = self._number(end) if end is not None else (last if step is not None else low)
            # A range that ends below its start wraps around (fri-mon).
            values = (
                list(range(low, high + 1))
                if high >= low
                else [*range(low, last + 1), *range(self.min_, high + 1)]
            )
        if step is None:
            return values
        if not step.isdigit() or int(step) == 0:
            raise ParseException(f"invalid step {step!r} in crontab field part {part!r}")
        return values[:: int(step)]

    def _number(self, text: str) -> int:
        if text.isdigit():
            value = int(text)
        else:
            key = text[:3].lower()
            if key not in MONTHS and key not in WEEKDAYS:
                raise ValueError(f"Invalid weekday literal {text!r}.")
            value = MONTHS.get(key, WEEKDAYS.get(key, 0))
        if value > self.min_ + self.max_ - 1:
            raise ValueError(f"Invalid end range: {value} > {self.min_ + self.max_ - 1}.")
        if value < self.min_:
            raise ValueError(f"Invalid beginning range: {value} < {self.min_}.")
        return value
