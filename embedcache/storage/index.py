"""The index of a cache directory: ``index.db`` (SQLite) and its sorted snapshot.

It holds every SQL statement the store runs: one ``entries`` row per vector, pointing into
the segment files (:mod:`embedcache.storage.segments`), the ``segments`` table listing those files,
and a ``state`` table with the snapshot's bookkeeping; the totals kept in each write are in
:mod:`~embedcache.storage.counts`, what each fingerprint id means in
:mod:`~embedcache.storage.fingerprints`. The directory layout as a whole is described in
:mod:`embedcache.storage.store`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..cache_keys import Fingerprint
from . import counts
from .counts import keep_counts
from .databases import cache_errors, connect_index
from .fingerprints import keep_fingerprints, read_fingerprints, record_fingerprint
from .formats import entry_bytes
from .payloads import HEAP_DIM, SQL_ENTRY_BYTES
from .rows import COLUMNS, CREATED_US, LO, READ_COLUMNS, K
from .snapshot import WIDTH, RebuildGuard, View, join, take_snapshot
from .tuning import Tuning, default_tuning

__all__ = ["Index"]

_connect = connect_index  # one name for every connection this module opens (tests trace it)

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
# What a reader asks on every lookup: the snapshot to use and the newest removed key.
_VIEW_STATE = (
    "SELECT (SELECT value FROM state WHERE name = 'index_snapshot'), (SELECT MAX(id) FROM removed)"
)


class Index:
    """The SQLite connections of a cache directory, and its snapshot.

    Rows come back as int64 arrays, columns as in :mod:`embedcache.storage.rows`. Methods that
    change the index must run inside :meth:`write`; failures come out as :class:`CacheError`
    (:func:`~embedcache.storage.databases.cache_errors`), but for the constructor's.

    :param directory: the cache directory (``index.db`` and the snapshots live there).
    :param legacy_fingerprints: older versions' records, copied in by a writer's first open.
    :param tuning: when to take a new snapshot, and the rows it writes at a time.
    :raises OSError, sqlite3.Error: the database cannot be opened.
    """

    def __init__(
        self,
        directory: Path,
        read_only: bool = False,
        legacy_fingerprints: Callable[[], Mapping[int, Fingerprint]] = dict,
        *,
        tuning: Tuning | None = None,
    ) -> None:
        self.directory = directory
        self.tuning = tuning or default_tuning()
        self.read_only = read_only
        #: Held by every write transaction (:meth:`write`), segment appends included.
        self.lock = threading.RLock()
        self._errors = functools.partial(cache_errors, directory)
        self._view: View | None = None
        self._stale_snapshots: list[int] = []
        self._guard = RebuildGuard(directory / "snapshot.lock")
        path = directory / "index.db"
        self._db = _connect(path, read_only, None if read_only else _SCHEMA)
        if not read_only:
            keep_counts(self._db)
            keep_fingerprints(self._db, legacy_fingerprints)
        # Reads get their own connection and lock: under WAL they run alongside a write
        # transaction, so a server answering hits never waits for another thread's fill.
        self._reader = _connect(path, read_only)
        self._read_lock = threading.Lock()

    def close(self) -> None:
        """Close the connections (once any write in flight is done)."""
        with self.lock, self._read_lock:
            self._reader.close()
            self._view = None
            self._db.close()

    def record_fingerprint(self, fp: Fingerprint) -> None:
        """(In the write transaction storing entries under ``fp``.) Record what it means
        (:mod:`~embedcache.storage.fingerprints`)."""
        record_fingerprint(self._db, fp)

    def fingerprints(self) -> dict[int, Fingerprint]:
        """The fingerprints recorded in ``index.db``, by id."""
        with self._read_lock, self._errors("read"):
            return read_fingerprints(self._reader)

    # Reading

    def count(self) -> int:
        """Number of entries: the ``groups`` totals, a few rows at any size."""
        return sum(entries for _, _, entries, _ in self.groups())

    def groups(self) -> list[tuple[int, int, int, int]]:
        """``(fingerprint id, dimension, entries, millitokens)`` of each kind of entry, as
        :mod:`~embedcache.storage.counts` keeps them: no scan of the index."""
        with self._read_lock, self._errors("read"):
            return counts.groups(self._reader)

    def vector_bytes(self) -> int:
        """Bytes the entries count for against a size limit (:func:`entry_bytes` each)."""
        with self._read_lock, self._errors("read"):
            return counts.vector_bytes(self._reader)

    def pages(self, batch: int) -> Iterator[NDArray[np.int64]]:
        """Every index row in key order, ``batch`` rows at a time (all columns)."""
        return self._keyset_pages(batch, "k", (K,))

    def pages_by_age(self, batch: int) -> Iterator[NDArray[np.int64]]:
        """Every index row, oldest stored first (by key within the same microsecond, as
        :meth:`evict` takes them), ``batch`` rows at a time (all columns)."""
        # entries_created holds k as its rowid, so each page is one range of that index.
        return self._keyset_pages(batch, "created_us, k", (CREATED_US, K))

    def _keyset_pages(
        self, batch: int, order: str, columns: tuple[int, ...]
    ) -> Iterator[NDArray[np.int64]]:
        """Rows ordered by ``order`` (the row columns ``columns``), a page at a time: the
        first takes the smallest (>=), each next one those after the last seen (>), so a
        page is one index range, without a sort or an OFFSET walk."""
        marks = ", ".join("?" * len(columns))
        last, compare = (-(1 << 63),) * len(columns), ">="
        while True:
            with self._read_lock, self._errors("read"):
                rows = self._reader.execute(
                    f"SELECT {COLUMNS} FROM entries WHERE ({order}) {compare} ({marks}) "  # noqa: S608
                    f"ORDER BY {order} LIMIT ?",
                    (*last, batch),
                ).fetchall()
            compare = ">"
            if not rows:
                return
            page = np.array(rows, dtype=np.int64)
            last = tuple(int(value) for value in page[-1, list(columns)])
            yield page

    def find(
        self, split: NDArray[np.int64], use_snapshot: bool = True
    ) -> tuple[NDArray[np.int64], NDArray[np.bool_], bool]:
        """Read columns of the index row of each key, whether it has one, and whether the
        snapshot answered any of them."""
        matched = np.zeros((len(split), WIDTH), dtype=np.int64)
        present = np.zeros(len(split), dtype=bool)
        view = self.view() if use_snapshot else None
        if view is not None and view.columns.shape[1]:
            at, present = join(view.columns[K], view.columns[LO], split)
            present &= ~view.removed_mask(split[:, 0])
            matched = np.ascontiguousarray(view.columns[:, at].T)
        todo = np.flatnonzero(~present)
        if len(todo):
            rows = self.lookup(split[todo, 0], READ_COLUMNS)
            if len(rows):
                rows = rows[np.argsort(rows[:, K], kind="stable")]
                at, hit = join(rows[:, K], rows[:, LO], split[todo])
                matched[todo[hit]] = rows[at[hit]]
                present[todo[hit]] = True
        return matched, present, view is not None

    def contains(self, split: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Whether each key has an index row: :meth:`find` without gathering the rows, so
        only the snapshot's two key columns are read (a fill checking millions of keys
        keeps 16 bytes of the map per entry in memory, not all its columns)."""
        present = np.zeros(len(split), dtype=bool)
        view = self.view()
        if view is not None and view.columns.shape[1]:
            present = join(view.columns[K], view.columns[LO], split)[1]
            present &= ~view.removed_mask(split[:, 0])
        todo = np.flatnonzero(~present)
        if len(todo):
            rows = self.lookup(split[todo, 0], "k, lo")
            if len(rows):
                rows = rows[np.argsort(rows[:, K], kind="stable")]
                present[todo[join(rows[:, K], rows[:, LO], split[todo])[1]]] = True
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

    # The snapshot (see embedcache.storage.snapshot)

    def view(self) -> View | None:
        """The current snapshot (memory-mapped) with the keys removed since it was taken,
        or ``None`` when there is none: one row read when nothing changed."""
        with self._read_lock, self._errors("read"):
            generation, top = self._reader.execute(_VIEW_STATE).fetchone()
            view = self._view
            if generation is None:
                self._view = None
                return None
            if view is None or view.generation != generation or (top or 0) < view.seen:
                try:
                    mapped = np.load(self._snapshot_path(generation), mmap_mode="r")
                    # A plain array over the map: np.memmap's indexing costs more.
                    columns: NDArray[np.int64] = np.asarray(mapped)
                except (OSError, ValueError):
                    return None  # replaced by a writer since we read its generation: use SQL
                view = View(int(generation), columns)
            if (top or 0) > view.seen:
                # In one read transaction with the generation: an install that dropped
                # these rows would have changed it.
                self._reader.execute("BEGIN")
                try:
                    generation, top = self._reader.execute(_VIEW_STATE).fetchone()
                    if generation != view.generation:
                        return None  # a new snapshot this instant: SQL, this once
                    removed = self._reader.execute(
                        "SELECT k FROM removed WHERE id > ? AND id <= ?", (view.seen, top)
                    ).fetchall()
                finally:
                    self._reader.execute("COMMIT")
                view.add_removed([k for (k,) in removed], int(top or 0))
            self._view = view
            return view

    def _snapshot_path(self, generation: int) -> Path:
        return self.directory / f"snapshot-{generation}.npy"

    def _state(self, name: str) -> int | None:
        row = self._db.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def _set_state(self, **values: int | None) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO state (name, value) VALUES (?, ?)", list(values.items())
        )

    def note_changes(self, stored: int, removed: int = 0) -> bool:
        """(In the write transaction that stored, evicted or deleted entries.) Count them
        against the snapshot; returns whether it lags enough for this writer to take a new
        one after the commit (:meth:`refresh_snapshot`). Deletions count only for whoever
        deletes: a fill must not take a snapshot because a prune runs beside it."""
        since = (self._state("index_since") or 0) + stored
        gone = (self._state("index_removed") or 0) + removed
        self._set_state(index_since=since, index_removed=gone)
        if self._state("index_snapshot") is None:
            # Nobody reads removed keys without a snapshot: they need not pile up.
            self._db.execute("DELETE FROM removed")
        held = self._state("index_rows") or 0
        due = max(self.tuning.snapshot_min_rows, held // self.tuning.snapshot_growth)
        return since + (gone if removed else 0) >= due

    def refresh_snapshot(self, wait: bool = False) -> bool:
        """Take a new snapshot: written from a read transaction of its own, so writers go on
        meanwhile, then installed in a short write transaction (the keys removed before it
        was taken are dropped from ``removed`` then). Outside any write transaction.

        One process rebuilds at a time (:class:`~embedcache.storage.snapshot.RebuildGuard`):
        unless ``wait``, this returns ``False`` at once when another is at it. A snapshot
        taken before another was installed is thrown away (it might list rows a compaction
        has moved since). Returns whether this one was installed.
        """
        if self.read_only:
            return False
        with self._guard.hold(wait) as mine:
            if not mine:
                return False
            tmp = self.directory / f".snapshot.{os.getpid()}.{threading.get_ident()}.tmp"
            try:
                return self._take_snapshot(tmp)
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def _take_snapshot(self, tmp: Path) -> bool:
        db = _connect(self.directory / "index.db", read_only=False)
        try:
            with self._errors("write"):
                taken = take_snapshot(tmp, db, self.tuning.snapshot_page)
        finally:
            db.close()
        with self.write():
            if (self._state("generation") or 0) != taken.generation:
                return False  # another was installed (or the cache cleared) meanwhile
            new = taken.generation + 1
            os.chmod(tmp, 0o600)
            os.replace(tmp, self._snapshot_path(new))
            old = self._state("index_snapshot")
            if old is not None:
                self._stale_snapshots.append(old)
            self._db.execute("DELETE FROM removed WHERE id <= ?", (taken.top,))
            # Versions that know no removed keys may use it only while there are none.
            clean = self._db.execute("SELECT 1 FROM removed LIMIT 1").fetchone() is None
            self._set_state(
                generation=new, index_snapshot=new, index_rows=taken.rows,
                index_since=max(0, (self._state("index_since") or 0) - taken.since),
                index_removed=max(0, (self._state("index_removed") or 0) - taken.removed),
                snapshot=new if clean else None, snapshot_rows=taken.rows, since_snapshot=0,
            )  # fmt: skip
        return True

    # Writing

    @property
    def db(self) -> sqlite3.Connection:
        """The write connection: for use inside :meth:`write` only."""
        return self._db

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """A write transaction (``BEGIN IMMEDIATE``), holding :attr:`lock`."""
        with self.lock, self._errors("write"):
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
        start: int | NDArray[np.int64],
        dim: int,
        millitokens: NDArray[np.int64],
        checksums: NDArray[np.int64],
        created_us: int,
        fp: int,
    ) -> None:
        """Add or replace the entries of keys ``split`` stored as rows ``start...`` of ``seg``
        (a heap's: ``start`` their row columns; of a key given twice, the later row),
        counted in the totals once for the put."""
        counts.add_entries(
            self._db,
            counts.put_rows(split, seg, start, dim, millitokens, checksums),
            created_us,
            fp,
        )

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

    def evict(self, limit: int | None) -> int:
        """Delete the oldest stored entries (by key within the same microsecond) until the
        rest count ``limit`` bytes or fewer (:func:`entry_bytes`); returns how many went."""
        if limit is None:
            return 0
        used = counts.vector_bytes(self._db)
        if used <= limit:
            return 0
        doomed = []
        for k, dim, row in self._db.execute(
            "SELECT k, dim, row FROM entries ORDER BY created_us, k"
        ):
            if used <= limit:
                break
            doomed.append((k,))
            used -= entry_bytes(dim, row)
        self._db.executemany("DELETE FROM entries WHERE k = ?", doomed)
        # Not counted in ``removals``: an evicted entry is still a right answer, and a full
        # cache evicts on every fill, so readers would forget what they hold every second.
        return len(doomed)

    def clear(self) -> tuple[int, list[int]]:
        """Delete every entry and segment, and set the snapshot aside; returns how many
        entries there were and the ids of the segments."""
        removed = sum(entries for _, _, entries, _ in counts.groups(self._db))
        old = self._state("index_snapshot")
        # A new generation: a snapshot being taken meanwhile is not installed.
        self._set_state(
            index_snapshot=None, snapshot=None, index_rows=0, index_since=0, index_removed=0,
            generation=(self._state("generation") or 0) + 1,
        )  # fmt: skip
        if old is not None:
            self._stale_snapshots.append(old)
        self._db.execute("DELETE FROM entries")
        self._db.execute("DELETE FROM removed")
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
        """``(id, dim, rows, live rows)`` of every segment (of a heap: bytes, live bytes).
        A pass over the ``entries_seg`` index (seconds at 10M entries), on a connection of
        its own and without the write lock: nobody waits for it."""
        db = _connect(self.directory / "index.db", self.read_only)
        try:
            with self._errors("read"):
                db.execute("BEGIN")
                segments = db.execute("SELECT id, dim, rows FROM segments").fetchall()
                live = dict(db.execute("SELECT seg, COUNT(*) FROM entries GROUP BY seg"))
                heaps = ",".join(str(int(seg)) for seg, dim, _ in segments if dim == HEAP_DIM)
                live.update(db.execute(
                    f"SELECT seg, SUM({SQL_ENTRY_BYTES.format(r='entries')}) FROM entries "  # noqa: S608
                    f"WHERE seg IN ({heaps}) GROUP BY seg"
                ) if heaps else ())  # fmt: skip
                db.execute("COMMIT")
        finally:
            db.close()
        return [(seg, dim, rows, int(live.get(seg, 0))) for seg, dim, rows in segments]

    def move(self, keys: list[int], seg: int, start: int) -> None:
        """Point the entries of primary keys ``keys`` at rows ``start...`` of ``seg``."""
        self._db.executemany(
            "UPDATE entries SET seg = ?, row = ? WHERE k = ?",
            [(seg, start + i, k) for i, k in enumerate(keys)],
        )

    def drop_segment(self, seg: int) -> None:
        self._db.execute("DELETE FROM segments WHERE id = ?", (seg,))
