"""A compact set of cache keys, to count distinct entries over a corpus read in windows.

A Python ``set`` of 16-byte keys costs about 90 bytes per key; this one costs 16 (keys are
xxh3-128 digests, kept whole, so the count is exact, not an estimate). Keys are spread over
256 buckets by their first byte (digests spread evenly), and each bucket keeps its keys in
sorted numpy ``S16`` runs, merged like a log-structured tree: a run is merged with the one
before it once that one is no more than twice its size, so a bucket has O(log n) runs, a
membership test is one ``np.searchsorted`` per run, and every key is copied O(log n) times.

Budget: 16 bytes per distinct key held (32 MB for 2,000,000 distinct texts), and while two
runs of a bucket merge, the newer one's keys a second time: at most 1/256 of the set more.
(With one bucket, the last merges held a third of the set twice, and a realloc that could
not grow a run in place copied all of it: the peak of a 2M-line dry run was 41 MB, not 32.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["KEY_BYTES", "DistinctKeys"]

#: Bytes of a cache key (:func:`embedcache.cache_keys.text_keys`).
KEY_BYTES = 16
_BUCKETS = 256  # one per value of a key's first byte


class DistinctKeys:
    """Cache keys seen so far; :meth:`add` says which of a batch were new."""

    def __init__(self) -> None:
        self._buckets: list[list[NDArray[np.bytes_]]] = [[] for _ in range(_BUCKETS)]
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes the keys held take (16 each)."""
        return self._count * KEY_BYTES

    def add(self, keys: Sequence[bytes]) -> NDArray[np.bool_]:
        """Add ``keys`` (distinct among themselves, 16 bytes each); returns for each key
        whether it was new."""
        if not keys:
            return np.zeros(0, dtype=bool)
        raw = b"".join(keys)
        batch = np.frombuffer(raw, dtype=f"S{KEY_BYTES}")
        if len(batch) != len(keys) or len(raw) != KEY_BYTES * len(keys):
            raise ValueError(f"cache keys are {KEY_BYTES} bytes each")
        bucket = np.frombuffer(raw, dtype=np.uint8)[::KEY_BYTES]
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(_BUCKETS + 1)).tolist()
        new = np.zeros(len(batch), dtype=bool)
        for b in np.unique(bucket).tolist():
            mine = order[bounds[b] : bounds[b + 1]]
            new[mine] = self._add(self._buckets[b], batch[mine])
        self._count += int(new.sum())
        return new

    @staticmethod
    def _add(runs: list[NDArray[np.bytes_]], batch: NDArray[np.bytes_]) -> NDArray[np.bool_]:
        """Add ``batch`` to one bucket's ``runs``; which of its keys were new."""
        new = np.ones(len(batch), dtype=bool)
        for run in runs:
            at = np.minimum(np.searchsorted(run, batch), len(run) - 1)
            new &= run[at] != batch
        if new.any():
            runs.append(np.sort(batch[new]))
            while len(runs) > 1 and len(runs[-2]) <= 2 * len(runs[-1]):
                last = runs.pop()
                merged = runs.pop()
                held = len(merged)
                # Grown where it lies when it can be, then sorted in place: the bucket's
                # keys once, and the newer run's a second time until it is let go.
                merged.resize(held + len(last), refcheck=False)
                merged[held:] = last
                del last
                merged.sort()
                runs.append(merged)
        return new
