"""Payloads on disk: a put's payloads appended to a heap segment, and read back by key.

A payload (a ragged float32 array, packed bits: :mod:`~embedcache.storage.payloads`) is its
bytes appended to a heap file (:meth:`~embedcache.storage.segments.Segments.write_heap`),
its index row pointing at them; the layout is described in :mod:`embedcache.storage.store`.
:class:`~embedcache.storage.store.Store` calls these inside its own transactions.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Sequence

import numpy as np
import xxhash
from numpy.typing import NDArray

from . import payloads
from .formats import signed, split_keys, vector_checksum
from .index import Index
from .payloads import HEAP_DIM, Payload, check_payload, describe, row_value
from .records import read_payload
from .rows import CHECKSUM, DIM, MILLITOKENS, ROW, SEG
from .segments import Segments, heap_fits

__all__ = ["append_heap", "put_payloads", "read_payloads"]

log = logging.getLogger("embedcache")


def append_heap(
    index: Index, segments: Segments, data: bytes, avoid: Container[int] = ()
) -> tuple[int, int]:
    """Write ``data`` at the end of the open heap (in a write transaction), or of a new one
    if it would outgrow its cap or is among ``avoid`` (being compacted away); returns the
    heap and the offset written at."""
    last = index.last_segment(HEAP_DIM)
    if last is None or last[0] in avoid or (last[1] and not heap_fits(last[1] + len(data))):
        seg, start = index.add_segment(HEAP_DIM), 0
    else:
        seg, start = last
    segments.write_heap(seg, start, data)
    index.set_segment_rows(seg, start + len(data))
    return seg, start


def put_payloads(
    index: Index,
    segments: Segments,
    entries: Sequence[tuple[bytes, Payload, float]],
    created_us: int,
    fp_id: int,
) -> int:
    """(In a write transaction.) Store ``(key, payload, tokens)`` entries: those of one kind
    and width in one append to the heap, then their index rows. Returns how many."""
    by_dim: dict[int, list[tuple[bytes, Payload, float, int]]] = {}
    for key, array, tokens in entries:
        data = check_payload(array)
        dim, count = describe(data)
        by_dim.setdefault(dim, []).append((key, data, tokens, count))
    for dim, group in by_dim.items():
        sizes = np.array([data.nbytes for _, data, _, _ in group], dtype=np.int64)
        seg, start = append_heap(
            index, segments, b"".join(data.tobytes() for _, data, _, _ in group)
        )
        offsets = start + np.cumsum(sizes) - sizes
        places = np.array(
            [
                row_value(int(at), n)
                for at, (_, _, _, n) in zip(offsets.tolist(), group, strict=True)
            ],
            dtype=np.int64,
        )
        millitokens = np.rint(np.array([t for _, _, t, _ in group], dtype=np.float64) * 1000)
        checksums = np.array([vector_checksum(data) for _, data, _, _ in group], dtype=np.int64)
        index.insert(
            split_keys([key for key, _, _, _ in group]), seg, places, dim,
            millitokens.astype(np.int64), checksums, created_us, fp_id,
        )  # fmt: skip
    return len(entries)


def read_payloads(
    index: Index, segments: Segments, split: NDArray[np.int64]
) -> tuple[list[Payload | None], NDArray[np.float64]]:
    """Each key's entry, of whatever kind (a vector too), read and checked, and its tokens:
    ``None`` (and 0) when absent or damaged."""
    out: list[Payload | None] = [None] * len(split)
    tokens = np.zeros(len(split), dtype=np.float64)
    matched, present, from_snapshot = index.find(split)
    damaged = _read(segments, matched, np.flatnonzero(present), out, tokens)
    if damaged and from_snapshot:
        # The snapshot may predate a refetch of these entries: ask the index itself.
        again, found, _ = index.find(split[damaged], use_snapshot=False)
        matched[damaged] = again
        damaged = _read(segments, matched, np.asarray(damaged)[found], out, tokens)
    if damaged:  # read as missing: fetched again
        log.warning("ignoring %d damaged cache entries (checksum mismatch)", len(damaged))
    return out, tokens


def _read(
    segments: Segments,
    matched: NDArray[np.int64],
    where: NDArray[np.intp],
    out: list[Payload | None],
    tokens: NDArray[np.float64],
) -> list[int]:
    """Read and check the entries of rows ``where`` of ``matched`` into ``out`` and
    ``tokens``; returns the positions that could not be read or failed their checksum."""
    damaged: list[int] = []
    # Payloads are read a heap at a time (one call for all its spans) and their fields
    # taken as Python ints once: per entry, numpy scalars and a call per read cost more
    # than the read itself when the payload is small (a rerank score's 8 bytes).
    by_heap: dict[int, list[tuple[int, list[int]]]] = {}
    for i, row in zip(where.tolist(), matched[where].tolist(), strict=True):
        if row[DIM] < 0:
            by_heap.setdefault(row[SEG], []).append((i, row))
        elif not _read_one(segments, i, row, out, tokens):
            damaged.append(i)
    for seg, group in by_heap.items():
        try:
            shapes = [payloads.shape_of(row[DIM], row[ROW]) for _, row in group]
            datas = segments.read_heap(seg, [(offset, size) for _, _, offset, size in shapes])
        except (OSError, ValueError):
            # One unreadable span (a heap cut short) must not fail the rest: entry by entry.
            damaged += [i for i, row in group if not _read_one(segments, i, row, out, tokens)]
            continue
        for (i, row), (dtype, shape, _, _), data in zip(group, shapes, datas, strict=True):
            # The checksum is over the payload's bytes, which are the heap's bytes as read.
            if signed(xxhash.xxh3_64_intdigest(data)) != row[CHECKSUM]:
                damaged.append(i)
                continue
            out[i] = np.frombuffer(bytearray(data), dtype=dtype).reshape(shape)
            tokens[i] = row[MILLITOKENS] / 1000.0
    return damaged


def _read_one(
    segments: Segments,
    i: int,
    row: list[int],
    out: list[Payload | None],
    tokens: NDArray[np.float64],
) -> bool:
    """Read and check one entry (a vector, or a payload) into ``out[i]`` and ``tokens[i]``;
    ``False`` when it cannot be read or fails its checksum."""
    seg, number, dim = row[SEG], row[ROW], row[DIM]
    try:
        if dim < 0:
            array = read_payload(segments, seg, dim, number)
        else:
            array = segments.read_rows(seg, dim, np.array([number]))[0]
    except (OSError, ValueError):
        return False
    if vector_checksum(array) != row[CHECKSUM]:
        return False
    out[i] = array
    tokens[i] = row[MILLITOKENS] / 1000.0
    return True
