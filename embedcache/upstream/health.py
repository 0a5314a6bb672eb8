"""How the upstream is doing, as one process's client sees it: attempts sent, retries,
failures by kind, the last failure, and the time answers took.

:class:`~embedcache.upstream.jina.JinaClient` updates one :class:`UpstreamHealth` per
attempt (shared with the clients its :meth:`~embedcache.upstream.jina.JinaClient.for_key`
makes); the proxy copies the figures onto its metrics board with every publish. The cost is
a lock and a few additions per attempt, beside a network round trip.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

__all__ = ["FAILURE_KINDS", "LastFailure", "UpstreamHealth", "failure_kind"]

#: Failed attempts by kind: a 429, a 5xx, no answer at all (timeout, refused or broken
#: connection), another 4xx.
FAILURE_KINDS = ("rate_limited", "server_error", "transport", "client_error")
_MESSAGE_CHARS = 200


def failure_kind(status: int | None) -> str:
    """The kind of a failed attempt: its status, or ``None`` when no answer came."""
    if status is None:
        return "transport"
    if status == 429:
        return "rate_limited"
    return "server_error" if status >= 500 else "client_error"


@dataclass(frozen=True)
class LastFailure:
    """The latest failed attempt: its status (``None``: no answer), when (seconds since the
    epoch) and one line saying what (already free of keys and URL credentials)."""

    status: int | None
    at: float
    message: str


class UpstreamHealth:
    """Counters of the attempts a process's clients made (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Attempts sent (every retry included) and, of them, the retries.
        self.sent = 0
        self.retries = 0
        #: Failed attempts by :data:`FAILURE_KINDS`.
        self.failures = dict.fromkeys(FAILURE_KINDS, 0)
        #: Attempts answered, and the seconds those answers took in all.
        self.answered = 0
        self.answer_seconds = 0.0
        self.last_failure: LastFailure | None = None

    def attempted(self, attempt: int, seconds: float, status: int | None) -> None:
        """One attempt (1: the first) took ``seconds``, answered with ``status`` (``None``:
        no answer came)."""
        with self._lock:
            self.sent += 1
            if attempt > 1:
                self.retries += 1
            if status is not None:
                self.answered += 1
                self.answer_seconds += seconds

    def failed(self, status: int | None, message: str) -> None:
        """The attempt just counted failed: ``message`` is one line with no secret in it."""
        line = " ".join(message.split())[:_MESSAGE_CHARS]
        with self._lock:
            self.failures[failure_kind(status)] += 1
            self.last_failure = LastFailure(status, time.time(), line)
