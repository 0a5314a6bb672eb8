"""Every byte format the stores write, in one place.

* A vector is ``d`` little-endian float32 values, checked with the xxh3-64 of those bytes;
  it counts :func:`entry_bytes` against a size limit.
* A key is 16 bytes; the disk index holds it as two signed 64-bit integers (high half first),
  since SQLite integers are signed (:func:`split_keys`, :func:`join_keys`).
* A fingerprint record (what an entry's fingerprint id means, in ``index.db``, the legacy
  ``meta/`` and Redis) is the fingerprint's canonical ASCII JSON under its id, trusted only
  if it hashes to that id (:func:`fingerprint_record`).
* A ``.npy`` file (the index's snapshot, ``embedcache export``) starts with numpy's format
  1.0 header (:func:`npy_header`).
* A shared-tier (Redis) value is a 32-byte header (magic ``ECv1``, dimension, millitokens,
  fingerprint id, checksum) followed by the vector's bytes: the same bytes and the same
  checksum as a disk entry, so an entry moves between tiers without being re-encoded.
  A payload's value (:mod:`~embedcache.storage.payloads`) has a 40-byte header (magic
  ``ECp1``, kind code, width, rows, millitokens, fingerprint id, checksum) before its bytes;
  under the same names, so every walk of the namespace sees both, and a read of vectors
  takes a payload's value for a damaged one (never asked: its key means other settings).
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import xxhash
from numpy.typing import NDArray

from ..cache_keys import Fingerprint
from . import payloads
from .payloads import KINDS, Payload, describe

__all__ = [
    "check_entry",
    "decode_entry",
    "decode_into",
    "encode_entry",
    "entry_bytes",
    "fingerprint_record",
    "first_dim",
    "join_keys",
    "npy_header",
    "signed",
    "split_keys",
    "unsigned",
    "value_records",
    "value_size",
    "vector_checksum",
    "vector_checksums",
]

_HEADER = struct.Struct("<4sIqQQ")  # magic, dim, millitokens, fingerprint id, checksum
_MAGIC = b"ECv1"
# magic, kind code, width, rows, millitokens, fingerprint id, checksum
_PAYLOAD_HEADER = struct.Struct("<4sIIIqQQ")
_PAYLOAD_MAGIC = b"ECp1"

log = logging.getLogger("embedcache")


def split_keys(keys: Sequence[bytes]) -> NDArray[np.int64]:
    """16-byte keys as ``(n, 2)`` signed 64-bit integers (high half first)."""
    return np.frombuffer(b"".join(keys), dtype="<i8").reshape(-1, 2).astype(np.int64)


def join_keys(split: NDArray[np.int64]) -> list[bytes]:
    """``(n, 2)`` signed 64-bit integers (high half first) as 16-byte keys: the inverse of
    :func:`split_keys`, for the first two columns of index rows."""
    raw = np.ascontiguousarray(split[:, :2], dtype="<i8").tobytes()
    return [raw[i : i + 16] for i in range(0, len(raw), 16)]


def entry_bytes(dim: int, row: int = 0) -> int:
    """Bytes an entry counts for, against a store's size limit and in ``embedcache prune
    --max-size`` alike: a vector of ``dim`` dimensions 4 per dimension; a payload (``dim``
    and ``row`` as its index row holds them, :mod:`~embedcache.storage.payloads`) its own.

    Its index row and snapshot columns (a few hundred bytes more on disk, with SQLite's pages
    and log) are not counted: a limit bounds the vectors, which it can count exactly.
    """
    return payloads.entry_bytes(dim, row)


def signed(value: int) -> int:
    """An unsigned 64-bit value as the signed integer SQLite can hold."""
    return value - (1 << 64) if value >= 1 << 63 else value


def unsigned(value: int) -> int:
    return value & 0xFFFF_FFFF_FFFF_FFFF


def vector_checksum(vector: NDArray[np.float32]) -> int:
    """The xxh3-64 of a vector's bytes, as the ``checksum`` column holds it."""
    return signed(xxhash.xxh3_64_intdigest(np.ascontiguousarray(vector).data))


def vector_checksums(matrix: NDArray[np.float32]) -> NDArray[np.int64]:
    """:func:`vector_checksum` of each row of a C-contiguous ``(n, d)`` array: one call per
    row, no Python object but the digest."""
    digest: Any = xxhash.xxh3_64_intdigest  # takes any buffer; typeshed says bytes-like
    sums = np.fromiter(map(digest, matrix), dtype=np.uint64, count=len(matrix))
    return sums.view(np.int64)


def fingerprint_record(fp_id: int, canonical: str | bytes) -> Fingerprint | None:
    """The fingerprint a record of ``fp_id`` holds, or ``None`` when ``canonical`` is not
    ASCII JSON hashing to that id (a damaged or foreign record is never trusted: entries
    would be listed, exported or copied under settings they were not made with)."""
    try:
        text = canonical.decode("ascii") if isinstance(canonical, bytes) else canonical
        fp = Fingerprint.from_canonical(text)
    except (UnicodeDecodeError, ValueError):  # InvalidInputError is a ValueError
        return None
    return fp if fp.id == fp_id else None


def npy_header(shape: tuple[int, ...], descr: str, size: int | None = None) -> bytes:
    """The format 1.0 ``.npy`` header of a C-order array of ``shape`` and ``descr``, as
    numpy writes it; with ``size``, padded to exactly ``size`` bytes, so a file written
    before its row count is known can have its header rewritten in place.

    :raises ValueError: numpy's header is longer than ``size``.
    """
    out = io.BytesIO()
    fields = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(out, fields)
    header = out.getvalue()
    if size is None or len(header) == size:
        return header
    if len(header) > size:
        raise ValueError(f"a .npy header of shape {shape} takes {len(header)} bytes, not {size}")
    # Magic and version (8 bytes), the length (2), then the dict, padded with spaces and
    # ended by a newline: more spaces before the newline keep it numpy's own header.
    body = header[10:].rstrip().ljust(size - 10 - 1) + b"\n"
    return header[:8] + struct.pack("<H", len(body)) + body


def encode_entry(vector: Payload, tokens: float, fp_id: int) -> bytes:
    """The value stored for one vector, or one payload."""
    if not payloads.is_vector(vector):
        data = payloads.check_payload(vector)
        dim, rows = describe(data)
        header = _PAYLOAD_HEADER.pack(
            _PAYLOAD_MAGIC, (-dim) >> 32, data.shape[-1], rows, round(tokens * 1000), fp_id,
            unsigned(vector_checksum(data)),
        )  # fmt: skip
        return header + data.tobytes()
    data = np.ascontiguousarray(vector, dtype="<f4")
    checksum = unsigned(vector_checksum(data))
    header = _HEADER.pack(_MAGIC, len(data), round(tokens * 1000), fp_id, checksum)
    return header + data.tobytes()


def decode_entry(value: bytes | None, dim: int | None) -> tuple[NDArray[np.float32], float] | None:
    """The vector and tokens of a stored value, or ``None`` when it is absent, of another
    dimension, or damaged (see :func:`check_entry`)."""
    entry = check_entry(value) if value is not None else None
    if entry is None or isinstance(entry, str) or not payloads.is_vector(entry[0]):
        return None
    if dim is not None and len(entry[0]) != dim:
        return None
    return entry[0], entry[1]


def check_entry(value: bytes) -> tuple[Payload, float, int] | str:
    """The vector (or payload), tokens and fingerprint id of a stored value, or why it is
    damaged."""
    if value[:4] == _PAYLOAD_MAGIC:
        return _check_payload(value)
    if len(value) < _HEADER.size:
        return f"{len(value)} bytes, shorter than the {_HEADER.size}-byte header"
    magic, size, millitokens, fp_id, checksum = _HEADER.unpack_from(value)
    if magic != _MAGIC:
        return "not an embedcache entry (bad magic)"
    if len(value) != _HEADER.size + 4 * size:
        return f"{len(value) - _HEADER.size} bytes of vector, header says {size} dims"
    vector = np.frombuffer(value, dtype="<f4", offset=_HEADER.size)
    if unsigned(vector_checksum(vector)) != checksum:
        return "entry checksum mismatch"
    return vector.astype(np.float32, copy=False), millitokens / 1000.0, fp_id


def _check_payload(value: bytes) -> tuple[Payload, float, int] | str:
    """:func:`check_entry` of a payload's value."""
    if len(value) < _PAYLOAD_HEADER.size:
        return f"{len(value)} bytes, shorter than the {_PAYLOAD_HEADER.size}-byte header"
    _, code, width, rows, millitokens, fp_id, checksum = _PAYLOAD_HEADER.unpack_from(value)
    if code not in KINDS:
        return f"unknown entry kind {code}"
    dtype, ndim, _ = KINDS[code]
    shape = (width,) if ndim == 1 else (rows, width)
    size = int(np.prod(shape)) * dtype.itemsize
    if len(value) != _PAYLOAD_HEADER.size + size:
        return f"{len(value) - _PAYLOAD_HEADER.size} bytes of payload, header says {size}"
    data = np.frombuffer(value, dtype=dtype, offset=_PAYLOAD_HEADER.size).reshape(shape)
    if unsigned(vector_checksum(data)) != checksum:
        return "entry checksum mismatch"
    return data.astype(dtype.newbyteorder("="), copy=False), millitokens / 1000.0, fp_id


def first_dim(values: Sequence[bytes | None]) -> int | None:
    """The dimension of the first well-formed value, for reads that did not say."""
    for value in values:
        entry = decode_entry(value, None)
        if entry is not None:
            return len(entry[0])
    return None


def _value_layout(dim: int) -> np.dtype[Any]:
    """The layout of a stored value of dimension ``dim``, as one numpy record."""
    return np.dtype(
        [("magic", "S4"), ("dim", "<u4"), ("millitokens", "<i8"), ("fp", "<u8"),
         ("checksum", "<u8"), ("vector", "<f4", (dim,))]
    )  # fmt: skip


def value_size(dim: int) -> int:
    """Bytes of a stored value of dimension ``dim``."""
    return _HEADER.size + 4 * dim


def value_records(
    values: Sequence[bytes | None], dim: int, scratch: NDArray[Any] | None = None
) -> tuple[NDArray[Any], NDArray[np.bool_]]:
    """``values`` as records of :func:`_value_layout` (fields ``vector``, ``millitokens``,
    ``checksum``...), and which of them are intact values of dimension ``dim``.

    No Python object per value: numpy copies them all into one buffer (``scratch`` when it
    has room: a buffer reused from one round trip to the next costs no fresh pages, which
    cost more than the copy on some VMs), and a checksum is one call per row of it. A value
    that is absent, of another length or damaged is marked not intact.
    """
    count, size = len(values), value_size(dim)
    if None in values:
        values = [b"" if value is None else value for value in values]
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=count)  # type: ignore[arg-type]
    fits = scratch is not None and scratch.dtype.itemsize == size and len(scratch) >= count
    raw = cast("NDArray[Any]", scratch)[:count] if fits else np.empty(count, dtype=f"S{size}")
    # A longer value is cut and a shorter one padded with zeros here: ``lengths`` tells them.
    raw[:] = values
    records = raw.view(_value_layout(dim))
    sums = np.fromiter(
        map(xxhash.xxh3_64_intdigest, records["vector"]), dtype=np.uint64, count=count
    )
    ok = (
        (lengths == size) & (records["magic"] == _MAGIC) & (records["dim"] == dim)
        & (sums == records["checksum"])
    )  # fmt: skip
    return records, ok


def decode_into(
    values: Sequence[bytes | None],
    dim: int,
    start: int,
    out: tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.float64]],
    scratch: NDArray[Any] | None = None,
) -> NDArray[np.bool_]:
    """Check and copy ``values`` into rows ``start...`` of ``out`` (vectors, present,
    tokens) with :func:`value_records`; returns which were intact (damaged ones, logged,
    stay absent)."""
    vectors, present, tokens = out
    records, ok = value_records(values, dim, scratch)
    damaged = len(values) - int(np.count_nonzero(ok)) - values.count(None)
    if damaged:
        log.warning("ignoring %d damaged shared cache entries", damaged)
    if ok.all():  # the usual case: one contiguous copy
        at: slice | NDArray[np.intp] = slice(start, start + len(values))
        vectors[at] = records["vector"]
        tokens[at] = records["millitokens"] / 1000.0
    else:
        at = start + np.flatnonzero(ok)
        vectors[at] = records["vector"][ok]
        tokens[at] = records["millitokens"][ok] / 1000.0
    present[at] = True
    return ok
