"""A bounded in-memory map of recently read vectors, in front of the store.

The store is built for bulk reads: one vectorized index search and one gather for thousands
of keys. A proxy answers many small requests instead, where the fixed cost of an index
query and a segment read dominates. Keeping the vectors it has just served lets a repeated
small request skip both. A key's vector never changes (the key covers every field that
changes the output), so what is kept here is always what the API returned; an entry removed
from disk by another process may still be served from memory until it ages out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from .store import Found

__all__ = ["MemoryTier"]

_ENTRY_OVERHEAD = 200  # bytes of dict slot, tuple and array header kept per vector


class MemoryTier:
    """Least-recently-used vectors and their token counts, at most ``max_bytes``; thread-safe.

    :param max_bytes: memory budget, counted as vector bytes plus a fixed overhead each.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[NDArray[np.float32], float]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get_all(self, keys: Sequence[bytes], dim: int | None) -> Found | None:
        """Every key's vector as a :class:`Found`, or ``None`` unless all are held (and of
        dimension ``dim``, when given): a partial answer would still need the store."""
        with self._lock:
            held = []
            for key in keys:
                entry = self._entries.get(key)
                if entry is None or (dim is not None and len(entry[0]) != dim):
                    return None
                self._entries.move_to_end(key)
                held.append(entry)
        if not held:
            return None
        vectors = np.stack([vector for vector, _ in held])
        tokens = np.fromiter((tokens for _, tokens in held), np.float64, len(held))
        return Found(np.ones(len(held), dtype=bool), vectors, tokens)

    def put(self, keys: Sequence[bytes], found: Found) -> None:
        """Keep the vectors ``found`` holds for ``keys`` (absent ones are skipped)."""
        rows = np.flatnonzero(found.present).tolist()
        with self._lock:
            for row in rows:
                key = keys[row]
                if key in self._entries:
                    self._entries.move_to_end(key)
                    continue
                vector = found.vectors[row].copy()  # not a view pinning the whole batch
                vector.flags.writeable = False
                self._entries[key] = (vector, float(found.tokens[row]))
                self._bytes += vector.nbytes + _ENTRY_OVERHEAD
            while self._bytes > self.max_bytes and self._entries:
                _, (vector, _) = self._entries.popitem(last=False)
                self._bytes -= vector.nbytes + _ENTRY_OVERHEAD

    def clear(self) -> None:
        """Forget every vector held."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
