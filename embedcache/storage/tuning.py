"""How much the store's upkeep does at a time: the sizes of its pages and when it takes a
new snapshot. The defaults are the measured ones; a :class:`Tuning` with smaller values lets
a test see paging and snapshots on a few hundred entries instead of tens of thousands."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COMPACT_ROWS", "DEFAULT_TUNING", "DELETE_PAGE", "Tuning", "default_tuning"]

#: Keys deleted per write transaction, and rows moved per compaction transaction, at most:
#: each holds the write lock (other processes' fills wait) for a bounded time (less, when
#: :mod:`~embedcache.storage.upkeep` sees them go slower than its target), and compaction
#: holds at most this many vectors in memory, however large the cache.
DELETE_PAGE = 10_000
COMPACT_ROWS = 16_384


@dataclass(frozen=True, kw_only=True)
class Tuning:
    """The sizes a :class:`~embedcache.storage.store.Store` pages its upkeep by.

    :param delete_page: keys deleted per write transaction (:data:`DELETE_PAGE`).
    :param compact_rows: rows moved per compaction transaction (:data:`COMPACT_ROWS`).
    :param snapshot_min_rows, snapshot_growth: when to take a new snapshot: once the entries
        stored or removed since the last one come to ``1/snapshot_growth`` of those it
        holds, and at least ``snapshot_min_rows`` (fewer are cheap to ask SQL about).
    :param snapshot_page: rows a snapshot rebuild reads and writes at a time: its memory
        (a few MB), whatever the index holds.
    """

    delete_page: int = DELETE_PAGE
    compact_rows: int = COMPACT_ROWS
    snapshot_min_rows: int = 4096
    snapshot_growth: int = 8
    snapshot_page: int = 16384


#: The measured sizes: what a store opened without a ``tuning`` uses (:func:`default_tuning`).
DEFAULT_TUNING = Tuning()


def default_tuning() -> Tuning:
    """:data:`DEFAULT_TUNING` as it is now: read when a store is opened, not when this
    module was imported, so a test suite may replace it for every store it opens, however
    deep in the objects it builds."""
    return DEFAULT_TUNING
