"""``meta/``: the small values of a cache directory, in a diskcache.

It holds what is not about any one entry: the lifetime counters (:data:`COUNTERS`), named
settings the proxy's workers share (:meth:`Meta.setting`), the size limit, and the legacy
copy of the fingerprint records. What an entry's fingerprint id means lives in ``index.db``
(:mod:`~embedcache.storage.fingerprints`), written with the entries; versions before that
wrote and read it here only, so this version still writes each fingerprint here too, and
reads those records beside the table's (an older process sharing the directory writes
nowhere else).

diskcache writes when it opens, so a read-only cache has no ``Meta`` to open: every read
then answers as an empty directory would, and writes are skipped (counters and settings are
bookkeeping, not worth failing a read-only cache's hits).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import diskcache

from ..cache_keys import Fingerprint
from .databases import cache_errors
from .formats import fingerprint_record

__all__ = ["COUNTERS", "Meta"]

#: Lifetime counters kept by :meth:`Meta.add_counters`.
COUNTERS = ("hits", "misses", "coalesced", "requests", "tokens_spent", "tokens_saved")

_FINGERPRINT_PREFIX = "fingerprint:"
_COUNTER_PREFIX = "counter:"
_SETTING_PREFIX = "setting:"
_SIZE_LIMIT = "size_limit"


class Meta:
    """The diskcache in ``directory / "meta"``, or nothing at all when ``read_only``.

    :raises OSError, sqlite3.Error, diskcache.Timeout: it cannot be opened.
    """

    def __init__(self, directory: Path, read_only: bool) -> None:
        self._errors = functools.partial(cache_errors, directory)
        self._cache: Any = None
        if not read_only:
            self._cache = diskcache.Cache(
                str(directory / "meta"), eviction_policy="none", statistics=False
            )

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()

    @property
    def size_limit(self) -> int | None:
        """Bytes of vectors above which entries are evicted; ``None``: never evicted."""
        if self._cache is None:
            return None
        with self._errors("read"):
            limit = self._cache.get(_SIZE_LIMIT)
        return int(limit) if limit else None

    def set_size_limit(self, limit: int | None) -> None:
        """Record the size limit (``None`` or 0: none); skipped when read-only."""
        if self._cache is not None:
            with self._errors("write"):
                self._cache.set(_SIZE_LIMIT, limit or None)

    def add_counters(self, deltas: dict[str, int]) -> None:
        """Add to the lifetime counters in one transaction."""
        if self._cache is None or not any(deltas.values()):
            return
        with self._errors("write"), self._cache.transact():
            for name, delta in deltas.items():
                if delta:
                    self._cache.incr(f"{_COUNTER_PREFIX}{name}", delta)

    def counters(self) -> dict[str, int]:
        """The lifetime counters, every one of :data:`COUNTERS` present."""
        if self._cache is None:
            return dict.fromkeys(COUNTERS, 0)
        with self._errors("read"):
            return {name: int(self._cache.get(f"{_COUNTER_PREFIX}{name}", 0)) for name in COUNTERS}

    def setting(self, name: str) -> str | None:
        """The value recorded under ``name`` by :meth:`set_setting`, if any."""
        if self._cache is None:
            return None
        with self._errors("read"):
            value = self._cache.get(_SETTING_PREFIX + name)
        return value if isinstance(value, str) else None

    def set_setting(self, name: str, value: str) -> None:
        if self._cache is not None:
            with self._errors("write"):
                self._cache.set(_SETTING_PREFIX + name, value)

    def legacy_fingerprints(self) -> dict[int, Fingerprint]:
        """The fingerprint records kept here, by id; a record whose JSON does not hash to
        its id is left out."""
        if self._cache is None:
            return {}
        out: dict[int, Fingerprint] = {}
        with self._errors("read"):
            for key in self._cache.iterkeys():
                if not isinstance(key, str) or not key.startswith(_FINGERPRINT_PREFIX):
                    continue
                try:
                    fp_id = int(key[len(_FINGERPRINT_PREFIX) :], 16)
                except ValueError:
                    continue
                canonical = self._cache.get(key)
                fp = fingerprint_record(fp_id, canonical) if isinstance(canonical, str) else None
                if fp is not None:
                    out[fp_id] = fp
        return out

    def record_fingerprint(self, fp: Fingerprint) -> None:
        """Keep ``fp``'s record here too, for older versions sharing the directory."""
        if self._cache is not None:
            with self._errors("write"):
                self._cache.set(f"{_FINGERPRINT_PREFIX}{fp.id:016x}", fp.canonical)
