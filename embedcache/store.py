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
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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
"""
# Every column is an integer, so fetched rows become one int64 array in a single call.
# Queries interpolate only this constant and "?" placeholders (hence the S608 waivers).
_COLUMNS = "k, lo, seg, row, dim, millitokens, created_us, fp, checksum"
_K, _LO, _SEG, _ROW, _DIM, _MILLITOKENS, _CREATED_US, _FP, _CHECKSUM = range(9)

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
        count = len(keys)
        split = _split(keys) if count else np.empty((0, 2), dtype=np.int64)
        rows = self._lookup(split[:, 0])
        present = np.zeros(count, dtype=bool)
        matched = np.zeros((count, 9), dtype=np.int64)
        if len(rows):
            # Join the index rows back to the keys asked for, in numpy rather than a dict.
            rows = rows[np.argsort(rows[:, _K], kind="stable")]
            at = np.minimum(np.searchsorted(rows[:, _K], split[:, 0]), len(rows) - 1)
            matched = rows[at]
            present = (matched[:, _K] == split[:, 0]) & (matched[:, _LO] == split[:, 1])
            if dim is None and present.any():
                dim = int(matched[present][0, _DIM])
            present &= matched[:, _DIM] == (dim or 0)
        tokens = np.where(present, matched[:, _MILLITOKENS] / 1000.0, 0.0)
        vectors = self._gather(matched, present, dim or 0)
        self._verify(matched, vectors, present)
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
        split = _split(keys)
        rows = self._lookup(split[:, 0])
        known = {(int(r[0]), int(r[1])) for r in rows}
        return [(int(hi), int(lo)) in known for hi, lo in split]

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
            vector = np.array(self._segment(seg, dim, number)[number], dtype=np.float32)
        except (OSError, IndexError, ValueError) as exc:
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
                         round(tokens * 1000), now_us, fp_id, _checksum(matrix[i]))
                        for i, (_, _, tokens) in enumerate(group)
                    ],
                )  # fmt: skip
            self._evict()

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
            return int(self._db.total_changes - before)

    def clear(self) -> int:
        """Delete every entry and segment file; returns how many entries were removed.
        Lifetime counters stay."""
        with self._write():
            removed = int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
            self._db.execute("DELETE FROM entries")
            segments = [row[0] for row in self._db.execute("SELECT id FROM segments")]
            self._db.execute("DELETE FROM segments")
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

    def _lookup(self, high: NDArray[np.int64]) -> NDArray[np.int64]:
        """Index rows whose primary key is among ``high``, one int64 row each."""
        found: list[tuple[int, ...]] = []
        values = high.tolist()
        with self._lock, self._errors("read"):
            for start in range(0, len(values), _CHUNK):
                part = values[start : start + _CHUNK]
                marks = ",".join("?" * len(part))
                found += self._db.execute(
                    f"SELECT {_COLUMNS} FROM entries WHERE k IN ({marks})",  # noqa: S608
                    part,
                ).fetchall()
        return np.array(found, dtype=np.int64).reshape(-1, 9)

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
            return np.asarray(self._segment(seg, dim, int(rows.max()))[rows], dtype=np.float32)
        except (OSError, IndexError, ValueError) as exc:
            # Unreadable rows come back as zeros, which fail their checksum: they refetch.
            log.warning("cannot read segment %d: %s", seg, exc)
            return np.zeros((len(rows), dim), dtype=np.float32)

    @staticmethod
    def _verify(
        matched: NDArray[np.int64], out: NDArray[np.float32], present: NDArray[np.bool_]
    ) -> None:
        digest = xxhash.xxh3_64_intdigest
        where = np.flatnonzero(present).tolist()
        expected = matched[present, _CHECKSUM].view(np.uint64).tolist()
        for i, checksum in zip(where, expected, strict=True):
            if digest(out[i].data) != checksum:
                log.warning("ignoring damaged cache entry (checksum mismatch)")
                present[i] = False
                out[i] = 0

    def _segment(self, seg: int, dim: int, need_row: int = -1) -> NDArray[np.float32]:
        """A read-only map of a segment file, remapped when it has grown past ``need_row``."""
        with self._lock:
            mapped = self._maps.get(seg)
            if mapped is None or need_row >= len(mapped):
                path = self._segments / f"{seg}.f32"
                rows = path.stat().st_size // (4 * dim)
                mapped = np.memmap(path, dtype="<f4", mode="r", shape=(rows, dim))
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

    def _evict(self) -> None:
        limit = self.size_limit
        if limit is None:
            return
        used = self._db.execute("SELECT COALESCE(SUM(dim), 0) * 4 FROM entries").fetchone()[0]
        if used <= limit:
            return
        doomed = []
        for k, dim in self._db.execute("SELECT k, dim FROM entries ORDER BY created_us, k"):
            if used <= limit:
                break
            doomed.append((k,))
            used -= dim * 4
        self._db.executemany("DELETE FROM entries WHERE k = ?", doomed)

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        with self._lock, self._errors("write"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

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
