"""A stand-in for the imaginary ``twitter`` client of Celery's task docs.

It fails ``Twitter.failures`` times with ``FailWhaleError`` ("over capacity"), then works, so a
retrying task can be watched going from RETRY to SUCCESS.
"""

from __future__ import annotations

import threading


class Twitter:
    class FailWhaleError(Exception):
        """Twitter is over capacity: try again later."""

    class LoginError(Exception):
        """The OAuth token was refused."""

    failures = 2  # calls that fail before the service "recovers" (shared by all clients)
    sent: list[str] = []
    _lock = threading.Lock()

    def __init__(self, oauth: str | None = None) -> None:
        if oauth == "bad-token":
            raise Twitter.LoginError("invalid OAuth token")
        self.oauth = oauth

    @classmethod
    def reset(cls, failures: int = 2) -> None:
        with cls._lock:
            cls.failures = failures
            cls.sent = []

    def _maybe_fail(self) -> None:
        with Twitter._lock:
            if Twitter.failures > 0:
                Twitter.failures -= 1
                raise Twitter.FailWhaleError("Twitter is over capacity")

    def update_status(self, tweet: str) -> str:
        self._maybe_fail()
        Twitter.sent.append(tweet)
        return f"status:{len(Twitter.sent)}"

    def refresh_timeline(self, user: str) -> list[str]:
        self._maybe_fail()
        return [f"{user}: tweet {n}" for n in range(3)]


twitter = Twitter()  # the module-level client the autoretry examples use
