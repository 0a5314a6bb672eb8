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

A fetch keeps its claims in a :class:`FetchClaims`: taken a chunk at a time just before
the chunk is packed, each ended once what it holds has been sent, and the misses held by
others set aside, to be waited for once all of its own claims have ended. So a caller never
waits while holding claims of its own, and waits never form a cycle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..storage.claims import Claims
from .batches import Miss

__all__ = ["Claim", "Elsewhere", "FetchClaims", "Inflight"]


@dataclass(frozen=True)
class Elsewhere:
    """What holds the keys a claim did not get: other threads' claims (their events) and
    other processes' claims (their claim bytes in the directory's claims file)."""

    events: list[threading.Event] = field(default_factory=list)
    other_bytes: list[int] = field(default_factory=list)


class Claim:
    """The keys one caller owns from one :meth:`Inflight.claim`; :meth:`release` ends it."""

    def __init__(
        self, inflight: Inflight, keys: list[bytes], event: threading.Event, byte: int | None
    ) -> None:
        self._inflight = inflight
        self.keys = keys
        self._event = event
        self._byte = byte

    def release(self) -> None:
        """End the claim, whatever happened to the fetch, and wake its waiters (idempotent)."""
        if not self._event.is_set():
            self._inflight._end(self.keys, self._event, self._byte)


class Inflight:
    """Entry keys being fetched right now: this process's, each mapped to the event of its
    claim, and, through ``claims``, every process's that shares the cache directory.

    :param claims: the directory's claims; ``None`` coalesces only this process's threads.
    """

    def __init__(self, claims: Claims | None = None) -> None:
        self._lock = threading.Lock()
        self._events: dict[bytes, threading.Event] = {}  # key -> its thread claim's event
        self._claims = claims
        self._waiting = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

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
            other_bytes = [byte for elsewhere in held for byte in elsewhere.other_bytes]
            if other_bytes and self._claims is not None:
                self._claims.wait(other_bytes)
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
                other = self._events.get(key)
                if other is None:
                    free.append(position)
                else:
                    held[id(other)] = other
            owned, byte, other_bytes = free, None, []
            if free and self._claims is not None:
                # Under the lock, so no thread of this process claims or releases meanwhile.
                taken = self._claims.take([keys[i] for i in free])
                owned = [free[j] for j in taken.owned]
                byte, other_bytes = taken.byte, taken.other_bytes
            for position in owned:
                self._events[keys[position]] = event
        claim = Claim(self, [keys[i] for i in owned], event, byte)
        return claim, owned, Elsewhere(list(held.values()), other_bytes)

    def fetch(self, *, whole: bool) -> FetchClaims:
        """The claims of one fetch, taken from this registry.

        :param whole: the misses are one late-chunking group: claim all of it or none.
        """
        return FetchClaims(self, whole=whole)

    def _end(self, keys: list[bytes], event: threading.Event, byte: int | None) -> None:
        with self._lock:
            if byte is not None and self._claims is not None:
                self._claims.release(byte)
            for key in keys:
                if self._events.get(key) is event:
                    del self._events[key]
        event.set()


class FetchClaims:
    """The claims of one fetch, and the misses it left to others' fetches.

    Each claim is taken for a chunk of misses just before the chunk is packed into a request
    (:meth:`take`), and ended once every entry it holds that is still to be sent has been
    committed (:meth:`sent`): a claimed chunk may be packed into two requests. Entries
    another call or process holds are set aside, to be waited for once this fetch holds no
    claim (:meth:`wait_for_others`).

    Not thread-safe: one fetch's packing and commits run on its calling thread.
    """

    def __init__(self, inflight: Inflight, *, whole: bool = False) -> None:
        self._inflight = inflight
        self._whole = whole
        self._owner: dict[bytes, Claim] = {}
        self._left: dict[Claim, int] = {}  # the claims not yet ended: entries to send
        self._elsewhere: list[tuple[Elsewhere, list[Miss]]] = []

    def take(self, chunk: list[Miss], unstored: Callable[[list[Miss]], list[Miss]]) -> list[Miss]:
        """What of ``chunk`` this fetch is to send: its entries claimed, those another call
        or process is already fetching set aside, and of the rest what ``unstored`` returns,
        called under the claim: anything stored before the claim was taken is found, and no
        other claiming caller fetches these entries while it is held. (Looking first would
        leave a gap in which another process commits and releases, and this fetch then
        claims and pays again.)"""
        claim, owned, elsewhere = self._inflight.claim([miss.key for miss in chunk])
        if len(owned) < len(chunk) and self._whole:
            # Never send part of a late-chunking group; wait for whoever holds the rest.
            claim.release()
            owned = []
        if len(owned) < len(chunk):
            mine = set(owned)
            self._elsewhere.append(
                (elsewhere, [miss for i, miss in enumerate(chunk) if i not in mine])
            )
            chunk = [chunk[i] for i in owned]
        try:
            sending = unstored(chunk)
        except BaseException:
            claim.release()  # not yet among the held claims, which end on every path
            raise
        self._hold(claim, sending)
        return sending

    def sent(self, batch: list[Miss]) -> None:
        """``batch`` is committed (or failed): end the claims nothing else waits on."""
        for miss in batch:
            claim = self._owner.pop(miss.key, None)
            if claim is not None:
                self._left[claim] -= 1
                if not self._left[claim]:
                    del self._left[claim]
                    claim.release()

    def release(self) -> None:
        """End every claim still held, whatever happened to its entries."""
        for claim in self._left:
            claim.release()
        self._left.clear()
        self._owner.clear()

    @property
    def left_to_others(self) -> bool:
        """Whether some misses were set aside for others' fetches."""
        return bool(self._elsewhere)

    def wait_for_others(self) -> list[Miss]:
        """Block until the fetches holding the misses set aside have ended, and return those
        misses (the caller reads the store and fetches what is still missing: an ended
        claim says nothing about success). Ends this fetch's own claims first, so no caller
        ever waits holding one."""
        self.release()
        elsewhere, self._elsewhere = self._elsewhere, []
        self._inflight.wait([held for held, _ in elsewhere])
        return [miss for _, misses in elsewhere for miss in misses]

    def _hold(self, claim: Claim, sending: list[Miss]) -> None:
        """Keep ``claim`` until ``sending``, what it holds that is still missing, is sent
        (entries found stored stay claimed with the rest until then)."""
        if not sending:
            claim.release()
            return
        self._left[claim] = len(sending)
        for miss in sending:
            self._owner[miss.key] = claim
