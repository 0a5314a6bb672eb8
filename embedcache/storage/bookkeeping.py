"""What a :class:`~embedcache.storage.store.Store` keeps besides its entries: lifetime
counters, named settings, the size limit, what each fingerprint id means, and the count of
removals that long-lived readers poll. The directory layout is described in
:mod:`embedcache.storage.store`.
"""

from __future__ import annotations

import logging

from ..cache_keys import Fingerprint
from ..errors import CacheError
from .index import Index
from .meta import Meta

__all__ = ["Bookkeeping"]

log = logging.getLogger("embedcache")


class Bookkeeping:
    """The metadata calls of :class:`~embedcache.storage.store.Store` (its base), over its
    ``meta/`` and ``index.db``."""

    _meta: Meta
    _index: Index
    _known_fingerprints: set[int]

    @property
    def size_limit(self) -> int | None:
        """Bytes of vectors above which entries are evicted; ``None``: never evicted."""
        return self._meta.size_limit

    def removals(self) -> int:
        """A number that changes whenever any process removes entries from this directory
        (``clear``, ``prune``, ``verify --repair``, a delete): cheap enough to poll every
        second, so a long-lived reader (the proxy) can drop what it holds in memory.

        It is the ``removals`` row of ``index.db``'s ``state`` table, counted in the very
        transaction that deletes (see the module's description), so once a deletion is
        visible to this store's reads the number has changed too. Neither eviction under a
        size limit nor :meth:`compact` (which moves entries, never drops one) changes it.
        A single-row read (a few microseconds); 0 for a cache no process ever deleted from.

        :raises CacheError: the index cannot be read.
        """
        return self._index.removals()

    def add_counters(self, deltas: dict[str, int]) -> None:
        """Add to the lifetime counters in one transaction; a read-only cache skips it
        (lifetime counters are bookkeeping, not worth failing a read)."""
        self._meta.add_counters(deltas)

    def counters(self) -> dict[str, int]:
        """The lifetime counters, every one of :data:`~embedcache.storage.meta.COUNTERS` present."""
        return self._meta.counters()

    def setting(self, name: str) -> str | None:
        """A value recorded by :meth:`set_setting` in this directory, by any process;
        ``None`` when none was (or the cache is read-only, so it has no metadata)."""
        return self._meta.setting(name)

    def set_setting(self, name: str, value: str) -> None:
        """Record a small named value for every process using this directory (the proxy's
        workers share what they learn about the upstream this way); a read-only cache
        skips it, as it skips counters."""
        self._meta.set_setting(name, value)

    def fingerprints(self) -> dict[int, Fingerprint]:
        """What each fingerprint id of the entries means (the request settings, as
        :meth:`Store.put_many <embedcache.storage.store.Store.put_many>` takes them), by
        id: those recorded in ``index.db`` (a read-only cache's too) and, for entries older
        versions stored, in ``meta/``. A record whose JSON does not hash to its id is left
        out; an id missing here shows as model "?"."""
        return {**self._meta.legacy_fingerprints(), **self._index.fingerprints()}

    def _copy_fingerprint(self, fp: Fingerprint) -> None:
        """Keep ``fp`` in ``meta/`` too, after its entries' commit, for older versions sharing
        the directory, which read nothing else (see :mod:`~embedcache.storage.meta`)."""
        try:
            self._meta.record_fingerprint(fp)
        except CacheError as exc:  # the entries and what they mean are stored: say, go on
            log.warning("%s", exc)
        else:
            self._known_fingerprints.add(fp.id)
