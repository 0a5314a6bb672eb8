"""The on-disk cache: the only module that knows how an entry is laid out in bytes.

A cache directory holds a diskcache database and ``embedcache.json``, the marker recording
the format and key versions it was written with. Each entry is stored under its 16-byte key
as one BLOB (diskcache keeps ``bytes`` keys and values raw: no pickle)::

    offset  size  field
    0       2     magic b"EC"
    2       1     format version
    3       1     dtype code (1 = float32 little-endian)
    4       4     dimension (uint32)
    8       4     tokens attributed to this vector when it was fetched (float32)
    12      8     created, Unix seconds (float64)
    20      8     fingerprint id (uint64): which request settings produced the vector
    28      8     xxh3_64 of the vector bytes
    36      4*d   the vector

Reads never write (no access-time updates, no statistics), and nothing is evicted unless a
size limit is set, in which case the least recently *stored* entries go first. The limit is
kept in the database, so it holds for every later user of the directory until changed.
Lifetime counters (hits, misses, …) are kept as integers under reserved text keys.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import struct
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

__all__ = ["COUNTERS", "FORMAT_VERSION", "MARKER_NAME", "Record", "Store"]

FORMAT_VERSION = 1
MARKER_NAME = "embedcache.json"
_MAGIC = b"EC"
_FLOAT32_LE = 1
_HEADER = struct.Struct("<2sBBIfdQQ")
_FINGERPRINT_PREFIX = "fingerprint:"
_COUNTER_PREFIX = "counter:"
#: Lifetime counters kept by :meth:`Store.add_counters`.
COUNTERS = ("hits", "misses", "requests", "tokens_spent", "tokens_saved")
# Vectors are a few KiB; keeping every one inside SQLite avoids one file per entry.
_INLINE_LIMIT = 1 << 24
_NO_LIMIT = 1 << 62

log = logging.getLogger("embedcache")


@dataclass(frozen=True)
class Record:
    """One cached vector with its metadata.

    :ivar vector: read-only float32 view of the stored bytes.
    :ivar tokens: tokens attributed to this text when it was fetched (an estimate within a
        batch: the batch's usage apportioned by text length).
    :ivar created: when it was fetched, Unix seconds.
    :ivar fingerprint_id: id of the request settings that produced it.
    """

    vector: NDArray[np.float32]
    tokens: float
    created: float
    fingerprint_id: int


def pack(vector: NDArray[np.float32], tokens: float, fingerprint_id: int) -> bytes:
    """Serialise one entry."""
    data = np.ascontiguousarray(vector, dtype="<f4").tobytes()
    header = _HEADER.pack(
        _MAGIC,
        FORMAT_VERSION,
        _FLOAT32_LE,
        len(vector),
        tokens,
        time.time(),
        fingerprint_id,
        xxhash.xxh3_64_intdigest(data),
    )
    return header + data


def unpack(raw: bytes) -> Record:
    """Deserialise one entry.

    :raises ValueError: when the bytes are not an intact entry of this format.
    """
    if len(raw) < _HEADER.size:
        raise ValueError("entry shorter than its header")
    magic, version, dtype, dim, tokens, created, fp_id, checksum = _HEADER.unpack_from(raw)
    if magic != _MAGIC or version != FORMAT_VERSION or dtype != _FLOAT32_LE:
        raise ValueError(f"unknown entry header (magic {magic!r}, version {version})")
    if len(raw) != _HEADER.size + 4 * dim:
        raise ValueError(f"entry holds {len(raw) - _HEADER.size} bytes for {dim} dimensions")
    body = memoryview(raw)[_HEADER.size :]
    if xxhash.xxh3_64_intdigest(body) != checksum:
        raise ValueError("entry checksum mismatch")
    vector = np.frombuffer(raw, dtype="<f4", count=dim, offset=_HEADER.size)
    return Record(vector, tokens, created, fp_id)


class Store:
    """A directory of cached vectors.

    :param directory: where the cache lives; default from ``EMBEDCACHE_DIR`` or the platform
        user cache directory. Created with mode 0700 when missing.
    :param size_limit: bytes on disk above which the oldest stored entries are evicted.
        ``None`` keeps the directory's current setting (a new cache has no limit); ``0``
        removes the limit.
    :raises CacheFormatError: the directory was written by an incompatible version.
    :raises CacheError: the directory cannot be created or opened.
    """

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, *, size_limit: int | None = None
    ) -> None:
        if size_limit is not None and size_limit < 0:
            raise CacheError(f"size_limit must be 0 (none) or a positive byte count: {size_limit}")
        self.directory = resolve_cache_dir(directory)
        self._known_fingerprints: set[int] = set()
        created = self._check_or_create_marker()
        settings: dict[str, object] = {
            "statistics": False,
            "tag_index": False,
            "disk_min_file_size": _INLINE_LIMIT,
        }
        if created or size_limit == 0:
            # diskcache's own default is a 1 GiB limit: never let that apply silently.
            settings.update(eviction_policy="none", size_limit=_NO_LIMIT)
        elif size_limit is not None:
            settings.update(eviction_policy="least-recently-stored", size_limit=size_limit)
        try:
            self._cache: Any = diskcache.Cache(str(self.directory), **settings)
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            raise CacheError(f"cannot open cache at {self.directory}: {exc}") from exc
        self._restrict_permissions()

    def __repr__(self) -> str:
        return f"Store({str(self.directory)!r}, size_limit={self.size_limit!r})"

    @property
    def size_limit(self) -> int | None:
        """Bytes above which entries are evicted, or ``None`` when nothing is ever evicted."""
        if self._cache.eviction_policy == "none":
            return None
        return int(self._cache.size_limit)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connection; the directory stays."""
        self._cache.close()

    def get_many(self, keys: Sequence[bytes]) -> list[Record | None]:
        """Look up each key; ``None`` for absent entries and for damaged ones, which are
        logged and then refetched like any miss."""
        get = self._cache.get
        found: list[Record | None] = []
        with self._errors("read"):
            for key in keys:
                raw = get(key)
                if raw is None:
                    found.append(None)
                    continue
                try:
                    found.append(unpack(raw))
                except ValueError as exc:
                    log.warning("ignoring damaged cache entry %s: %s", key.hex(), exc)
                    found.append(None)
        return found

    def put_many(
        self, fp: Fingerprint, entries: Sequence[tuple[bytes, NDArray[np.float32], float]]
    ) -> None:
        """Write ``(key, vector, tokens)`` entries produced under ``fp`` in one transaction."""
        with self._errors("write"), self._cache.transact():
            if fp.id not in self._known_fingerprints:
                self._cache.set(f"{_FINGERPRINT_PREFIX}{fp.id:016x}", fp.canonical)
            for key, vector, tokens in entries:
                self._cache.set(key, pack(vector, tokens, fp.id))
        self._known_fingerprints.add(fp.id)

    def contains_many(self, keys: Sequence[bytes]) -> list[bool]:
        """Whether each key has an entry (without reading or checking it)."""
        with self._errors("read"):
            return [key in self._cache for key in keys]

    def scan(self) -> Iterator[tuple[bytes, Record | str]]:
        """Every entry as ``(key, record)``, or ``(key, reason)`` for a damaged one."""
        for key in self._iter_keys():
            if not isinstance(key, bytes):
                continue
            with self._errors("read"):
                raw = self._cache.get(key)
            if raw is None:
                continue  # deleted or evicted while scanning
            try:
                yield key, unpack(raw)
            except ValueError as exc:
                yield key, str(exc)
            except TypeError:
                yield key, f"value of type {type(raw).__name__}, not bytes"

    def delete_many(self, keys: Sequence[bytes]) -> int:
        """Delete entries in one transaction; returns how many existed."""
        with self._errors("write"), self._cache.transact():
            return sum(1 for key in keys if self._cache.delete(key))

    def clear(self) -> int:
        """Delete every entry; returns how many were removed. Lifetime counters stay."""
        removed = len(self)
        counters = self.counters()
        with self._errors("write"):
            self._cache.clear()
        self._known_fingerprints.clear()
        self.add_counters(counters)
        return removed

    def add_counters(self, deltas: dict[str, int]) -> None:
        """Add to the lifetime counters in one transaction."""
        if not any(deltas.values()):
            return  # not even the write lock: a read-only cache stays usable
        with self._errors("write"), self._cache.transact():
            for name, delta in deltas.items():
                if delta:
                    self._cache.incr(f"{_COUNTER_PREFIX}{name}", delta)

    def counters(self) -> dict[str, int]:
        """The lifetime counters, every one of :data:`COUNTERS` present."""
        with self._errors("read"):
            return {name: int(self._cache.get(f"{_COUNTER_PREFIX}{name}", 0)) for name in COUNTERS}

    def fingerprints(self) -> dict[int, dict[str, object]]:
        """The request settings of every fingerprint that has entries, by id."""
        out: dict[int, dict[str, object]] = {}
        for key in self._iter_keys():
            if isinstance(key, str) and key.startswith(_FINGERPRINT_PREFIX):
                out[int(key[len(_FINGERPRINT_PREFIX) :], 16)] = json.loads(self._cache[key])[
                    "request"
                ]
        return out

    def __len__(self) -> int:
        """Number of cached vectors."""
        return sum(1 for key in self._iter_keys() if isinstance(key, bytes))

    def volume(self) -> int:
        """Bytes the cache occupies on disk."""
        return int(self._cache.volume())

    def _iter_keys(self) -> Iterator[object]:
        with self._errors("read"):
            yield from self._cache.iterkeys()

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            # diskcache.Timeout: another process held the database lock for too long.
            reason = str(exc) or type(exc).__name__
            raise CacheError(f"cannot {action} cache at {self.directory}: {reason}") from exc

    def _check_or_create_marker(self) -> bool:
        """Check the directory's versions; create it and its marker when new (returns True)."""
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
                return False
            if (self.directory / "cache.db").exists():
                raise CacheFormatError(
                    f"{self.directory} holds a database without {MARKER_NAME}: not an "
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
            return True
        except json.JSONDecodeError as exc:
            raise CacheFormatError(f"{marker} is not valid JSON: {exc}") from exc
        except OSError as exc:
            raise CacheError(f"cannot prepare cache at {self.directory}: {exc}") from exc

    def _restrict_permissions(self) -> None:
        # diskcache creates its files under the process umask; vectors can reveal the
        # texts they embed, so keep them private to the user.
        for name in ("cache.db", "cache.db-wal", "cache.db-shm"):
            with contextlib.suppress(OSError):
                os.chmod(self.directory / name, 0o600)
