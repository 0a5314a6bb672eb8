"""Coalescing of concurrent fetches: one upstream request per entry, however many callers.

When two calls miss the same entry at the same time (threads of one process, clients of the
proxy, or any processes sharing the cache directory), the first *claims* it just before
sending its batch; the others wait for the claim to end and then read the entry from the
store. An ended claim says nothing about success: if the fetch failed the entry is still
missing, and each waiter fetches it itself (with its own credentials), so a caller never
inherits someone else's error.

:class:`Inflight` keeps the claims of this process's threads, one event per batch, and
takes the keys no thread holds from the directory's
:class:`~embedcache.storage.claims.Claims`, which other processes see; a key held there is
waited for the same way. Claims exist only for batches in flight and the few entries a
call has claimed for its next request (:class:`~embedcache.embedding.batches.Packer`), so
memory stays bounded by about ``(concurrency + 4) x batch size`` whatever the size of the
corpus.

A caller must not wait while holding claims of its own:
:class:`~embedcache.embedding.embedder.CachedEmbedder` releases every claim of a call
before :meth:`Inflight.wait`, so waits never form a cycle.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..storage.claims import Claims

__all__ = ["Claim", "Elsewhere", "Inflight"]


@dataclass(frozen=True)
class Elsewhere:
    """What holds the keys a claim did not get: other threads' claims (their events) and
    other processes' fetches (their bytes in the claims file)."""

    events: list[threading.Event] = field(default_factory=list)
    fetches: list[int] = field(default_factory=list)


class Claim:
    """The keys one caller owns from one :meth:`Inflight.claim`; :meth:`release` ends it."""

    def __init__(
        self, registry: Inflight, keys: list[bytes], event: threading.Event, ticket: int | None
    ) -> None:
        self._registry = registry
        self.keys = keys
        self._event = event
        self._ticket = ticket

    def release(self) -> None:
        """End the claim, whatever happened to the fetch, and wake its waiters (idempotent)."""
        if not self._event.is_set():
            self._registry._end(self.keys, self._event, self._ticket)


class Inflight:
    """Entry keys being fetched right now: this process's, each mapped to the event of its
    claim, and, through ``claims``, every process's that shares the cache directory.

    :param claims: the directory's claims; ``None`` coalesces only this process's threads.
    """

    def __init__(self, claims: Claims | None = None) -> None:
        self._lock = threading.Lock()
        self._claims: dict[bytes, threading.Event] = {}
        self._directory = claims
        self._waiting = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._claims)

    @property
    def waiting(self) -> int:
        """How many callers are waiting for others' fetches right now."""
        return self._waiting

    def wait(self, held: Sequence[Elsewhere]) -> None:
        """Block until every claim of ``held`` (others', from :meth:`claim`) has ended.
        Call it holding no claim of your own."""
        with self._lock:
            self._waiting += 1
        try:
            for elsewhere in held:
                for event in elsewhere.events:
                    event.wait()
            fetches = [fetch for elsewhere in held for fetch in elsewhere.fetches]
            if fetches and self._directory is not None:
                self._directory.wait(fetches)
        finally:
            with self._lock:
                self._waiting -= 1

    def claim(self, keys: Sequence[bytes]) -> tuple[Claim, list[int], Elsewhere]:
        """Claim every key of ``keys`` that nobody holds.

        :returns: the claim (release it when the batch is committed or has failed), the
            positions in ``keys`` it owns, and what holds the rest.
        """
        event = threading.Event()
        held: dict[int, threading.Event] = {}
        free: list[int] = []
        with self._lock:
            for position, key in enumerate(keys):
                other = self._claims.get(key)
                if other is None:
                    free.append(position)
                else:
                    held[id(other)] = other
            owned, ticket, fetches = free, None, []
            if free and self._directory is not None:
                # Under the lock, so no thread of this process claims or releases meanwhile.
                taken = self._directory.take([keys[i] for i in free])
                owned = [free[j] for j in taken.owned]
                ticket, fetches = taken.ticket, taken.elsewhere
            for position in owned:
                self._claims[keys[position]] = event
        claim = Claim(self, [keys[i] for i in owned], event, ticket)
        return claim, owned, Elsewhere(list(held.values()), fetches)

    def _end(self, keys: list[bytes], event: threading.Event, ticket: int | None) -> None:
        with self._lock:
            if ticket is not None and self._directory is not None:
                self._directory.release(ticket)
            for key in keys:
                if self._claims.get(key) is event:
                    del self._claims[key]
        event.set()
