"""Task state names and their order, as Celery defines them.

The strings are part of the wire (they are stored in result metas), so they must match
Celery's byte for byte; the precedence decides which of two racing writes is the truer one.
"""

from __future__ import annotations

PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
REJECTED = "REJECTED"
RETRY = "RETRY"
IGNORED = "IGNORED"

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, REJECTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})
ALL_STATES = frozenset({PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED, REJECTED})

# Lowest index = highest precedence; custom states rank just above PENDING, as in Celery.
PRECEDENCE = [SUCCESS, FAILURE, None, REVOKED, STARTED, RECEIVED, REJECTED, RETRY, PENDING]
_CUSTOM = PRECEDENCE.index(None)


def precedence(state: str) -> int:
    """Rank of ``state``: lower means the state wins over a higher one."""
    try:
        return PRECEDENCE.index(state)
    except ValueError:
        return _CUSTOM
