"""Maintenance that shares the cache: deleting many entries and compacting segment files in
short write transactions, so fills of other threads and processes never wait long.

Each job runs as a series of write transactions, each sized to take about
:data:`TARGET_SECONDS` (:class:`Budget`: the size follows the rate the last ones went at, so
a slow disk or a large index gets smaller ones) and bounded in rows, so in memory too. Between
two of them the job pauses (:func:`paced`) so that a writer waiting for the lock gets it
first. Nothing of the whole index is held in memory: keys and rows come a page at a time.
The snapshot readers use is never set aside: deleted keys are listed for them
(:mod:`embedcache.storage.snapshot`), and a new snapshot is taken outside the write lock.
:class:`~embedcache.storage.store.Store` calls these; the directory layout is described there.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from . import heaps, payloads
from .formats import split_keys
from .index import Index
from .payloads import HEAP_DIM
from .segments import Segments

__all__ = [
    "COMPACT_BYTES",
    "LOCK_PAUSE_SECONDS",
    "TARGET_SECONDS",
    "Budget",
    "compact",
    "delete_pages",
    "paced",
]

_T = TypeVar("_T")

#: How long one maintenance transaction should hold the write lock.
TARGET_SECONDS = 0.2
#: The pause between two of those transactions. SQLite wakes a writer that waits for the
#: lock at most every 100 ms, and takes no turns: a job that begins its next transaction at
#: once would take the lock back each time, and a fill waiting on it could wait out its busy
#: timeout (and fail to commit a batch it paid for). A longer pause lets it in first.
LOCK_PAUSE_SECONDS = 0.11
#: Bytes of vectors a compaction transaction moves at most (what it holds in memory).
COMPACT_BYTES = 16 << 20
_FIRST = 1024  # rows of a job's first transaction, before it knows the rate
# Payloads a compaction transaction moves at most: a multi-vector entry of a few hundred
# tokens is a few hundred KB (and one of thousands, megabytes).
_HEAP_ROWS = 64
_FEWEST = 32

#: ``append(dim, matrix, avoid)``: write rows at the end of a segment not in ``avoid``
#: (in a write transaction); returns the segment and the first row written.
Append = Callable[[int, NDArray[np.float32], Container[int]], tuple[int, int]]


class Budget:
    """How many rows the next transaction of a job takes: about :data:`TARGET_SECONDS` at
    the rate the last full one went, at most doubling each time, within ``[32, most]``."""

    def __init__(self, most: int) -> None:
        self.most = max(1, most)
        self.size = min(self.most, _FIRST)

    def took(self, done: int, seconds: float) -> None:
        """Record that a transaction did ``done`` rows in ``seconds``."""
        if done < self.size:
            return  # the last, short one: it says nothing of the rate
        fitting = done * TARGET_SECONDS / max(seconds, 1e-4)
        self.size = int(min(self.most, self.size * 2, max(_FEWEST, fitting)))


def paced(steps: Iterable[_T]) -> Iterator[_T]:
    """``steps``, with :data:`LOCK_PAUSE_SECONDS` between two of them: a maintenance job
    runs each step in a write transaction of its own, and waiting writers get in between."""
    for count, step in enumerate(steps):
        if count:
            time.sleep(LOCK_PAUSE_SECONDS)
        yield step


def _slices(pages: Iterable[Sequence[bytes]], budget: Budget) -> Iterator[Sequence[bytes]]:
    """The keys of ``pages`` in slices of the budget's size at the time each is drawn."""
    for page in pages:
        start = 0
        while start < len(page):
            size = budget.size  # as it is now: the budget changes while the slice is used
            yield page[start : start + size]
            start += size


def delete_pages(index: Index, pages: Iterable[Sequence[bytes]], most: int) -> int:
    """Delete the keys of ``pages`` (drawn lazily) at most ``most`` per transaction; returns
    how many existed. Each transaction counts in ``removals`` and lists its keys for the
    snapshot's readers; a new snapshot is taken (outside the lock) once they come to enough."""
    budget = Budget(most)
    removed = 0
    due = False
    for keys in paced(_slices(pages, budget)):
        start = time.perf_counter()
        with index.write():
            gone = index.delete(split_keys(list(keys)))
            due = index.note_changes(0, removed=gone)
        budget.took(len(keys), time.perf_counter() - start)
        removed += gone
    if due:
        index.refresh_snapshot()
    return removed


def compact(
    index: Index, segments: Segments, append: Append, min_dead_fraction: float, most: int
) -> int:
    """Copy the live rows of segments at least ``min_dead_fraction`` dead into new segments,
    at most ``most`` rows per transaction, and delete the old files. Returns the bytes freed.

    Between transactions every entry points at a complete copy (the old files stay until the
    end), so readers and writers go on. Rows are taken in key order over all the segments
    being emptied (:func:`_rows_after`), then whatever others wrote to them
    meanwhile; a new snapshot is taken before the old segments are dropped, in the
    transaction that finds none of their rows left, and their files deleted after it.
    """
    doomed: dict[int, int] = {}  # segment -> dimension (HEAP_DIM: a heap)
    freed = 0
    for seg, dim, held, live in index.segment_usage():
        if held and (held - live) / held >= min_dead_fraction:
            doomed[seg] = dim
            # A heap's held and live are bytes already.
            freed += (held - live) * (dim * 4 if dim != HEAP_DIM else 1)
    if not doomed:
        return 0
    widest = max([*doomed.values(), 1])
    most = min(most, COMPACT_BYTES // (4 * widest))
    if HEAP_DIM in doomed.values():  # payloads run to megabytes: hold few at a time
        most = min(most, _HEAP_ROWS)
    budget = Budget(most)
    segs, after, walked = list(doomed), -(1 << 63), False
    rows: list[tuple[int, ...]]
    for _ in paced(itertools.count()):
        start = time.perf_counter()
        with index.write():
            if not walked:
                rows = _rows_after(index, segs, after, budget.size)
                walked = len(rows) < budget.size
                if rows:
                    after = int(rows[-1][0])
            else:  # rows others wrote to these segments meanwhile, behind the walk
                rows = _stragglers(index, segs, budget.size)
            _move(index, segments, append, doomed, rows)
        budget.took(len(rows), time.perf_counter() - start)
        if walked and not rows:
            break
    for _ in paced(itertools.count()):
        # Readers' snapshot lists the old places: a new one before the old files go.
        for _attempt in range(3):
            if index.refresh_snapshot(wait=True):
                break
        with index.write():
            rows = _stragglers(index, segs, budget.size)
            _move(index, segments, append, doomed, rows)
            if not rows:
                for seg in segs:
                    index.drop_segment(seg)
        if not rows:
            break
    segments.unlink(segs)
    return freed


def _rows_after(index: Index, segs: list[int], after: int, limit: int) -> list[tuple[int, ...]]:
    """``(k, seg, row, dim)`` of at most ``limit`` entries stored in ``segs`` with keys above
    ``after``, in key order (in a write transaction). Compaction walks the table this way:
    the rows it then moves sit together in the table, so a transaction rewrites a few pages
    of it, not one page per row as rows taken segment by segment would."""
    marks = ",".join("?" * len(segs))
    # "+seg": walk the table by key, never a sort of a segment's entries by key.
    return index.db.execute(
        f"SELECT k, seg, row, dim FROM entries WHERE k > ? AND +seg IN ({marks}) "  # noqa: S608
        "ORDER BY k LIMIT ?",
        (after, *segs, limit),
    ).fetchall()


def _rows_in(index: Index, seg: int, limit: int) -> list[tuple[int, int, int]]:
    """``(k, row, dim)`` of at most ``limit`` entries still stored in ``seg`` (any order):
    what the walk missed (written there by others meanwhile). In a write transaction."""
    return index.db.execute(
        "SELECT k, row, dim FROM entries WHERE seg = ? LIMIT ?", (seg, limit)
    ).fetchall()


def _stragglers(index: Index, segs: list[int], most: int) -> list[tuple[int, ...]]:
    """``(k, seg, row, dim)`` of at most ``most`` entries still in ``segs``."""
    found: list[tuple[int, ...]] = []
    for seg in segs:
        found += [(k, seg, row, dim) for k, row, dim in _rows_in(index, seg, most - len(found))]
        if len(found) >= most:
            break
    return found


def _move(
    index: Index,
    segments: Segments,
    append: Append,
    doomed: dict[int, int],
    rows: list[tuple[int, ...]],
) -> None:
    """Copy ``(k, seg, row, dim)`` rows of the ``doomed`` segments to the end of others and
    point their entries there (in a write transaction), in the order given."""
    if not rows:
        return
    found = np.array(rows, dtype=np.int64).reshape(-1, 4)
    dims = np.array([doomed[int(seg)] for seg in found[:, 1]], dtype=np.int64)
    if (dims == HEAP_DIM).any():
        _move_payloads(index, segments, doomed, found[dims == HEAP_DIM])
    for dim in np.unique(dims[dims != HEAP_DIM]).tolist():
        mine = found[dims == dim]
        matrix = np.empty((len(mine), dim), dtype=np.float32)
        for seg in np.unique(mine[:, 1]).tolist():
            at = mine[:, 1] == seg
            # Positioned reads, not a map: a map of the whole file would count its
            # gigabyte in this process's memory; this holds only the rows moved.
            matrix[at] = segments.read_rows(seg, dim, mine[at, 2])
        new, start = append(dim, matrix, doomed)
        index.move(mine[:, 0].tolist(), new, start)


def _move_payloads(
    index: Index, segments: Segments, doomed: Container[int], found: NDArray[np.int64]
) -> None:
    """Copy the payloads of ``(k, seg, row, dim)`` rows of doomed heaps to the end of another
    heap, in one append, and point their entries there (in a write transaction)."""
    data: list[bytes] = []
    for _, seg, row, dim in found.tolist():
        _, _, offset, nbytes = payloads.shape_of(dim, row)
        data += segments.read_heap(seg, [(offset, nbytes)])
    new, start = heaps.append_heap(index, segments, b"".join(data), doomed)
    sizes = np.array([len(chunk) for chunk in data], dtype=np.int64)
    offsets = (start + np.cumsum(sizes) - sizes).tolist()
    index.db.executemany(
        "UPDATE entries SET seg = ?, row = ? WHERE k = ?",
        [
            (new, payloads.relocated(row, at), k)
            for at, (k, _, row, _) in zip(offsets, found.tolist(), strict=True)
        ],
    )
