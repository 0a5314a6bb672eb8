"""The index of a cache directory: ``index.db`` (SQLite) and its sorted snapshot.

It holds every SQL statement the store runs: one ``entries`` row per vector, pointing into
the segment files (:mod:`embedcache.storage.segments`), the ``segments`` table listing those files,
and a ``state`` table with the snapshot's bookkeeping. The directory layout as a whole is
described in :mod:`embedcache.storage.store`.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .databases import BUSY_SECONDS, open_wal
from .rows import COLUMNS, CREATED_US, LO, READ_COLUMNS, K

__all__ = ["Index", "entry_bytes"]

_CHUNK = 500  # keys per IN (...) query: SQLite's bound-parameter limit is 999 on old builds
_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY, dim INTEGER NOT NULL, rows INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS entries (
    k INTEGER PRIMARY KEY, lo INTEGER NOT NULL, seg INTEGER NOT NULL, row INTEGER NOT NULL,
    dim INTEGER NOT NULL, millitokens INTEGER NOT NULL, created_us INTEGER NOT NULL,
    fp INTEGER NOT NULL, checksum INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS entries_created ON entries(created_us);
CREATE INDEX IF NOT EXISTS entries_seg ON entries(seg);
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value INTEGER);
"""
# The snapshot: every index row's read columns, sorted by key, one contiguous int64 array
# per column, so a warm read finds all its keys with one np.searchsorted instead of SQL.
_SNAPSHOT_MIN_ROWS = 4096
_SNAPSHOT_GROWTH = 8  # rebuild once rows added since exceed 1/8 of those it holds
# Rows a rebuild reads and writes at a time: its memory (a few MB), whatever the index holds.
_SNAPSHOT_PAGE = 16384
# SQLite's page cache per connection (KiB), of which a store opens two on ``index.db``:
# 32 MiB at most for the index, whatever it holds. Random keys touch every leaf page in
# time, so a cache fills to its bound once the table outgrows it: at 64 MiB a connection,
# a 2M-entry fill held 127 MiB here. The interior pages a lookup walks (under 2 MiB at
# 10M entries) fit many times over; each leaf read past the bound comes from the OS's
# file cache (about 0.6 us more per key looked up in SQL at 1M entries).
_PAGE_CACHE_KIB = 16384


def entry_bytes(dim: int) -> int:
    """Bytes an entry of ``dim`` dimensions counts for, against a store's size limit and in
    ``embedcache prune --max-size`` alike: its vector's, 4 per dimension.

    Its index row and snapshot columns (a few hundred bytes more on disk, with SQLite's pages
    and log) are not counted: a limit bounds the vectors, which it can count exactly.
    """
    return 4 * dim


# The entries' total entry_bytes, kept up to date by triggers inside each writer's own
# transaction, so a size-limited put reads one row instead of counting every entry (which
# took 80 ms a put at 100k entries, growing with the cache). 4 bytes per dimension, as
# entry_bytes says; an entry replaced (INSERT OR REPLACE on its key) is taken off first.
_VECTOR_BYTES = """
BEGIN IMMEDIATE;
CREATE TRIGGER IF NOT EXISTS entries_bytes_in BEFORE INSERT ON entries BEGIN
    UPDATE state SET value = value + 4 * NEW.dim
        - COALESCE((SELECT 4 * dim FROM entries WHERE k = NEW.k), 0)
    WHERE name = 'vector_bytes';
END;
CREATE TRIGGER IF NOT EXISTS entries_bytes_out AFTER DELETE ON entries BEGIN
    UPDATE state SET value = value - 4 * OLD.dim WHERE name = 'vector_bytes';
END;
INSERT OR IGNORE INTO state (name, value) SELECT 'vector_bytes', COALESCE(SUM(4 * dim), 0)
    FROM entries WHERE NOT EXISTS (SELECT 1 FROM state WHERE name = 'vector_bytes');
COMMIT;
"""


def _vector_bytes(db: sqlite3.Connection) -> int:
    """The :func:`entry_bytes` of every entry, summed."""
    kept = db.execute("SELECT value FROM state WHERE name = 'vector_bytes'").fetchone()
    if kept is not None and kept[0] is not None:
        return int(kept[0])
    # A read-only cache written before the total was kept: count.
    groups = db.execute("SELECT dim, COUNT(*) FROM entries GROUP BY dim").fetchall()
    return sum(count * entry_bytes(dim) for dim, count in groups)


def _join(
    high: NDArray[np.int64], low: NDArray[np.int64], split: NDArray[np.int64]
) -> tuple[NDArray[np.intp], NDArray[np.bool_]]:
    """For each key of ``split``, its position among keys sorted by ``high`` (with their
    ``low`` halves), and whether it is really there: one vectorized search, not a dict."""
    at = np.minimum(np.searchsorted(high, split[:, 0]), len(high) - 1)
    return at, (high[at] == split[:, 0]) & (low[at] == split[:, 1])


def _write_snapshot(path: Path, db: sqlite3.Connection, width: int, rows: int) -> None:
    """Write the ``(width, rows)`` int64 ``.npy`` of every index row's read columns, in key
    order, a page of rows at a time: what ``np.save`` of the whole array writes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<i8", "fortran_order": False, "shape": (width, rows)}
    )
    start = len(header.getvalue())
    cursor = db.execute(f"SELECT {READ_COLUMNS} FROM entries ORDER BY k")  # noqa: S608
    with open(path, "wb") as handle:
        handle.write(header.getvalue())
        handle.truncate(start + width * rows * 8)
        handle.flush()
        fd, done = handle.fileno(), 0
        # Values straight from the cursor into an int64 page: no page of row tuples is held.
        values = itertools.chain.from_iterable(cursor)
        while done < rows:
            count = min(_SNAPSHOT_PAGE, rows - done)
            try:
                page = np.fromiter(values, dtype="<i8", count=count * width)
            except ValueError:
                raise sqlite3.DatabaseError(
                    "the index shrank while its snapshot was written"
                ) from None
            columns = page.reshape(count, width).T
            for column in range(width):
                data = np.ascontiguousarray(columns[column])
                if os.pwrite(fd, data.data, start + (column * rows + done) * 8) != data.nbytes:
                    raise OSError(f"short write to {path}")
            done += count
        if next(values, None) is not None:
            raise sqlite3.DatabaseError("the index grew while its snapshot was written")


def _connect(path: Path, read_only: bool, schema: str | None = None) -> sqlite3.Connection:
    """A connection to ``index.db``; with ``schema``, the one that creates it (and the WAL)
    when new, safely against other processes doing the same (:func:`open_wal`)."""
    if read_only:
        # On a read-only directory SQLite cannot create the WAL's shared-memory file;
        # "immutable" reads the database as it stands, without locks.
        uri = f"file:{urllib.parse.quote(str(path))}?mode=ro&immutable=1"
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    elif schema is not None:
        db = open_wal(path, schema)
    else:
        db = sqlite3.connect(
            path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False
        )
    db.execute(f"PRAGMA cache_size=-{_PAGE_CACHE_KIB}")
    return db


class Index:
    """The SQLite connection of a cache directory, and its snapshot.

    Rows come back as int64 arrays, columns as in :mod:`embedcache.storage.rows`. Methods that
    change the index must run inside :meth:`write`.

    :param directory: the cache directory (``index.db`` and the snapshots live there).
    :param lock: the store's lock; it guards the write connection.
    :param errors: ``errors(action)`` wraps database failures in :class:`CacheError`.
    :raises OSError, sqlite3.Error: the database cannot be opened.
    """

    def __init__(
        self,
        directory: Path,
        lock: threading.RLock,
        errors: Callable[[str], AbstractContextManager[None]],
        read_only: bool = False,
    ) -> None:
        self.directory = directory
        self._lock = lock
        self._errors = errors
        self._snapshot_cache: tuple[int, NDArray[np.int64]] | None = None
        self._stale_snapshots: list[int] = []
        path = directory / "index.db"
        self._db = _connect(path, read_only, None if read_only else _SCHEMA)
        if not read_only:
            kept = "SELECT 1 FROM state WHERE name = 'vector_bytes'"
            if self._db.execute(kept).fetchone() is None:  # set with its triggers, once
                self._db.executescript(_VECTOR_BYTES)
        # Reads get their own connection and lock: under WAL they run alongside a write
        # transaction, so a server answering hits never waits for another thread's fill.
        self._reader = _connect(path, read_only)
        self._read_lock = threading.Lock()

    def close(self) -> None:
        """Close the connections (call with the store's lock held)."""
        with self._read_lock:
            self._reader.close()
        self._db.close()

    # Reading

    def count(self) -> int:
        """Number of entries."""
        with self._read_lock, self._errors("read"):
            return int(self._reader.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def groups(self) -> list[tuple[int, int, int, int]]:
        """``(fingerprint id, dimension, entries, millitokens)`` of each kind of entry: one
        aggregate query over the index, no row read into Python."""
        with self._read_lock, self._errors("read"):
            rows = self._reader.execute(
                "SELECT fp, dim, COUNT(*), SUM(millitokens) FROM entries GROUP BY fp, dim"
            ).fetchall()
        return [(int(fp), int(dim), int(n), int(milli or 0)) for fp, dim, n, milli in rows]

    def vector_bytes(self) -> int:
        """Bytes the entries count for against a size limit (:func:`entry_bytes` each)."""
        with self._read_lock, self._errors("read"):
            return _vector_bytes(self._reader)

    def pages(self, batch: int) -> Iterator[NDArray[np.int64]]:
        """Every index row in key order, ``batch`` rows at a time (all columns)."""
        # Page by primary key: the first page takes the smallest key (>=), later ones the
        # keys after the last seen (>).
        last, compare = -(1 << 63), ">="
        while True:
            with self._read_lock, self._errors("read"):
                rows = self._reader.execute(
                    f"SELECT {COLUMNS} FROM entries WHERE k {compare} ? ORDER BY k LIMIT ?",  # noqa: S608
                    (last, batch),
                ).fetchall()
            compare = ">"
            if not rows:
                return
            last = rows[-1][0]
            yield np.array(rows, dtype=np.int64)

    def pages_by_age(self, batch: int) -> Iterator[NDArray[np.int64]]:
        """Every index row, oldest stored first (by key within the same microsecond, as
        :meth:`evict` takes them), ``batch`` rows at a time (all columns)."""
        # Keyset paging on (created_us, k): entries_created holds k as its rowid, so each
        # page is one index range, without a sort or an OFFSET walk.
        last, compare = (-(1 << 63), -(1 << 63)), ">="
        while True:
            with self._read_lock, self._errors("read"):
                rows = self._reader.execute(
                    f"SELECT {COLUMNS} FROM entries WHERE (created_us, k) {compare} (?, ?) "  # noqa: S608
                    "ORDER BY created_us, k LIMIT ?",
                    (*last, batch),
                ).fetchall()
            compare = ">"
            if not rows:
                return
            page = np.array(rows, dtype=np.int64)
            last = (int(page[-1, CREATED_US]), int(page[-1, K]))
            yield page

    def find(
        self, split: NDArray[np.int64], use_snapshot: bool = True
    ) -> tuple[NDArray[np.int64], NDArray[np.bool_], bool]:
        """Read columns of the index row of each key, whether it has one, and whether the
        snapshot answered any of them."""
        matched = np.zeros((len(split), READ_COLUMNS.count(",") + 1), dtype=np.int64)
        present = np.zeros(len(split), dtype=bool)
        snapshot = self.snapshot() if use_snapshot else None
        if snapshot is not None and snapshot.shape[1]:
            at, present = _join(snapshot[K], snapshot[LO], split)
            matched = np.ascontiguousarray(snapshot[:, at].T)
        todo = np.flatnonzero(~present)
        if len(todo):
            rows = self.lookup(split[todo, 0], READ_COLUMNS)
            if len(rows):
                rows = rows[np.argsort(rows[:, K], kind="stable")]
                at, hit = _join(rows[:, K], rows[:, LO], split[todo])
                matched[todo[hit]] = rows[at[hit]]
                present[todo[hit]] = True
        return matched, present, snapshot is not None

    def contains(self, split: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Whether each key has an index row: :meth:`find` without gathering the rows, so
        only the snapshot's two key columns are read (a fill checking millions of keys
        keeps 16 bytes of the map per entry in memory, not all its columns)."""
        present = np.zeros(len(split), dtype=bool)
        snapshot = self.snapshot()
        if snapshot is not None and snapshot.shape[1]:
            present = _join(snapshot[K], snapshot[LO], split)[1]
        todo = np.flatnonzero(~present)
        if len(todo):
            rows = self.lookup(split[todo, 0], "k, lo")
            if len(rows):
                rows = rows[np.argsort(rows[:, K], kind="stable")]
                present[todo[_join(rows[:, K], rows[:, LO], split[todo])[1]]] = True
        return present

    def lookup(self, high: NDArray[np.int64], columns: str = COLUMNS) -> NDArray[np.int64]:
        """Index rows whose primary key is among ``high``, one int64 row each."""
        found: list[tuple[int, ...]] = []
        values = high.tolist()
        with self._read_lock, self._errors("read"):
            for start in range(0, len(values), _CHUNK):
                part = values[start : start + _CHUNK]
                marks = ",".join("?" * len(part))
                found += self._reader.execute(
                    f"SELECT {columns} FROM entries WHERE k IN ({marks})",  # noqa: S608
                    part,
                ).fetchall()
        return np.array(found, dtype=np.int64).reshape(-1, columns.count(",") + 1)

    # The snapshot

    def snapshot(self) -> NDArray[np.int64] | None:
        """The current snapshot (memory-mapped), or ``None`` when there is none."""
        with self._read_lock, self._errors("read"):
            row = self._reader.execute("SELECT value FROM state WHERE name = 'snapshot'").fetchone()
        if row is None or row[0] is None:
            return None
        generation = int(row[0])
        if self._snapshot_cache is not None and self._snapshot_cache[0] == generation:
            return self._snapshot_cache[1]
        try:
            snapshot: NDArray[np.int64] = np.load(self._snapshot_path(generation), mmap_mode="r")
        except (OSError, ValueError):
            return None  # replaced by a writer since we read its generation: use SQL
        self._snapshot_cache = (generation, snapshot)
        return snapshot

    def _snapshot_path(self, generation: int) -> Path:
        return self.directory / f"snapshot-{generation}.npy"

    def _state(self, name: str) -> int | None:
        row = self._db.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def _set_state(self, **values: int | None) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO state (name, value) VALUES (?, ?)", list(values.items())
        )

    def maybe_snapshot(self, added: int) -> None:
        """After inserting (in a write transaction): rebuild the snapshot when it lags."""
        since = (self._state("since_snapshot") or 0) + added
        held = self._state("snapshot_rows") or 0
        if since >= max(_SNAPSHOT_MIN_ROWS, held // _SNAPSHOT_GROWTH):
            self.rebuild_snapshot()
        else:
            self._set_state(since_snapshot=since)

    def drop_snapshot(self) -> None:
        """(In a write transaction, before deleting entries.) Readers stop using the snapshot,
        which would still list the deleted entries, and look in SQL until the next rebuild;
        the next insert rebuilds it if the deleter cannot (it was interrupted, or killed)."""
        old = self._state("snapshot")
        if old is None:
            return
        due = max(_SNAPSHOT_MIN_ROWS, self._state("snapshot_rows") or 0)
        self._set_state(snapshot=None, since_snapshot=due)
        self._stale_snapshots.append(old)

    def rebuild_snapshot(self) -> None:
        """Write a snapshot of the index as it is in this write transaction.

        In bounded memory, whatever the index holds: rows are read in key order a page at a
        time and each page's columns are written straight to their places in the file
        (positioned writes, not a map, so the file's pages never count in this process's
        memory). Readers keep the snapshot they have until the new one is committed.
        """
        old = self._state("snapshot")
        generation = (self._state("generation") or 0) + 1
        width = READ_COLUMNS.count(",") + 1
        rows = int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
        path = self._snapshot_path(generation)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            _write_snapshot(tmp, self._db, width, rows)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._set_state(
            generation=generation, snapshot=generation, snapshot_rows=rows, since_snapshot=0
        )
        if old is not None:
            self._stale_snapshots.append(old)

    # Writing

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """A write transaction (``BEGIN IMMEDIATE``), holding the store's lock."""
        with self._lock, self._errors("write"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                self._stale_snapshots.clear()
                raise
            self._db.execute("COMMIT")
            # Readers that mapped an old snapshot keep their map; new readers see the new one.
            for generation in self._stale_snapshots:
                with contextlib.suppress(OSError):
                    self._snapshot_path(generation).unlink()
            self._stale_snapshots.clear()

    def insert(
        self,
        split: NDArray[np.int64],
        seg: int,
        start: int,
        dim: int,
        millitokens: list[int],
        checksums: list[int],
        created_us: int,
        fp: int,
    ) -> None:
        """Add or replace the entries of keys ``split`` stored as rows ``start...`` of ``seg``."""
        self._db.executemany(
            f"INSERT OR REPLACE INTO entries ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",  # noqa: S608
            [
                (int(split[i, 0]), int(split[i, 1]), seg, start + i, dim,
                 millitokens[i], checksums[i], created_us, fp)
                for i in range(len(split))
            ],
        )  # fmt: skip

    def delete(self, split: NDArray[np.int64]) -> int:
        """Delete the entries of keys ``split``; returns how many existed."""
        # rowcount, not total_changes: the latter also counts the triggers' updates.
        cursor = self._db.executemany(
            "DELETE FROM entries WHERE k = ? AND lo = ?",
            [(int(hi), int(lo)) for hi, lo in split],
        )
        if cursor.rowcount:
            self._count_removal()
        return cursor.rowcount

    def evict(self, limit: int | None) -> bool:
        """Delete the oldest stored entries (by key within the same microsecond) until the
        rest count ``limit`` bytes or fewer (:func:`entry_bytes`); returns whether any went."""
        if limit is None:
            return False
        used = _vector_bytes(self._db)
        if used <= limit:
            return False
        doomed = []
        for k, dim in self._db.execute("SELECT k, dim FROM entries ORDER BY created_us, k"):
            if used <= limit:
                break
            doomed.append((k,))
            used -= entry_bytes(dim)
        self._db.executemany("DELETE FROM entries WHERE k = ?", doomed)
        # Not counted in ``removals``: an evicted entry is still a right answer, and a full
        # cache evicts on every fill, so readers would forget what they hold every second.
        return True

    def clear(self) -> tuple[int, list[int]]:
        """Delete every entry and segment; returns how many entries there were and the ids
        of the segments."""
        removed = int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
        self._db.execute("DELETE FROM entries")
        segments = [row[0] for row in self._db.execute("SELECT id FROM segments")]
        self._db.execute("DELETE FROM segments")
        self._count_removal()  # even of nothing: whoever clears wants every reader to forget
        return removed, segments

    def _count_removal(self) -> None:
        """(In the write transaction that removes entries.) Count it in ``removals``,
        committed with the removal itself, so no reader sees one without the other."""
        self._set_state(removals=(self._state("removals") or 0) + 1)

    def removals(self) -> int:
        """The ``removals`` count (see :meth:`Store.removals`): one indexed row read."""
        with self._read_lock, self._errors("read"):
            row = self._reader.execute("SELECT value FROM state WHERE name = 'removals'").fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    # Segments

    def last_segment(self, dim: int) -> tuple[int, int] | None:
        """The newest segment of dimension ``dim`` and the rows it holds, if any."""
        row = self._db.execute(
            "SELECT id, rows FROM segments WHERE dim = ? ORDER BY id DESC LIMIT 1", (dim,)
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def add_segment(self, dim: int) -> int:
        """Record a new, empty segment (in a write transaction); returns its id, one never
        given before on this cache: a segment dropped by ``clear`` or ``compact`` has its
        file deleted after the commit, so a new segment under the same id could be written
        by another process and then deleted with the old file."""
        (highest,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM segments").fetchone()
        seg = max(int(highest), self._state("last_segment") or 0) + 1
        self._db.execute("INSERT INTO segments (id, dim) VALUES (?, ?)", (seg, dim))
        self._set_state(last_segment=seg)
        return seg

    def set_segment_rows(self, seg: int, rows: int) -> None:
        self._db.execute("UPDATE segments SET rows = ? WHERE id = ?", (rows, seg))

    def segment_usage(self) -> list[tuple[int, int, int, int]]:
        """``(id, dim, rows, live rows)`` of every segment."""
        return self._db.execute(
            "SELECT s.id, s.dim, s.rows, COUNT(e.k) FROM segments s "
            "LEFT JOIN entries e ON e.seg = s.id GROUP BY s.id"
        ).fetchall()

    def some_live_rows(self, seg: int, limit: int) -> list[tuple[int, int]]:
        """``(k, row)`` of at most ``limit`` entries still stored in ``seg`` (any order):
        compaction takes them a bounded chunk at a time until none is left."""
        return self._db.execute(
            "SELECT k, row FROM entries WHERE seg = ? LIMIT ?", (seg, limit)
        ).fetchall()

    def move(self, keys: list[int], seg: int, start: int) -> None:
        """Point the entries of primary keys ``keys`` at rows ``start...`` of ``seg``."""
        self._db.executemany(
            "UPDATE entries SET seg = ?, row = ? WHERE k = ?",
            [(seg, start + i, k) for i, k in enumerate(keys)],
        )

    def drop_segment(self, seg: int) -> None:
        self._db.execute("DELETE FROM segments WHERE id = ?", (seg,))
