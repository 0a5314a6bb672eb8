"""The on-disk cache: the only module that knows how vectors and their metadata are laid out.

A cache directory holds::

    embedcache.json     format and key versions it was written with
    index.db            SQLite (WAL): one row per vector, and the list of segment files
    segments/<id>.f32   vectors as raw little-endian float32, one fixed-size row each
    meta/               a diskcache with the small values: request settings and counters

Why not one diskcache entry per vector: a warm read is then one SQL statement per text, 10-15x
the floor of hashing and copying (shared/docs/perf-baseline.md). Here a read is one
``IN (...)`` query per 500 keys and one numpy gather per segment.

An index row holds the key (as two signed 64-bit integers: the high half is the primary key),
the segment and row of the vector, its dimension, the tokens attributed to it when fetched,
when it was stored, the id of the request settings that produced it, and an xxh3-64 checksum
of its bytes, verified on every read: a damaged vector reads as missing and is refetched.

Writers append to segment files while holding SQLite's write lock and commit the index rows
after the bytes are written, so readers only ever follow rows that are complete, and several
processes can share a directory. Nothing is rewritten in place: deleting leaves dead rows,
which :meth:`Store.compact` copies away into new segment files. Reads never write. Nothing is
evicted unless a size limit is set; then the least recently *stored* entries go first.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import mmap
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache
import numpy as np
import xxhash
from numpy.typing import NDArray

from .config import KEY_VERSION, resolve_cache_dir
from .errors import CacheError, CacheFormatError
from .keys import Fingerprint

__all__ = ["COUNTERS", "FORMAT_VERSION", "MARKER_NAME", "Found", "Record", "Store"]

FORMAT_VERSION = 2
MARKER_NAME = "embedcache.json"
#: Lifetime counters kept by :meth:`Store.add_counters`.
COUNTERS = ("hits", "misses", "requests", "tokens_spent", "tokens_saved")

_CHUNK = 500  # keys per IN (...) query: SQLite's bound-parameter limit is 999 on old builds
_SEGMENT_BYTES = 1 << 30
# Up to this many rows, read them one by one; beyond, map the segment with its page
# tables populated at once: faulting in a 400 MB map page by page costs ~10x the copy.
_PREAD_MAX_ROWS = 256
_FINGERPRINT_PREFIX = "fingerprint:"
_COUNTER_PREFIX = "counter:"
_SIZE_LIMIT = "size_limit"
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
# Every column is an integer, so fetched rows become one int64 array in a single call.
# Queries interpolate only these constants and "?" placeholders (hence the S608 waivers).
_COLUMNS = "k, lo, seg, row, dim, millitokens, checksum, created_us, fp"
_K, _LO, _SEG, _ROW, _DIM, _MILLITOKENS, _CHECKSUM, _CREATED_US, _FP = range(9)
# A warm read needs neither when nor under which settings an entry was stored: fewer
# columns make fewer Python objects per row.
_READ_COLUMNS = "k, lo, seg, row, dim, millitokens, checksum"

log = logging.getLogger("embedcache")


@dataclass(frozen=True)
class Record:
    """One cached vector with its metadata.

    :ivar vector: float32 vector (read-only).
    :ivar tokens: tokens attributed to this text when it was fetched (an estimate within a
        batch: the batch's usage apportioned by text length).
    :ivar created: when it was stored, Unix seconds.
    :ivar fingerprint_id: id of the request settings that produced it.
    """

    vector: NDArray[np.float32]
    tokens: float
    created: float
    fingerprint_id: int


@dataclass(frozen=True)
class Found:
    """The result of :meth:`Store.read_many`, aligned with the keys asked for.

    :ivar present: whether each key was found intact (and of the requested dimension).
    :ivar vectors: ``(len(keys), d)``; rows of absent keys are zero.
    :ivar tokens: tokens recorded for each key; 0 for absent keys.
    """

    present: NDArray[np.bool_]
    vectors: NDArray[np.float32]
    tokens: NDArray[np.float64]


def _split(keys: Sequence[bytes]) -> NDArray[np.int64]:
    """16-byte keys as ``(n, 2)`` signed 64-bit integers (high half first)."""
    return np.frombuffer(b"".join(keys), dtype="<i8").reshape(-1, 2).astype(np.int64)


def _join(hi: int, lo: int) -> bytes:
    return np.array([hi, lo], dtype="<i8").tobytes()


def _signed(value: int) -> int:
    """An unsigned 64-bit value as the signed integer SQLite can hold."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _unsigned(value: int) -> int:
    return value & 0xFFFF_FFFF_FFFF_FFFF


def _checksum(vector: NDArray[np.float32]) -> int:
    return _signed(xxhash.xxh3_64_intdigest(np.ascontiguousarray(vector).data))


class Store:
    """A directory of cached vectors; safe to share between threads and processes.

    :param directory: where the cache lives; default from ``EMBEDCACHE_DIR`` or the platform
        user cache directory. Created with mode 0700 when missing.
    :param size_limit: bytes of vectors above which the oldest stored entries are evicted.
        ``None`` keeps the directory's setting (a new cache has no limit); ``0`` removes it.
    :raises CacheFormatError: the directory was written by an incompatible version.
    :raises CacheError: the directory cannot be created or opened.
    """

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, *, size_limit: int | None = None
    ) -> None:
        if size_limit is not None and size_limit < 0:
            raise CacheError(f"size_limit must be 0 (none) or a positive byte count: {size_limit}")
        self.directory = resolve_cache_dir(directory)
        self._lock = threading.RLock()
        self._maps: dict[int, NDArray[np.float32]] = {}
        self._known_fingerprints: set[int] = set()
        self._snapshot_cache: tuple[int, NDArray[np.int64]] | None = None
        self._stale_snapshots: list[int] = []
        self._check_or_create_marker()
        self._segments = self.directory / "segments"
        try:
            self._segments.mkdir(mode=0o700, exist_ok=True)
            self._db = sqlite3.connect(
                self.directory / "index.db",
                timeout=60,
                isolation_level=None,
                check_same_thread=False,
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA cache_size=-65536")
            self._db.executescript(_SCHEMA)
            self._meta: Any = diskcache.Cache(
                str(self.directory / "meta"), eviction_policy="none", statistics=False
            )
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            raise CacheError(f"cannot open cache at {self.directory}: {exc}") from exc
        if size_limit is not None:
            self._meta.set(_SIZE_LIMIT, size_limit or None)
        self._restrict_permissions()

    def __repr__(self) -> str:
        return f"Store({str(self.directory)!r}, size_limit={self.size_limit!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connections and file maps; the directory stays."""
        with self._lock:
            self._maps.clear()
            self._db.close()
            self._meta.close()

    @property
    def size_limit(self) -> int | None:
        """Bytes of vectors above which entries are evicted; ``None``: never evicted."""
        limit = self._meta.get(_SIZE_LIMIT)
        return int(limit) if limit else None

    # Reading

    def read_many(self, keys: Sequence[bytes], dim: int | None = None) -> Found:
        """Look up every key and gather the vectors of those present into one array.

        :param dim: the dimension expected; entries of another size read as absent. ``None``
            takes the size of the first entry found.
        """
        split = _split(keys) if keys else np.empty((0, 2), dtype=np.int64)
        matched, present, from_snapshot = self._find(split)
        if dim is None and present.any():
            dim = int(matched[present][0, _DIM])
        present &= matched[:, _DIM] == (dim or 0)
        vectors = self._gather(matched, present, dim or 0)
        damaged = self._verify(matched, vectors, present)
        if damaged and from_snapshot:
            # The snapshot may predate a refetch of these entries: ask the index itself.
            again, found, _ = self._find(split[damaged], use_snapshot=False)
            found &= again[:, _DIM] == (dim or 0)
            fixed = np.asarray(damaged)[found]
            if len(fixed):
                matched[fixed] = again[found]
                vectors[fixed] = self._gather(again[found], np.ones(len(fixed), bool), dim or 0)
                recheck = np.zeros(len(matched), dtype=bool)
                recheck[fixed] = True
                present |= recheck
                present[self._verify(matched, vectors, recheck)] = False
        tokens = np.where(present, matched[:, _MILLITOKENS] / 1000.0, 0.0)
        return Found(present, vectors, tokens)

    def get_many(self, keys: Sequence[bytes]) -> list[Record | None]:
        """Look up each key, of whatever dimension; ``None`` when absent or damaged."""
        if not keys:
            return []
        split = _split(keys)
        rows = {(int(r[_K]), int(r[_LO])): r for r in self._lookup(split[:, 0])}
        out: list[Record | None] = []
        for hi, lo in split.tolist():
            row = rows.get((hi, lo))
            found = None if row is None else self._record(row)
            out.append(found if isinstance(found, Record) else None)
        return out

    def contains_many(self, keys: Sequence[bytes]) -> list[bool]:
        """Whether each key has an entry (without reading or checking its vector)."""
        if not keys:
            return []
        return [bool(found) for found in self._find(_split(keys))[1]]

    def scan(self, batch: int = 2048) -> Iterator[tuple[bytes, Record | str]]:
        """Every entry as ``(key, record)``, or ``(key, reason)`` for a damaged one."""
        # Page by primary key: the first page takes the smallest key (>=), later ones the
        # keys after the last seen (>).
        last, compare = -(1 << 63), ">="
        while True:
            with self._lock, self._errors("read"):
                rows = self._db.execute(
                    f"SELECT {_COLUMNS} FROM entries WHERE k {compare} ? ORDER BY k LIMIT ?",  # noqa: S608
                    (last, batch),
                ).fetchall()
            compare = ">"
            if not rows:
                return
            last = rows[-1][0]
            for row in np.array(rows, dtype=np.int64):
                yield _join(int(row[_K]), int(row[_LO])), self._record(row)

    def _record(self, row: NDArray[np.int64]) -> Record | str:
        """The entry an index row describes, or why it cannot be read."""
        seg, number, dim = int(row[_SEG]), int(row[_ROW]), int(row[_DIM])
        try:
            vector = self._read_rows(seg, dim, np.array([number]))[0]
        except (OSError, ValueError) as exc:
            return f"vector unreadable ({type(exc).__name__}: {exc})"
        if _checksum(vector) != row[_CHECKSUM]:
            return "entry checksum mismatch"
        vector.flags.writeable = False
        return Record(
            vector, row[_MILLITOKENS] / 1000.0, row[_CREATED_US] / 1e6, _unsigned(int(row[_FP]))
        )

    def __len__(self) -> int:
        """Number of cached vectors."""
        with self._lock, self._errors("read"):
            return int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def volume(self) -> int:
        """Bytes the cache occupies on disk."""
        return sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file())

    # Writing

    def put_many(
        self, fp: Fingerprint, entries: Sequence[tuple[bytes, NDArray[np.float32], float]]
    ) -> None:
        """Write ``(key, vector, tokens)`` entries produced under ``fp`` in one transaction."""
        if fp.id not in self._known_fingerprints:
            with self._errors("write"):
                self._meta.set(f"{_FINGERPRINT_PREFIX}{fp.id:016x}", fp.canonical)
            self._known_fingerprints.add(fp.id)
        by_dim: dict[int, list[tuple[bytes, NDArray[np.float32], float]]] = {}
        for entry in entries:
            by_dim.setdefault(len(entry[1]), []).append(entry)
        now_us = int(time.time() * 1e6)
        fp_id = _signed(fp.id)
        with self._write():
            for dim, group in by_dim.items():
                matrix = np.ascontiguousarray(np.stack([v for _, v, _ in group]), dtype="<f4")
                seg, start = self._append(dim, matrix)
                split = _split([key for key, _, _ in group])
                self._db.executemany(
                    f"INSERT OR REPLACE INTO entries ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",  # noqa: S608
                    [
                        (int(split[i, 0]), int(split[i, 1]), seg, start + i, dim,
                         round(tokens * 1000), _checksum(matrix[i]), now_us, fp_id)
                        for i, (_, _, tokens) in enumerate(group)
                    ],
                )  # fmt: skip
            if self._evict():
                self._rebuild_snapshot()
            else:
                self._maybe_snapshot(len(entries))

    def delete_many(self, keys: Sequence[bytes]) -> int:
        """Delete entries in one transaction; returns how many existed. Their space is
        reclaimed by :meth:`compact`."""
        if not keys:
            return 0
        split = _split(keys)
        with self._write():
            before = self._db.total_changes
            self._db.executemany(
                "DELETE FROM entries WHERE k = ? AND lo = ?",
                [(int(hi), int(lo)) for hi, lo in split],
            )
            removed = int(self._db.total_changes - before)
            if removed:
                self._rebuild_snapshot()
            return removed

    def clear(self) -> int:
        """Delete every entry and segment file; returns how many entries were removed.
        Lifetime counters stay."""
        with self._write():
            removed = int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
            self._db.execute("DELETE FROM entries")
            segments = [row[0] for row in self._db.execute("SELECT id FROM segments")]
            self._db.execute("DELETE FROM segments")
            self._rebuild_snapshot()
        self._unlink_segments(segments)
        return removed

    def compact(self, min_dead_fraction: float = 0.5) -> int:
        """Copy the live rows of segments that are at least ``min_dead_fraction`` dead into
        new segments and delete the old files. Returns the bytes freed."""
        freed = 0
        with self._write():
            stats = self._db.execute(
                "SELECT s.id, s.dim, s.rows, COUNT(e.k) FROM segments s "
                "LEFT JOIN entries e ON e.seg = s.id GROUP BY s.id"
            ).fetchall()
            doomed = []
            for seg, dim, rows, live in stats:
                if rows and (rows - live) / rows >= min_dead_fraction:
                    moved = self._db.execute(
                        "SELECT k, row FROM entries WHERE seg = ? ORDER BY row", (seg,)
                    ).fetchall()
                    if moved:
                        matrix = self._segment(seg, dim)[[row for _, row in moved]]
                        new, start = self._append(dim, matrix, avoid=seg)
                        self._db.executemany(
                            "UPDATE entries SET seg = ?, row = ? WHERE k = ?",
                            [(new, start + i, k) for i, (k, _) in enumerate(moved)],
                        )
                    self._db.execute("DELETE FROM segments WHERE id = ?", (seg,))
                    doomed.append(seg)
                    freed += (rows - live) * dim * 4
            if doomed:
                self._rebuild_snapshot()
        self._unlink_segments(doomed)
        return freed

    # Metadata

    def add_counters(self, deltas: dict[str, int]) -> None:
        """Add to the lifetime counters in one transaction."""
        if not any(deltas.values()):
            return  # not even the write lock: a read-only cache stays usable
        with self._errors("write"), self._meta.transact():
            for name, delta in deltas.items():
                if delta:
                    self._meta.incr(f"{_COUNTER_PREFIX}{name}", delta)

    def counters(self) -> dict[str, int]:
        """The lifetime counters, every one of :data:`COUNTERS` present."""
        with self._errors("read"):
            return {name: int(self._meta.get(f"{_COUNTER_PREFIX}{name}", 0)) for name in COUNTERS}

    def fingerprints(self) -> dict[int, dict[str, object]]:
        """The request settings of every fingerprint that has been stored, by id."""
        out: dict[int, dict[str, object]] = {}
        with self._errors("read"):
            for key in self._meta.iterkeys():
                if isinstance(key, str) and key.startswith(_FINGERPRINT_PREFIX):
                    fp_id = int(key[len(_FINGERPRINT_PREFIX) :], 16)
                    out[fp_id] = json.loads(self._meta[key])["request"]
        return out

    # Internals

    def _find(
        self, split: NDArray[np.int64], use_snapshot: bool = True
    ) -> tuple[NDArray[np.int64], NDArray[np.bool_], bool]:
        """Read columns of the index row of each key, whether it has one, and whether the
        snapshot answered any of them."""
        matched = np.zeros((len(split), _READ_COLUMNS.count(",") + 1), dtype=np.int64)
        present = np.zeros(len(split), dtype=bool)
        snapshot = self._snapshot() if use_snapshot else None
        if snapshot is not None and snapshot.shape[1]:
            at = np.minimum(np.searchsorted(snapshot[_K], split[:, 0]), snapshot.shape[1] - 1)
            present = (snapshot[_K][at] == split[:, 0]) & (snapshot[_LO][at] == split[:, 1])
            matched = np.ascontiguousarray(snapshot[:, at].T)
        todo = np.flatnonzero(~present)
        if len(todo):
            rows = self._lookup(split[todo, 0], _READ_COLUMNS)
            if len(rows):
                rows = rows[np.argsort(rows[:, _K], kind="stable")]
                at = np.minimum(np.searchsorted(rows[:, _K], split[todo, 0]), len(rows) - 1)
                hit = (rows[at, _K] == split[todo, 0]) & (rows[at, _LO] == split[todo, 1])
                matched[todo[hit]] = rows[at[hit]]
                present[todo[hit]] = True
        return matched, present, snapshot is not None

    def _snapshot(self) -> NDArray[np.int64] | None:
        """The current snapshot (memory-mapped), or ``None`` when there is none."""
        with self._lock, self._errors("read"):
            row = self._db.execute("SELECT value FROM state WHERE name = 'snapshot'").fetchone()
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

    def _maybe_snapshot(self, added: int) -> None:
        """After inserting (in a write transaction): rebuild the snapshot when it lags."""
        since = (self._state("since_snapshot") or 0) + added
        held = self._state("snapshot_rows") or 0
        if since >= max(_SNAPSHOT_MIN_ROWS, held // _SNAPSHOT_GROWTH):
            self._rebuild_snapshot()
        else:
            self._set_state(since_snapshot=since)

    def _rebuild_snapshot(self) -> None:
        """Write a snapshot of the index as it is in this write transaction."""
        old = self._state("snapshot")
        generation = (self._state("generation") or 0) + 1
        cursor = self._db.execute(f"SELECT {_READ_COLUMNS} FROM entries ORDER BY k")  # noqa: S608
        width = _READ_COLUMNS.count(",") + 1
        flat = np.fromiter(itertools.chain.from_iterable(cursor), dtype=np.int64)
        columns = np.ascontiguousarray(flat.reshape(-1, width).T)
        path = self._snapshot_path(generation)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, columns)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        self._set_state(
            generation=generation, snapshot=generation, snapshot_rows=columns.shape[1],
            since_snapshot=0,
        )  # fmt: skip
        if old is not None:
            self._stale_snapshots.append(old)

    def _lookup(self, high: NDArray[np.int64], columns: str = _COLUMNS) -> NDArray[np.int64]:
        """Index rows whose primary key is among ``high``, one int64 row each."""
        found: list[tuple[int, ...]] = []
        values = high.tolist()
        with self._lock, self._errors("read"):
            for start in range(0, len(values), _CHUNK):
                part = values[start : start + _CHUNK]
                marks = ",".join("?" * len(part))
                found += self._db.execute(
                    f"SELECT {columns} FROM entries WHERE k IN ({marks})",  # noqa: S608
                    part,
                ).fetchall()
        return np.array(found, dtype=np.int64).reshape(-1, columns.count(",") + 1)

    def _gather(
        self, matched: NDArray[np.int64], present: NDArray[np.bool_], dim: int
    ) -> NDArray[np.float32]:
        segments = np.unique(matched[present, _SEG])
        if len(segments) == 1 and present.all():
            # The common warm read: one gather straight into the result.
            return self._rows(int(segments[0]), dim, matched[:, _ROW])
        out = np.zeros((len(matched), dim), dtype=np.float32)
        for seg in segments:
            mine = present & (matched[:, _SEG] == seg)
            out[mine] = self._rows(int(seg), dim, matched[mine, _ROW])
        return out

    def _rows(self, seg: int, dim: int, rows: NDArray[np.int64]) -> NDArray[np.float32]:
        try:
            if len(rows) <= _PREAD_MAX_ROWS:
                return self._read_rows(seg, dim, rows)
            return np.asarray(self._segment(seg, dim, int(rows.max()))[rows], dtype=np.float32)
        except (OSError, IndexError, ValueError) as exc:
            # Unreadable rows come back as zeros, which fail their checksum: they refetch.
            log.warning("cannot read segment %d: %s", seg, exc)
            return np.zeros((len(rows), dim), dtype=np.float32)

    @staticmethod
    def _verify(
        matched: NDArray[np.int64], out: NDArray[np.float32], present: NDArray[np.bool_]
    ) -> list[int]:
        """Mark entries whose bytes fail their checksum as absent; returns their positions."""
        digest: Any = xxhash.xxh3_64_intdigest  # takes any buffer; typeshed says bytes-like
        where = np.flatnonzero(present)
        expected = matched[where, _CHECKSUM].view(np.uint64).tolist()
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

    def _read_rows(self, seg: int, dim: int, rows: NDArray[np.int64]) -> NDArray[np.float32]:
        """Read a few rows with positioned reads: no mapping to set up."""
        out = np.empty((len(rows), dim), dtype="<f4")
        with open(self._segments / f"{seg}.f32", "rb", buffering=0) as handle:
            for i, row in enumerate(rows.tolist()):
                handle.seek(row * dim * 4)
                if handle.readinto(out[i]) != dim * 4:
                    raise ValueError(f"row {row} of segment {seg} is past its end")
        return out.astype(np.float32, copy=False)

    def _segment(self, seg: int, dim: int, need_row: int = -1) -> NDArray[np.float32]:
        """A read-only map of a segment file, remapped when it has grown past ``need_row``."""
        with self._lock:
            mapped = self._maps.get(seg)
            if mapped is None or need_row >= len(mapped):
                with open(self._segments / f"{seg}.f32", "rb") as handle:
                    size = os.fstat(handle.fileno()).st_size // (4 * dim) * (4 * dim)
                    if hasattr(mmap, "MAP_POPULATE"):
                        view = mmap.mmap(
                            handle.fileno(), size, prot=mmap.PROT_READ,
                            flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                        )  # fmt: skip
                    else:
                        view = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ)
                mapped = np.frombuffer(view, dtype="<f4").reshape(-1, dim)
                self._maps[seg] = mapped
            return mapped

    def _append(
        self, dim: int, matrix: NDArray[np.float32], avoid: int | None = None
    ) -> tuple[int, int]:
        """Write rows at the end of the open segment for ``dim`` (in a write transaction)."""
        row = self._db.execute(
            "SELECT id, rows FROM segments WHERE dim = ? ORDER BY id DESC LIMIT 1", (dim,)
        ).fetchone()
        if row is None or row[0] == avoid or (row[1] + len(matrix)) * dim * 4 > _SEGMENT_BYTES:
            seg = self._db.execute("INSERT INTO segments (dim) VALUES (?)", (dim,)).lastrowid
            start = 0
        else:
            seg, start = row
        assert seg is not None
        path = self._segments / f"{seg}.f32"
        # Rows past the recorded count are leftovers of a crashed writer: overwrite them.
        with open(path, "r+b" if path.exists() else "wb") as handle:
            os.chmod(path, 0o600)
            handle.seek(start * dim * 4)
            handle.write(matrix.tobytes())
        self._db.execute("UPDATE segments SET rows = ? WHERE id = ?", (start + len(matrix), seg))
        return int(seg), int(start)

    def _evict(self) -> bool:
        """Delete the oldest entries above the size limit; returns whether any went."""
        limit = self.size_limit
        if limit is None:
            return False
        used = self._db.execute("SELECT COALESCE(SUM(dim), 0) * 4 FROM entries").fetchone()[0]
        if used <= limit:
            return False
        doomed = []
        for k, dim in self._db.execute("SELECT k, dim FROM entries ORDER BY created_us, k"):
            if used <= limit:
                break
            doomed.append((k,))
            used -= dim * 4
        self._db.executemany("DELETE FROM entries WHERE k = ?", doomed)
        return True

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
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

    def _unlink_segments(self, segments: list[int]) -> None:
        with self._lock:
            for seg in segments:
                self._maps.pop(seg, None)
                with contextlib.suppress(OSError):
                    (self._segments / f"{seg}.f32").unlink()

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            # diskcache.Timeout: another process held the database lock for too long.
            reason = str(exc) or type(exc).__name__
            raise CacheError(f"cannot {action} cache at {self.directory}: {reason}") from exc

    def _check_or_create_marker(self) -> None:
        """Check the directory's versions; create it and its marker when new."""
        marker = self.directory / MARKER_NAME
        expected = {"format_version": FORMAT_VERSION, "key_version": KEY_VERSION}
        try:
            if marker.exists():
                found = json.loads(marker.read_text(encoding="utf-8"))
                versions = {name: found.get(name) for name in expected}
                if versions != expected:
                    raise CacheFormatError(
                        f"cache at {self.directory} was written with {versions}, this "
                        f"embedcache uses {expected}: choose another cache directory or "
                        "delete this one"
                    )
                return
            if self.directory.exists() and any(self.directory.iterdir()):
                raise CacheFormatError(
                    f"{self.directory} is not empty and has no {MARKER_NAME}: not an "
                    "embedcache directory"
                )
            created = not self.directory.exists()
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            if created:
                os.chmod(self.directory, 0o700)  # mkdir's mode is filtered by the umask
            tmp = marker.with_name(f".{MARKER_NAME}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(expected) + "\n", encoding="utf-8")
            os.chmod(tmp, 0o600)
            os.replace(tmp, marker)
        except json.JSONDecodeError as exc:
            raise CacheFormatError(f"{marker} is not valid JSON: {exc}") from exc
        except OSError as exc:
            raise CacheError(f"cannot prepare cache at {self.directory}: {exc}") from exc

    def _restrict_permissions(self) -> None:
        # Created under the process umask; vectors can reveal the texts they embed.
        for path in self.directory.rglob("*"):
            with contextlib.suppress(OSError):
                os.chmod(path, 0o700 if path.is_dir() else 0o600)
