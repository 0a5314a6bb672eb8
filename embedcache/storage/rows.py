"""What an index entry holds, and how keys and checksums are encoded in it.

An entry is one row of the ``entries`` table of ``index.db``; the directory layout as a whole
is described in :mod:`embedcache.storage.store`. Rows are read as int64 arrays whose columns are
indexed by :data:`K`, :data:`LO`, ... in the order of :data:`COLUMNS`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import xxhash
from numpy.typing import NDArray

__all__ = [
    "CHECKSUM",
    "COLUMNS",
    "CREATED_US",
    "DIM",
    "FP",
    "LO",
    "MILLITOKENS",
    "READ_COLUMNS",
    "ROW",
    "SEG",
    "K",
    "join_key",
    "signed",
    "split_keys",
    "unsigned",
    "vector_checksum",
    "verify",
]

# Every column is an integer, so fetched rows become one int64 array in a single call.
# The index's queries interpolate only these constants and "?" placeholders (hence its
# S608 waivers).
COLUMNS = "k, lo, seg, row, dim, millitokens, checksum, created_us, fp"
K, LO, SEG, ROW, DIM, MILLITOKENS, CHECKSUM, CREATED_US, FP = range(9)
# A warm read needs neither when nor under which settings an entry was stored: fewer
# columns make fewer Python objects per row.
READ_COLUMNS = "k, lo, seg, row, dim, millitokens, checksum"

log = logging.getLogger("embedcache")


def split_keys(keys: Sequence[bytes]) -> NDArray[np.int64]:
    """16-byte keys as ``(n, 2)`` signed 64-bit integers (high half first)."""
    return np.frombuffer(b"".join(keys), dtype="<i8").reshape(-1, 2).astype(np.int64)


def join_key(hi: int, lo: int) -> bytes:
    return np.array([hi, lo], dtype="<i8").tobytes()


def signed(value: int) -> int:
    """An unsigned 64-bit value as the signed integer SQLite can hold."""
    return value - (1 << 64) if value >= 1 << 63 else value


def unsigned(value: int) -> int:
    return value & 0xFFFF_FFFF_FFFF_FFFF


def vector_checksum(vector: NDArray[np.float32]) -> int:
    """The xxh3-64 of a vector's bytes, as the ``checksum`` column holds it."""
    return signed(xxhash.xxh3_64_intdigest(np.ascontiguousarray(vector).data))


def verify(
    matched: NDArray[np.int64], out: NDArray[np.float32], present: NDArray[np.bool_]
) -> list[int]:
    """Mark entries whose bytes fail their checksum as absent; returns their positions.

    :param matched: the index rows (at least :data:`READ_COLUMNS`) of ``out``'s rows.
    :param out: the vectors read; damaged rows are zeroed.
    :param present: which rows to check; damaged rows are set to ``False``.
    """
    digest: Any = xxhash.xxh3_64_intdigest  # takes any buffer; typeshed says bytes-like
    where = np.flatnonzero(present)
    expected = matched[where, CHECKSUM].view(np.uint64).tolist()
    rows = out if len(where) == len(out) else out[where]
    damaged = [
        i
        for i, row, checksum in zip(where.tolist(), rows, expected, strict=True)
        if digest(row) != checksum
    ]
    if damaged:
        log.warning("ignoring %d damaged cache entries (checksum mismatch)", len(damaged))
        present[damaged] = False
        out[damaged] = 0
    return damaged
