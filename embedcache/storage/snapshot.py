"""The index's sorted snapshot, and the keys removed since it was taken.

A snapshot (``snapshot-<generation>.npy``) holds every index row's read columns
(:data:`~embedcache.storage.rows.READ_COLUMNS`) sorted by key, one contiguous int64 array
per column, so a warm read finds all its keys with one ``np.searchsorted`` instead of SQL.
It is written from a read transaction, outside the write lock (writers go on meanwhile),
and installed in a short write transaction
(:meth:`~embedcache.storage.index.Index.refresh_snapshot`).

Entries deleted after it was taken are listed in ``index.db``'s ``removed`` table (a trigger
adds each deleted key, in the deleting transaction): a reader loads those keys as they come
(:class:`View`) and asks SQL about any of them the snapshot still lists, so a prune or an
eviction never has to set the snapshot aside nor rebuild it inside its own transactions.
The directory layout as a whole is described in :mod:`embedcache.storage.store`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from . import counts
from .formats import npy_header
from .rows import READ_COLUMNS

__all__ = [
    "RUN_KEYS",
    "WIDTH",
    "RebuildGuard",
    "Taken",
    "View",
    "join",
    "take_snapshot",
    "write_snapshot",
]

#: Columns of a snapshot.
WIDTH = READ_COLUMNS.count(",") + 1
#: Removed keys merged into one sorted run at most (see :meth:`View.add_removed`).
RUN_KEYS = 1 << 16


def write_snapshot(path: Path, db: sqlite3.Connection, rows: int, page_rows: int) -> None:
    """Write the ``(WIDTH, rows)`` int64 ``.npy`` of every index row's read columns, in key
    order, ``page_rows`` rows at a time (positioned writes, not a map, so the file's pages
    never count in this process's memory): what ``np.save`` of the whole array writes.

    :param db: a connection in the read transaction the snapshot is taken from.
    :param page_rows: :attr:`Tuning.snapshot_page <embedcache.storage.tuning.Tuning>`.
    :raises sqlite3.DatabaseError: the index does not hold ``rows`` rows.
    """
    header = npy_header((WIDTH, rows), "<i8")
    start = len(header)
    cursor = db.execute(f"SELECT {READ_COLUMNS} FROM entries ORDER BY k")  # noqa: S608
    with open(path, "wb") as handle:
        handle.write(header)
        handle.truncate(start + WIDTH * rows * 8)
        handle.flush()
        fd, done = handle.fileno(), 0
        # Values straight from the cursor into an int64 page: no page of row tuples is held.
        values = itertools.chain.from_iterable(cursor)
        while done < rows:
            count = min(page_rows, rows - done)
            try:
                page = np.fromiter(values, dtype="<i8", count=count * WIDTH)
            except ValueError:
                raise sqlite3.DatabaseError(
                    "the index shrank while its snapshot was written"
                ) from None
            columns = page.reshape(count, WIDTH).T
            for column in range(WIDTH):
                data = np.ascontiguousarray(columns[column])
                if os.pwrite(fd, data.data, start + (column * rows + done) * 8) != data.nbytes:
                    raise OSError(f"short write to {path}")
            done += count
        if next(values, None) is not None:
            raise sqlite3.DatabaseError("the index grew while its snapshot was written")


def join(
    high: NDArray[np.int64], low: NDArray[np.int64], split: NDArray[np.int64]
) -> tuple[NDArray[np.intp], NDArray[np.bool_]]:
    """For each key of ``split``, its position among keys sorted by ``high`` (with their
    ``low`` halves), and whether it is really there: one vectorized search, not a dict.

    The keys are searched in sorted order: each search then starts where the last one
    ended and walks memory the last ones brought into the CPU's caches (a third of the
    time of random order, over a 10M-row snapshot)."""
    order = np.argsort(split[:, 0])
    at = np.empty(len(split), dtype=np.intp)
    at[order] = np.searchsorted(high, split[order, 0])
    np.minimum(at, len(high) - 1, out=at)
    return at, (high[at] == split[:, 0]) & (low[at] == split[:, 1])


@dataclass(frozen=True)
class Taken:
    """A snapshot written, and the index's bookkeeping as it stood when it was taken."""

    generation: int  # the snapshot generation then: installed only if it still is
    since: int  # entries stored (or evicted) and removed not yet in a snapshot, then
    removed: int
    top: int  # the last ``removed`` row then: those up to it are in the snapshot
    rows: int


def take_snapshot(path: Path, db: sqlite3.Connection, page_rows: int) -> Taken:
    """Write a snapshot to ``path`` from one read transaction of ``db`` (a connection of its
    own: it holds no lock that writers wait for), ``page_rows`` rows at a time."""
    db.execute("BEGIN")
    try:

        def state(name: str) -> int:
            row = db.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
            return 0 if row is None or row[0] is None else int(row[0])

        top = int(db.execute("SELECT COALESCE(MAX(id), 0) FROM removed").fetchone()[0])
        rows = sum(entries for _, _, entries, _ in counts.groups(db))
        taken = Taken(state("generation"), state("index_since"), state("index_removed"), top, rows)
        write_snapshot(path, db, rows, page_rows)
        return taken
    finally:
        db.execute("COMMIT")


@dataclass
class View:
    """What a reader holds of one snapshot generation: its map, and the sorted high halves
    of the keys removed since it was taken (as far as ``removed`` row ``seen``).

    A key listed there may have been stored again since: the reader asks SQL about it.
    The removed keys are kept as a few sorted runs, not one: a prune adds thousands of keys
    a page while readers poll between pages, and re-sorting all of them on every poll cost
    a reader more, the larger the prune, than the read it was polling for.
    """

    generation: int
    columns: NDArray[np.int64]
    runs: list[NDArray[np.int64]] = field(default_factory=list)
    seen: int = 0
    run_keys: int = RUN_KEYS

    def add_removed(self, high: list[int], seen: int) -> None:
        """Take in newly removed keys (``removed`` rows up to ``seen``)."""
        if high:
            self.runs.append(np.sort(np.array(high, dtype=np.int64)))
            # Merge a run into the one before it while that one is at most twice its size
            # (each key is merged about log2 of their count times in all), up to runs of
            # ``run_keys``: no poll sorts more than that, and a search of a few more runs
            # costs a reader little.
            while (
                len(self.runs) > 1
                and len(self.runs[-2]) <= 2 * len(self.runs[-1])
                and len(self.runs[-2]) + len(self.runs[-1]) <= self.run_keys
            ):
                last = self.runs.pop()
                self.runs[-1] = np.sort(np.concatenate([self.runs[-1], last]), kind="stable")
        self.seen = seen

    @property
    def removed(self) -> NDArray[np.int64]:
        """Every removed key's high half, sorted."""
        if not self.runs:
            return np.empty(0, np.int64)
        return np.sort(np.concatenate(self.runs))

    def removed_mask(self, high: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Whether each key's high half was removed since the snapshot was taken."""
        found = np.zeros(len(high), dtype=bool)
        for run in self.runs:
            at = np.minimum(np.searchsorted(run, high), len(run) - 1)
            found |= run[at] == high
        return found


class RebuildGuard:
    """One snapshot rebuild at a time on a directory: this process's threads through a
    lock, other processes through ``flock`` on ``snapshot.lock`` (released by the kernel
    when a process dies, so a killed rebuild blocks nobody).

    :param path: the lock file; created when missing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, wait: bool) -> Iterator[bool]:
        """Hold the guard; yields whether it was got (always, with ``wait``)."""
        if not self._lock.acquire(blocking=wait):
            yield False
            return
        try:
            try:
                import fcntl
            except ImportError:  # no POSIX locks: this process's lock is all there is
                yield True
                return
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                except BlockingIOError:
                    yield False
                    return
                yield True
            finally:
                os.close(fd)  # and with it the lock
        finally:
            self._lock.release()
