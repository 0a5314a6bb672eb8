"""Entries read one by one: a :class:`~embedcache.storage.entries.Record` (its vector read
and checked) or a :class:`~embedcache.storage.entries.Stored` (its index row alone) per
index row, for ``get``, ``verify``, ``export``, ``prune`` and ``sync``
(:meth:`Store.get_many <embedcache.storage.store.Store.get_many>`,
:meth:`~embedcache.storage.store.Store.read_payloads`,
:meth:`~embedcache.storage.store.Store.records`,
:meth:`~embedcache.storage.store.Store.listing`).

The warm path reads otherwise: a batch at a time into one array
(:meth:`~embedcache.storage.store.Store.read_many`), with no object per entry.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from . import payloads
from .entries import Record, Stored
from .formats import join_keys, unsigned, vector_checksum
from .payloads import Payload
from .rows import CHECKSUM, CREATED_US, DIM, FP, LO, MILLITOKENS, ROW, SEG, K
from .segments import Segments

__all__ = ["page_records", "page_stored", "read_payload", "read_record"]


def page_records(segments: Segments, rows: NDArray[np.int64]) -> list[tuple[bytes, Record | str]]:
    """The entries of a page of index rows (all columns) as ``(key, record)``, or ``(key,
    reason)`` for one that cannot be read or fails its checksum."""
    # Python ints and the keys' bytes of the whole page at once: per-row numpy scalars
    # cost more than reading and checking the vector.
    listed = rows.tolist()
    records: list[Record | str] = [""] * len(rows)
    # One pass over each segment's rows of the page, not one file open per entry.
    for seg in np.unique(rows[:, SEG]):
        mine = np.flatnonzero(rows[:, SEG] == seg)
        if rows[mine[0], DIM] < 0:  # a heap: payloads, read and checked one by one
            for i in mine.tolist():
                records[i] = read_record(segments, rows[i])
            continue
        try:
            vectors = segments.read_rows(int(seg), int(rows[mine[0], DIM]), rows[mine, ROW])
        except (OSError, ValueError):
            for i in mine.tolist():  # row by row, to say which rows cannot be read
                records[i] = read_record(segments, rows[i])
            continue
        vectors.flags.writeable = False  # its rows, the records' vectors, with it
        for i, vector in zip(mine.tolist(), vectors, strict=True):
            records[i] = _checked(listed[i], vector)
    return list(zip(join_keys(rows[:, [K, LO]]), records, strict=True))


def page_stored(rows: NDArray[np.int64]) -> list[tuple[bytes, Stored]]:
    """The entries of a page of index rows as ``(key, stored)``: no vector read."""
    return [
        (key, Stored(row[DIM], row[MILLITOKENS] / 1000.0, row[CREATED_US] / 1e6,
                     unsigned(row[FP])) if row[DIM] >= 0 else _stored_payload(row))
        for key, row in zip(join_keys(rows[:, [K, LO]]), rows.tolist(), strict=True)
    ]  # fmt: skip


def _stored_payload(row: list[int]) -> Stored:
    """The :class:`Stored` of a payload's index row."""
    dim = row[DIM]
    return Stored(
        payloads.dimensions(dim), row[MILLITOKENS] / 1000.0, row[CREATED_US] / 1e6,
        unsigned(row[FP]), payloads.kind_name(dim), payloads.entry_bytes(dim, row[ROW]),
    )  # fmt: skip


def read_record(segments: Segments, row: NDArray[np.int64]) -> Record | str:
    """The entry an index row describes, or why it cannot be read."""
    seg, number, dim = int(row[SEG]), int(row[ROW]), int(row[DIM])
    try:
        if dim < 0:
            vector = read_payload(segments, seg, dim, number)
        else:
            vector = segments.read_rows(seg, dim, np.array([number]))[0]
    except (OSError, ValueError) as exc:
        return f"vector unreadable ({type(exc).__name__}: {exc})"
    return _checked(row, vector)


def read_payload(segments: Segments, seg: int, dim: int, row: int) -> Payload:
    """The payload an index row's ``seg``, ``dim`` and ``row`` point at, unchecked (a
    writable array of its own).

    :raises OSError, ValueError: it cannot be read (or its kind is unknown).
    """
    dtype, shape, offset, nbytes = payloads.shape_of(dim, row)
    (data,) = segments.read_heap(seg, [(offset, nbytes)])
    return np.frombuffer(bytearray(data), dtype=dtype).reshape(shape)


def _checked(row: NDArray[np.int64] | list[int], vector: Payload) -> Record | str:
    """The record of an index row and the vector read for it, if its checksum holds."""
    if vector_checksum(vector) != row[CHECKSUM]:
        return "entry checksum mismatch"
    vector.flags.writeable = False
    return Record(vector, row[MILLITOKENS] / 1000.0, row[CREATED_US] / 1e6, unsigned(int(row[FP])))
