"""The kinds of entry a store holds besides one float32 vector, and how an index row
describes them.

Today's entry, a *vector*, is ``d`` float32 values in a row of a fixed-size segment
(:mod:`~embedcache.storage.segments`); its index row's ``dim`` column is ``d`` (positive).
Two more kinds of *payload* are stored exactly (dtype, shape and bytes) in *heap* segments,
files of appended bytes:

* **ragged**: a 2-D float32 array of ``n`` rows of one width (a multi-vector answer: one
  128-d row per token, ``n`` from 1 to thousands);
* **bytes**: a 1-D or 2-D int8 or uint8 array (packed bits as the API returns them for the
  ``binary`` and ``ubinary`` embedding types: ``dimensions / 8`` values a vector, one row per
  token for a multi-vector answer).

The index row of a payload, with no column added (so the snapshot and today's read path are
unchanged):

* ``seg``: a heap segment (listed in ``segments`` with :data:`HEAP_DIM` as its dimension
  and its bytes used as its ``rows``);
* ``row``: ``offset << 24 | n``: the payload's byte offset in the heap and its row count
  (a 1-D payload counts one row);
* ``dim``: ``-(code << 32 | width)``, negative, so no read of vectors of a dimension ever
  matches a payload; the same for every entry of one kind and width, so the per-settings
  totals (``groups``) stay a few rows however the row counts vary;
* ``checksum``: the xxh3-64 of the payload's bytes, as for a vector.

Its bytes on disk, against a size limit and in ``stats``, are ``n * width * itemsize``
(:func:`payload_bytes`; :data:`SQL_ENTRY_BYTES` says the same to SQLite's triggers).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError

__all__ = [
    "HEAP_DIM",
    "KINDS",
    "PAYLOAD_VALUES",
    "SQL_ENTRY_BYTES",
    "Payload",
    "array_kind",
    "check_payload",
    "describe",
    "dimensions",
    "entry_bytes",
    "is_vector",
    "kind_name",
    "kind_of",
    "payload_bytes",
    "relocated",
    "row_value",
    "shape_of",
]

#: An entry's data as the stores take and give it: a 1-D float32 vector, or a payload.
Payload = NDArray[Any]

#: The ``dim`` of a heap segment in the ``segments`` table.
HEAP_DIM = -1
#: The dimension a shared tier's read of payloads tells its ``served`` callback: its values
#: are of many kinds and sizes (the write-back decodes them one by one).
PAYLOAD_VALUES = 0
_ROW_BITS = 24
_ROWS_MASK = (1 << _ROW_BITS) - 1
_WIDTH_MASK = (1 << 32) - 1

#: Kind code → (dtype, ndim, name). A code is stored in every payload's index row and shared
#: tier value: never renumber one.
KINDS: dict[int, tuple[np.dtype[Any], int, str]] = {
    1: (np.dtype("<f4"), 2, "ragged"),
    2: (np.dtype("u1"), 1, "bytes"),
    3: (np.dtype("u1"), 2, "bytes"),
    4: (np.dtype("i1"), 1, "bytes"),
    5: (np.dtype("i1"), 2, "bytes"),
}
_CODES = {(dtype.char, ndim): code for code, (dtype, ndim, _) in KINDS.items()}

#: SQL for :func:`entry_bytes` of the row named ``{r}`` (``NEW``, ``OLD``, a table alias).
SQL_ENTRY_BYTES = (
    "(CASE WHEN {r}.dim >= 0 THEN 4 * {r}.dim ELSE ({r}.row & 16777215) * "
    "((-{r}.dim) & 4294967295) * (CASE ((-{r}.dim) >> 32) WHEN 1 THEN 4 ELSE 1 END) END)"
)


def is_vector(array: Payload) -> bool:
    """Whether ``array`` is today's kind of entry: one float32 vector."""
    return array.ndim == 1 and array.dtype == np.float32


def kind_of(array: Payload) -> int:
    """The kind code of a payload.

    :raises InvalidInputError: not a 2-D float32, or 1-D/2-D int8/uint8, array with at
        least one value, or too large to describe (``2**24`` rows, ``2**32`` a row).
    """
    code = _CODES.get((array.dtype.char, array.ndim))
    if code is None:
        raise InvalidInputError(
            f"cannot store a {array.ndim}-D {array.dtype} array: an entry is a float32 vector, "
            "a 2-D float32 array (multi-vector), or a 1-D or 2-D int8/uint8 array (binary)"
        )
    rows, width = (1, array.shape[0]) if array.ndim == 1 else array.shape
    if not array.size or rows > _ROWS_MASK or width > _WIDTH_MASK:
        raise InvalidInputError(f"cannot store an array of shape {array.shape}")
    return code


def describe(array: Payload) -> tuple[int, int]:
    """``(dim column, row count)`` of a payload: the row column adds its heap offset."""
    code = kind_of(array)
    rows, width = (1, array.shape[0]) if array.ndim == 1 else array.shape
    return -(code << 32 | int(width)), int(rows)


def row_value(offset: int, rows: int) -> int:
    """The ``row`` column of a payload stored at ``offset`` of its heap."""
    return offset << _ROW_BITS | rows


def relocated(row: int, offset: int) -> int:
    """The ``row`` column of a payload's index row once moved to ``offset`` (of another
    heap: compaction)."""
    return row_value(offset, row & _ROWS_MASK)


def shape_of(dim: int, row: int) -> tuple[np.dtype[Any], tuple[int, ...], int, int]:
    """``(dtype, shape, offset, nbytes)`` of the payload an index row describes
    (``dim`` negative).

    :raises ValueError: an unknown kind code (a newer version's entry, or damage).
    """
    code, width, rows = (-dim) >> 32, (-dim) & _WIDTH_MASK, row & _ROWS_MASK
    if code not in KINDS:
        raise ValueError(f"unknown entry kind {code}")
    dtype, ndim, _ = KINDS[code]
    shape = (width,) if ndim == 1 else (rows, width)
    return dtype, shape, row >> _ROW_BITS, rows * width * dtype.itemsize


def entry_bytes(dim: int, row: int = 0) -> int:
    """Bytes an entry counts for against a size limit, in ``prune --max-size`` and in
    ``stats``: a vector's float32 values (4 per dimension), a payload's own bytes."""
    return 4 * dim if dim >= 0 else shape_of(dim, row)[3]


def payload_bytes(dims: NDArray[np.int64], rows: NDArray[np.int64]) -> int:
    """:func:`entry_bytes` of many index rows, summed (vectorized)."""
    vectors = dims >= 0
    total = 4 * int(dims[vectors].sum())
    if not vectors.all():
        code, width = (-dims[~vectors]) >> 32, (-dims[~vectors]) & _WIDTH_MASK
        size = np.where(code == 1, 4, 1)
        total += int(((rows[~vectors] & _ROWS_MASK) * width * size).sum())
    return total


def kind_name(dim: int) -> str:
    """What an index row's entry is: ``"vector"``, ``"ragged"`` or ``"bytes"``."""
    if dim >= 0:
        return "vector"
    entry = KINDS.get((-dim) >> 32)
    return "?" if entry is None else entry[2]


def dimensions(dim: int) -> int:
    """The dimensions an entry answers for, as the request's ``dimensions`` says them: a
    vector's length, a ragged entry's row width, 8 bits a byte of a bytes entry's row."""
    if dim >= 0:
        return dim
    width = (-dim) & _WIDTH_MASK
    return width if (-dim) >> 32 == 1 else 8 * width


def array_kind(array: Payload) -> tuple[str, int]:
    """``(kind, dimensions)`` of an entry's array, as :func:`kind_name` and
    :func:`dimensions` say them of its index row."""
    if is_vector(array):
        return "vector", len(array)
    dim = describe(array)[0]
    return kind_name(dim), dimensions(dim)


def check_payload(array: Payload) -> Payload:
    """``array`` as stored: C-contiguous, little-endian (:func:`kind_of` raises for one
    that cannot be)."""
    kind_of(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
