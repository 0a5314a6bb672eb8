"""The on-disk cache, and the description of how vectors and their metadata are laid out.

A cache directory holds::

    embedcache.json     format and key versions: the oldest embedcache that reads it all
    index.db            SQLite (WAL): one row per vector, the list of segment files, the
                        totals kept in each write (entries per settings, vector bytes, keys
                        removed since the snapshot: :mod:`~embedcache.storage.counts`),
                        the ``state`` of the snapshot and of ``removals`` (below), and
                        ``fingerprints``, what each entry's fingerprint id means, written
                        with the entries (:mod:`~embedcache.storage.fingerprints`)
    snapshot-<n>.npy    the index's read columns sorted by key, for vectorized lookups
    snapshot.lock       empty; locked (``flock``) by the process taking a new snapshot
    segments/<id>.f32   vectors as raw little-endian float32, one fixed-size row each
    segments/<id>.heap  payloads of other kinds, their bytes one after another (below)
    meta/               a diskcache with the small values (:mod:`~embedcache.storage.meta`):
                        lifetime counters, named settings (:meth:`Store.setting`), the size
                        limit, and a legacy copy of the fingerprints for older versions
    claims.db           SQLite (WAL): the keys being fetched right now, by any process
    claims.lock         empty; a byte locked by each batch in flight (``fcntl.lockf``)

Why not one diskcache entry per vector: a warm read is then one SQL statement per text, 10-15x
the floor of hashing and copying (shared/docs/perf-baseline.md). Here a read is one
``np.searchsorted`` over the snapshot for all keys (an ``IN (...)`` query per 500 keys only
for those newer than it or deleted since), one numpy gather per segment and one checksum per
vector. The snapshot is taken outside the write lock (:mod:`~embedcache.storage.snapshot`).

An index row holds the key (as two signed 64-bit integers: the high half is the primary key),
the segment and row of the vector, its dimension, the tokens attributed to it when fetched,
when it was stored, the id of the request settings that produced it, and an xxh3-64 checksum
of its bytes, verified on every read: a damaged vector reads as missing and is refetched.

Writers append to segment files while holding SQLite's write lock and commit the index rows
after the bytes are written, so readers only ever follow rows that are complete, and several
processes can share a directory. The claims files, created by the first fetch, let those
processes send at most one request per entry at a time (:mod:`~embedcache.storage.claims`:
a claim counts only while its process lives, so a crash leaves none behind; reading or
writing vectors never touches them). Nothing is rewritten in place: deleting leaves dead rows,
which :meth:`Store.compact` copies away into new segment files. Deleting and compacting run
in short transactions with pauses between (:mod:`~embedcache.storage.upkeep`), so writers
sharing the directory wait a fraction of a second at most. Reads never write. Nothing is
evicted unless a size limit is set; then the least recently *stored* entries go first. A
limit counts the bytes of the vectors, :func:`~embedcache.storage.formats.entry_bytes` each,
as ``embedcache prune --max-size`` does.

Entries of two more kinds, *payloads*, are stored exactly (dtype, shape, bytes): **ragged**
float32 (``n`` rows of one width: a multi-vector answer, one row per token) and **bytes**
(1-D or 2-D int8/uint8: packed bits of the ``binary``/``ubinary`` types). A put appends a
group's bytes to the open heap; the index row keeps its columns, read differently: ``row``
is the byte offset and the row count (``offset << 24 | n``), ``dim`` a negative code of the
kind and row width, the same for every entry of that kind and width (so the per-settings
totals stay a few rows), ``checksum`` the xxh3-64 of its bytes
(:mod:`~embedcache.storage.payloads`). No read of vectors of a dimension matches one, so
today's read path and snapshot are unchanged; :meth:`Store.read_payloads` reads any kind.
They count their own bytes against a size limit, are listed, checked, deleted, evicted and
compacted (a heap's live bytes copied to a new heap) as vectors are. A directory is marked
format 2 until its first payload is stored, then 3 (:data:`PAYLOAD_FORMAT_VERSION`): older
versions keep using a cache of vectors, and refuse one holding payloads.

Every transaction that deletes entries (:meth:`Store.delete_pages` and
:meth:`Store.delete_many`, so ``prune`` and ``verify --repair``; :meth:`Store.clear`, even
of an empty cache) also adds one to the ``removals`` row of ``index.db``'s ``state`` table,
in the same commit: a process holding entries in memory (the proxy's answers) polls
:meth:`Store.removals` and forgets them when it changes. A deletion stopped part-way has
counted every page it committed. Eviction under a size limit is not counted: an evicted
entry is still a right answer, and a full cache evicts on every fill.

:class:`Store` composes the parts, which nothing outside :mod:`embedcache.storage` imports:
:mod:`~embedcache.storage.index` (``index.db``; its snapshots in
:mod:`~embedcache.storage.snapshot`, its totals in :mod:`~embedcache.storage.counts`, what
its keys mean in :mod:`~embedcache.storage.fingerprints`), :mod:`~embedcache.storage.meta`
(``meta/``), :mod:`~embedcache.storage.entries` (the shapes of an entry it reads and takes),
:mod:`~embedcache.storage.upkeep` (deleting and compacting in short transactions),
:mod:`~embedcache.storage.rows` (what an index row holds), :mod:`~embedcache.storage.segments`
(the segment files), :mod:`~embedcache.storage.records` (entries read one by one) and
:mod:`~embedcache.storage.directory` (the marker and permissions);
:attr:`Store.claims` hands out the directory's :mod:`~embedcache.storage.claims`.
Inside it, the shared tier reuses the vector checksum of :mod:`~embedcache.storage.rows`, so
a vector checks the same in Redis as on disk.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Container, Iterable, Iterator, Sequence

import diskcache
import numpy as np
from numpy.typing import NDArray

from ..cache_keys import Fingerprint
from ..config import KEY_VERSION, resolve_cache_dir
from ..errors import CacheError, InvalidInputError
from . import heaps, upkeep
from .bookkeeping import Bookkeeping
from .claims import Claims, claims_for
from .directory import check_or_create_marker, raise_marker, restrict_permissions
from .entries import Found, FoundPayloads, KeyedVectors, Record, Stored
from .formats import entry_bytes, signed, split_keys, unsigned, vector_checksums
from .index import Index
from .meta import COUNTERS, Meta
from .payloads import Payload, dimensions
from .records import page_records, page_stored, read_record
from .rows import DIM, LO, MILLITOKENS, ROW, SEG, K, verify
from .segments import Segments, fits
from .tuning import COMPACT_ROWS, DELETE_PAGE, Tuning, default_tuning
from .upkeep import LOCK_PAUSE_SECONDS

__all__ = [
    "COMPACT_ROWS",
    "COUNTERS",
    "DELETE_PAGE",
    "FORMAT_VERSION",
    "LOCK_PAUSE_SECONDS",
    "MARKER_NAME",
    "PAYLOAD_FORMAT_VERSION",
    "Found",
    "FoundPayloads",
    "KeyedVectors",
    "Record",
    "Store",
    "Stored",
    "entry_bytes",
]

#: The format a new cache is marked with, and the shared tier's namespace says.
FORMAT_VERSION = 2
#: The format of a directory holding payloads (ragged or bytes entries): raised to by the
#: first put of one, so versions before it refuse the directory, and until then keep using it.
PAYLOAD_FORMAT_VERSION = 3
MARKER_NAME = "embedcache.json"

log = logging.getLogger("embedcache")


class Store(Bookkeeping):
    """A directory of cached vectors; safe to share between threads and processes.

    :param directory: where the cache lives; default from ``EMBEDCACHE_DIR`` or the platform
        user cache directory. Created with mode 0700 when missing.
    :param size_limit: bytes of entries (a vector's 4 per dimension, a payload's own:
        :func:`entry_bytes`) above which the oldest stored entries are evicted.
        ``None`` keeps the directory's setting (a new cache has no limit); ``0`` removes it.
    :param tuning: the sizes deleting, compacting and snapshots page by; ``None``:
        :func:`~embedcache.storage.tuning.default_tuning`, the measured ones.
    :raises InvalidInputError: a negative ``size_limit``.
    :raises CacheFormatError: the directory was written by an incompatible version.
    :raises CacheError: the directory cannot be created or opened.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        size_limit: int | None = None,
        tuning: Tuning | None = None,
    ) -> None:
        if size_limit is not None and size_limit < 0:
            raise InvalidInputError(
                f"size_limit must be 0 (none) or a positive byte count, got {size_limit}"
            )
        self.directory = resolve_cache_dir(directory)
        self._tuning = tuning or default_tuning()
        # Fingerprints this store has recorded: later puts under them skip the statement.
        self._known_fingerprints: set[int] = set()
        self._snapshot_due = False  # a put with defer_snapshot made one due
        versions = {"format_version": FORMAT_VERSION, "key_version": KEY_VERSION}
        readable = {"format_version": range(FORMAT_VERSION, PAYLOAD_FORMAT_VERSION + 1)}
        marked = check_or_create_marker(self.directory, MARKER_NAME, versions, readable)
        self._format = marked["format_version"]
        #: A directory we cannot write to (a read-only mount, a shared team cache) still
        #: serves its hits; storing, deleting and counting are refused or skipped.
        self.read_only = not os.access(self.directory, os.W_OK)
        self._claims: Claims | None = None
        try:
            self._open_parts()
        except BaseException:
            if self._claims is not None:  # this store will never be closed: let them go
                self._claims.detach()
            raise
        if size_limit is not None:
            self._meta.set_size_limit(size_limit)
        restrict_permissions(self.directory)

    @staticmethod
    def exists(directory: str | os.PathLike[str] | None = None) -> bool:
        """Whether ``directory`` (resolved as the constructor does) holds a cache, without
        creating anything."""
        return (resolve_cache_dir(directory) / MARKER_NAME).is_file()

    def _open_parts(self) -> None:
        """Open the claims, segments, metadata and index (errors as :class:`CacheError`)."""
        try:
            if not self.read_only:  # a cache that cannot store cannot fetch: nothing to claim
                self._claims = claims_for(self.directory)
            self._segments = Segments(self.directory / "segments")
            # The metadata first: a writer's first open of an older cache copies its
            # fingerprint records into the index.
            self._meta = Meta(self.directory, self.read_only)
            self._index = Index(
                self.directory,
                self.read_only,
                self._meta.legacy_fingerprints,
                tuning=self._tuning,
            )
        except sqlite3.OperationalError as exc:
            raise CacheError(f"cannot open cache at {self.directory}: {exc}") from exc
        except sqlite3.DatabaseError as exc:  # corruption, as opposed to access trouble
            raise CacheError(
                f"cannot open cache at {self.directory}: {exc}; its index is damaged: delete "
                "the directory or use another (everything in it can be fetched again)"
            ) from exc
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            raise CacheError(f"cannot open cache at {self.directory}: {exc}") from exc

    def __repr__(self) -> str:
        return f"Store({str(self.directory)!r}, size_limit={self.size_limit!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connections and file maps; the directory stays."""
        with self._index.lock:  # no write (nor segment append) in flight meanwhile
            self._segments.close()
            self._index.close()
            self._meta.close()
            if self._claims is not None:
                self._claims.detach()
                self._claims = None

    @property
    def claims(self) -> Claims | None:
        """The claims of fetches in flight, seen by every process using this directory (see
        :mod:`embedcache.storage.claims`); ``None`` for a read-only cache, which cannot
        fetch, where POSIX locks are missing, and once the store is closed."""
        return self._claims

    # Reading

    def read_many(self, keys: Sequence[bytes], dim: int | None = None) -> Found:
        """Look up every key and gather the vectors of those present into one array.

        :param dim: the dimension expected; entries of another size read as absent. ``None``
            takes the size of the first entry found.
        """
        split = split_keys(keys) if keys else np.empty((0, 2), dtype=np.int64)
        matched, present, from_snapshot = self._index.find(split)
        if dim is None and present.any():
            dims = matched[present, DIM]
            dim = int(dims[0]) if dims[0] > 0 else int(next(iter(dims[dims > 0]), 0))
        present &= matched[:, DIM] == (dim or 0)
        vectors = self._segments.gather(matched[:, SEG], matched[:, ROW], present, dim or 0)
        damaged = verify(matched, vectors, present)
        if damaged and from_snapshot:
            # The snapshot may predate a refetch of these entries: ask the index itself.
            again, found, _ = self._index.find(split[damaged], use_snapshot=False)
            found &= again[:, DIM] == (dim or 0)
            fixed = np.asarray(damaged)[found]
            if len(fixed):
                refound = again[found]
                matched[fixed] = refound
                vectors[fixed] = self._segments.gather(
                    refound[:, SEG], refound[:, ROW], np.ones(len(fixed), bool), dim or 0
                )
                recheck = np.zeros(len(matched), dtype=bool)
                recheck[fixed] = True
                present |= recheck
                present[verify(matched, vectors, recheck)] = False
        tokens = np.where(present, matched[:, MILLITOKENS] / 1000.0, 0.0)
        return Found(present, vectors, tokens)

    def get_many(self, keys: Sequence[bytes]) -> list[Record | None]:
        """Look up each key, of whatever dimension; ``None`` when absent or damaged."""
        if not keys:
            return []
        split = split_keys(keys)
        rows = {(int(r[K]), int(r[LO])): r for r in self._index.lookup(split[:, 0])}
        out: list[Record | None] = []
        for hi, lo in split.tolist():
            row = rows.get((hi, lo))
            found = None if row is None else read_record(self._segments, row)
            out.append(found if isinstance(found, Record) else None)
        return out

    def contains_many(self, keys: Sequence[bytes]) -> list[bool]:
        """Whether each key has an entry (without reading or checking its vector)."""
        if not keys:
            return []
        present: list[bool] = self._index.contains(split_keys(keys)).tolist()
        return present

    def records(self, batch: int = 2048) -> Iterator[tuple[bytes, Record | str]]:
        """Every entry read and checked, in key order: ``(key, record)``, or ``(key,
        reason)`` for a damaged one (``verify``, ``export``, ``sync``)."""
        for rows in self._index.pages(batch):
            yield from page_records(self._segments, rows)

    def listing(
        self, batch: int = 2048, *, oldest_first: bool = False
    ) -> Iterator[tuple[bytes, Stored]]:
        """Every entry's metadata as ``(key, stored)``, ``batch`` index rows at a time and no
        vector read: in key order, or with ``oldest_first`` in the order a size limit evicts
        (oldest stored first, by key within the same microsecond)."""
        pages = self._index.pages_by_age(batch) if oldest_first else self._index.pages(batch)
        for rows in pages:
            yield from page_stored(rows)

    def __len__(self) -> int:
        """Number of cached vectors."""
        return self._index.count()

    def groups(self, *, raw: bool = False) -> list[tuple[int, int, int, float]]:
        """``(fingerprint id, dimension, entries, tokens recorded)`` of each kind of entry,
        from the index alone: no vector is read (so damaged vectors count too; see
        :meth:`records`). With ``raw``, the index's own ``dim``, which also tells a payload's
        kind (:func:`~embedcache.storage.payloads.kind_name`)."""
        # SQLite's ids are signed; everything above the index knows them unsigned.
        return [
            (unsigned(fp_id), dim if raw else dimensions(dim), count, milli / 1000.0)
            for fp_id, dim, count, milli in self._index.groups()
        ]

    def vector_bytes(self) -> int:
        """Bytes the entries count for against :attr:`size_limit`: :func:`entry_bytes` each
        (less than :meth:`volume`, which also counts the index and dead rows)."""
        return self._index.vector_bytes()

    def volume(self) -> int:
        """Bytes the cache occupies on disk."""
        return sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file())

    # Writing

    def put_many(self, fp: Fingerprint, entries: KeyedVectors) -> None:
        """Write ``(key, vector, tokens)`` entries produced under ``fp`` in one transaction;
        a "vector" may be a payload of another kind (:meth:`put_payloads`)."""
        by_dim: dict[int, list[tuple[bytes, NDArray[np.float32], float]]] = {}
        others = []
        for entry in entries:
            vector = entry[1]
            if vector.ndim == 1 and vector.dtype == np.float32:
                by_dim.setdefault(len(vector), []).append(entry)
            else:
                others.append(entry)
        groups = [
            ([key for key, _, _ in group], np.stack([v for _, v, _ in group]),
             [tokens for _, _, tokens in group])
            for group in by_dim.values()
        ]  # fmt: skip
        self._put(fp, groups, payloads=others)

    def put_payloads(
        self, fp: Fingerprint, keys: Sequence[bytes], payloads: Sequence[Payload],
        tokens: Sequence[float],
    ) -> None:  # fmt: skip
        """Write entries of any kind produced under ``fp`` in one transaction, stored exactly
        (dtype, shape, bytes): a 2-D float32 array (a multi-vector answer: rows of one
        width), a 1-D or 2-D int8/uint8 array (packed bits), or a float32 vector.

        :raises InvalidInputError: an array of another dtype or shape, or an empty one.
        """
        self.put_many(fp, list(zip(keys, payloads, tokens, strict=True)))

    def read_payloads(self, keys: Sequence[bytes]) -> FoundPayloads:
        """Each key's entry, of whatever kind, as :meth:`put_payloads` took it (a writable
        array of its own), with its tokens; absent or damaged ones are ``None``."""
        split = split_keys(keys) if keys else np.empty((0, 2), dtype=np.int64)
        found, tokens = heaps.read_payloads(self._index, self._segments, split)
        return FoundPayloads(found, tokens)

    def put_matrix(
        self,
        fp: Fingerprint,
        keys: Sequence[bytes],
        matrix: NDArray[np.float32],
        tokens: Sequence[float],
        *,
        defer_snapshot: bool = False,
    ) -> None:
        """Like :meth:`put_many` for vectors already in one ``(len(keys), d)`` array
        (copying a shared tier down): no per-row stacking.

        :param defer_snapshot: leave a snapshot this put makes due to
            :meth:`refresh_snapshot_if_due`, for a copy made of many puts: each snapshot
            rewrites every row, so one taken every time the index grows by an eighth costs
            a copy into an empty cache about nine rows written per row stored.
        """
        if len(keys):
            self._put(fp, [(list(keys), matrix, list(tokens))], defer_snapshot)

    def refresh_snapshot_if_due(self) -> None:
        """Take the snapshot that puts with ``defer_snapshot`` left due, if any."""
        if self._snapshot_due:
            self._snapshot_due = False
            self._refresh_snapshot()

    def _put(
        self,
        fp: Fingerprint,
        groups: list[tuple[list[bytes], NDArray[np.float32], list[float]]],
        defer_snapshot: bool = False,
        payloads: KeyedVectors = (),
    ) -> None:
        """Write groups of same-dimension vectors, and payloads, in one transaction."""
        if self.read_only:
            raise CacheError(f"cache at {self.directory} is read-only: cannot store new vectors")
        if payloads and self._format < PAYLOAD_FORMAT_VERSION:
            versions = {"format_version": PAYLOAD_FORMAT_VERSION, "key_version": KEY_VERSION}
            raise_marker(self.directory, MARKER_NAME, versions)
            self._format = PAYLOAD_FORMAT_VERSION
        now_us = int(time.time() * 1e6)
        fp_id = signed(fp.id)
        new_meaning = fp.id not in self._known_fingerprints
        with self._index.write():
            if new_meaning:
                # In the entries' own transaction: none is ever committed without it.
                self._index.record_fingerprint(fp)
            for keys, vectors, tokens in groups:
                matrix = np.ascontiguousarray(vectors, dtype="<f4")
                dim = matrix.shape[1]
                seg, start = self._append(dim, matrix)
                # rint rounds half to even, as round() did: the same millitokens.
                millitokens = np.rint(np.asarray(tokens, dtype=np.float64) * 1000)
                self._index.insert(
                    split_keys(keys), seg, start, dim, millitokens.astype(np.int64),
                    vector_checksums(matrix), now_us, fp_id,
                )  # fmt: skip
            stored = heaps.put_payloads(self._index, self._segments, payloads, now_us, fp_id)
            evicted = self._index.evict(self.size_limit)
            stored += sum(len(keys) for keys, _, _ in groups)
            due = self._index.note_changes(stored + evicted)
        if new_meaning:
            self._copy_fingerprint(fp)
        if due and defer_snapshot:
            self._snapshot_due = True
        elif due:
            self._refresh_snapshot()

    def _refresh_snapshot(self) -> None:
        # After the commit, outside the lock: other writers go on while it is written.
        try:
            self._index.refresh_snapshot()
        except CacheError as exc:  # the entries are stored; reads use SQL meanwhile
            log.warning("%s", exc)

    def delete_many(self, keys: Sequence[bytes]) -> int:
        """Delete entries, ``tuning.delete_page`` keys (:data:`DELETE_PAGE`) per transaction;
        returns how many existed. Their space is reclaimed by :meth:`compact`."""
        page = self._tuning.delete_page
        return self.delete_pages(keys[start : start + page] for start in range(0, len(keys), page))

    def delete_pages(self, pages: Iterable[Sequence[bytes]]) -> int:
        """Delete the keys of each page (drawn lazily, so the keys need not all be in memory
        at once) in short transactions of their own, at most ``tuning.delete_page`` keys each
        (:func:`~embedcache.storage.upkeep.delete_pages`): a large prune holds the write lock
        a fraction of a second at a time. Returns how many existed.

        Readers keep the snapshot, with the deleted keys listed for them; a deletion stopped
        part-way (an error, a kill) has removed and counted what it committed.
        """
        return upkeep.delete_pages(self._index, pages, self._tuning.delete_page)

    def clear(self) -> int:
        """Delete every entry and segment file; returns how many entries were removed.
        Lifetime counters stay."""
        with self._index.write():
            removed, segments = self._index.clear()
        self._segments.unlink(segments)
        return removed

    def compact(self, min_dead_fraction: float = 0.5) -> int:
        """Copy the live rows of segments that are at least ``min_dead_fraction`` dead into
        new segments and delete the old files, in short transactions, at most
        ``tuning.compact_rows`` rows each (:func:`~embedcache.storage.upkeep.compact`).
        Returns the bytes freed."""
        return upkeep.compact(
            self._index, self._segments, self._append, min_dead_fraction, self._tuning.compact_rows
        )

    def _append(
        self, dim: int, matrix: NDArray[np.float32], avoid: Container[int] = ()
    ) -> tuple[int, int]:
        """Write rows at the end of the open segment for ``dim`` (in a write transaction),
        or of a new one if that is among ``avoid`` (being compacted away)."""
        last = self._index.last_segment(dim)
        if last is None or last[0] in avoid or not fits(last[1] + len(matrix), dim):
            seg, start = self._index.add_segment(dim), 0
        else:
            seg, start = last
        self._segments.write(seg, dim, start, matrix)
        self._index.set_segment_rows(seg, start + len(matrix))
        return seg, start
