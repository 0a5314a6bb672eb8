"""A compact set of cache keys, to count distinct entries over a corpus read in windows.

A Python ``set`` of 16-byte keys costs about 90 bytes per key; this one costs 16 (keys are
xxh3-128 digests, kept whole, so the count is exact, not an estimate). Keys live in sorted
numpy ``S16`` runs, merged like a log-structured tree: a run is merged with the one before it
once that one is no more than twice its size, so there are O(log n) runs, a membership test is
one ``np.searchsorted`` per run, and every key is copied O(log n) times in all.

Budget: 16 bytes per distinct key held (32 MB for 2,000,000 distinct texts), and while two
runs merge, the newer one's keys a second time (the older run grows in place): at most 24
bytes a key at that moment.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["KEY_BYTES", "DistinctKeys"]

#: Bytes of a cache key (:func:`embedcache.cache_keys.text_keys`).
KEY_BYTES = 16


class DistinctKeys:
    """Cache keys seen so far; :meth:`add` says which of a batch were new."""

    def __init__(self) -> None:
        self._runs: list[NDArray[np.bytes_]] = []

    def __len__(self) -> int:
        return sum(len(run) for run in self._runs)

    @property
    def nbytes(self) -> int:
        """Bytes the keys held take (16 each)."""
        return sum(run.nbytes for run in self._runs)

    def add(self, keys: Sequence[bytes]) -> NDArray[np.bool_]:
        """Add ``keys`` (distinct among themselves, 16 bytes each); returns for each key
        whether it was new."""
        if not keys:
            return np.zeros(0, dtype=bool)
        batch = np.frombuffer(b"".join(keys), dtype=f"S{KEY_BYTES}")
        if len(batch) != len(keys):
            raise ValueError(f"cache keys are {KEY_BYTES} bytes each")
        new = np.ones(len(batch), dtype=bool)
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, batch), len(run) - 1)
            new &= run[at] != batch
        if new.any():
            self._runs.append(np.sort(batch[new]))
            self._merge()
        return new

    def _merge(self) -> None:
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            last = self._runs.pop()
            merged = self._runs.pop()
            held = len(merged)
            # Grown where it lies (realloc; a large block is remapped, not copied), then
            # sorted in place: no second copy of the keys, whatever their number.
            merged.resize(held + len(last), refcheck=False)
            merged[held:] = last
            del last
            merged.sort()
            self._runs.append(merged)
