"""The columns of an index row, and the check of the vectors read for a batch of rows.

A row of the ``entries`` table of ``index.db`` describes one entry; the directory layout as a
whole is described in :mod:`embedcache.storage.store`, the byte encodings of keys and
checksums in :mod:`embedcache.storage.formats`. Rows are read as int64 arrays whose columns
are indexed by :data:`K`, :data:`LO`, ... in the order of :data:`COLUMNS`.
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray

from .formats import vector_checksums

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


def verify(
    matched: NDArray[np.int64], out: NDArray[np.float32], present: NDArray[np.bool_]
) -> list[int]:
    """Mark entries whose bytes fail their checksum as absent; returns their positions.

    :param matched: the index rows (at least :data:`READ_COLUMNS`) of ``out``'s rows.
    :param out: the vectors read; damaged rows are zeroed.
    :param present: which rows to check; damaged rows are set to ``False``.
    """
    where = np.flatnonzero(present)
    rows = out if len(where) == len(out) else out[where]
    sums = vector_checksums(np.ascontiguousarray(rows))
    damaged: list[int] = where[sums != matched[where, CHECKSUM]].tolist()
    if damaged:
        log.warning("ignoring %d damaged cache entries (checksum mismatch)", len(damaged))
        present[damaged] = False
        out[damaged] = 0
    return damaged
