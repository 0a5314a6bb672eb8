"""Coalescing of concurrent fetches: one upstream request per entry, however many callers.

When two calls (threads of one process, or two clients of the proxy) miss the same entry at
the same time, the first *claims* it just before sending its batch; the others wait for the
claim to end and then read the entry from the store. An ended claim says nothing about
success: if the fetch failed the entry is still missing, and each waiter fetches it itself
(with its own credentials), so a caller never inherits someone else's error.

Claims exist only for batches in flight, one event per batch, so memory stays bounded by
``concurrency x batch size`` whatever the size of the corpus.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

__all__ = ["Claim", "Inflight"]


class Claim:
    """The keys one caller owns from one :meth:`Inflight.claim`; :meth:`release` ends it."""

    def __init__(self, registry: Inflight, keys: list[bytes], event: threading.Event) -> None:
        self._registry = registry
        self.keys = keys
        self._event = event

    def release(self) -> None:
        """End the claim, whatever happened to the fetch, and wake its waiters (idempotent)."""
        if not self._event.is_set():
            self._registry._end(self.keys, self._event)


class Inflight:
    """Entry keys being fetched right now, each mapped to the event of its claim."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claims: dict[bytes, threading.Event] = {}
        self._waiting = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._claims)

    @property
    def waiting(self) -> int:
        """How many callers are waiting for others' fetches right now."""
        return self._waiting

    def wait(self, events: list[threading.Event]) -> None:
        """Block until every one of ``events`` (others' claims) has ended."""
        with self._lock:
            self._waiting += 1
        try:
            for event in events:
                event.wait()
        finally:
            with self._lock:
                self._waiting -= 1

    def claim(self, keys: Sequence[bytes]) -> tuple[Claim, list[int], list[threading.Event]]:
        """Claim every key of ``keys`` that nobody holds.

        :returns: the claim (release it when the batch is committed or has failed), the
            positions in ``keys`` it owns, and the events of others' claims on the rest.
        """
        event = threading.Event()
        owned: list[int] = []
        held: dict[int, threading.Event] = {}
        with self._lock:
            for position, key in enumerate(keys):
                other = self._claims.setdefault(key, event)
                if other is event:
                    owned.append(position)
                else:
                    held[id(other)] = other
        claim = Claim(self, [keys[i] for i in owned], event)
        return claim, owned, list(held.values())

    def _end(self, keys: list[bytes], event: threading.Event) -> None:
        with self._lock:
            for key in keys:
                if self._claims.get(key) is event:
                    del self._claims[key]
        event.set()
