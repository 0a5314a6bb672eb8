"""What an embedder counts: hits, misses, requests and tokens, per call and since it started,
and the share of them not yet added to the cache's lifetime counters."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

__all__ = ["Counters", "Stats"]


@dataclass
class Stats:
    """Counters since the embedder was created (or of one call). Hits, misses and coalesced
    count distinct entries.

    :ivar hits: entries found in the cache.
    :ivar misses: entries this embedder fetched (or tried to) from the upstream.
    :ivar requests: upstream requests sent (retries not counted).
    :ivar tokens_spent: tokens the upstream charged for them.
    :ivar tokens_saved: tokens recorded for the hit entries when they were fetched; an
        estimate, since a batch's usage is apportioned to its texts by length.
    :ivar coalesced: entries that another call was already fetching, taken from its result.
    """

    hits: int = 0
    misses: int = 0
    requests: int = 0
    tokens_spent: int = 0
    tokens_saved: float = 0.0
    coalesced: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class Counters:
    """An embedder's running totals; thread-safe. Every change is made to the totals and
    to the :class:`Stats` of the call it belongs to, under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = Stats()
        self._flushed = asdict(self._total)

    def snapshot(self) -> Stats:
        """A copy of the totals."""
        with self._lock:
            return Stats(**asdict(self._total))

    def add(self, call: Stats, **deltas: float) -> None:
        """Add ``deltas`` (field name to amount) to the totals and to ``call``."""
        with self._lock:
            for counters in (self._total, call):
                for name, delta in deltas.items():
                    setattr(counters, name, getattr(counters, name) + delta)

    def add_hits(self, entries: int, tokens_saved: float) -> None:
        """Count hits answered outside any call (:meth:`add`'s fast twin for the proxy's
        hit path, where a call's own :class:`Stats` would be thrown away)."""
        with self._lock:
            self._total.hits += entries
            self._total.tokens_saved += tokens_saved

    def take_unflushed(self) -> dict[str, int]:
        """What was counted since the last call, as whole numbers, for the lifetime
        counters; rounding is of the running totals, so fractions are never lost."""
        with self._lock:
            now = asdict(self._total)
            deltas = {name: round(now[name]) - round(self._flushed[name]) for name in now}
            self._flushed = now
        return deltas
