"""What a prewarm holds in memory does not grow with the index nor the corpus: SQLite's
page cache on ``index.db`` stays within its budget, however many rows the lookups of a run
after a kill (every key newer than the snapshot, in SQL) and a snapshot rebuild walk
through; adding a window to the distinct set costs that window, not a share of the set.

The budget, 16 MiB per connection and two connections, is measured with SQLite's own
counter of the memory it holds (``sqlite3_memory_used``, from the library Python's
``sqlite3`` module is linked with), not with the process's RSS: no timing, no sampling.
The large figures, peak RSS of whole prewarm runs, come from ``bench/prewarm_memory.py``.
"""

from __future__ import annotations

import _sqlite3
import ctypes
import shutil
import sqlite3
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from embedcache.embedding.distinct import DistinctKeys
from embedcache.storage.formats import split_keys
from embedcache.storage.store import Store

MIB = 1 << 20
BUDGET = 16 * MIB  # per connection on index.db
# SQLite's own small allocations beside its page cache (schemas, statements, the WAL index).
SLACK = 2 * MIB
# 700,000 rows: about 32 MB of table pages (60 MB with its indexes), well over one
# connection's budget.
ROWS = 700_000
WINDOW = 20_480  # keys a prewarm looks up at a time (its --window)


class SqliteMemory:
    """The bytes SQLite holds, process-wide, and the most it held since :meth:`reset`."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL(_sqlite3.__file__)  # its symbols and its sqlite library's
            self._used = lib.sqlite3_memory_used
            self._highest = lib.sqlite3_memory_highwater
        except (OSError, AttributeError):
            pytest.skip("SQLite's memory counters are not reachable from ctypes here")
        self._used.restype = self._highest.restype = ctypes.c_int64
        self._highest.argtypes = [ctypes.c_int]

    def used(self) -> int:
        return int(self._used())

    def reset(self) -> None:
        self._highest(1)

    def highest(self) -> int:
        return int(self._highest(0))


@pytest.fixture(scope="module")
def killed_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    """A cache as a fill killed before its first snapshot leaves it: ``ROWS`` index rows
    and no snapshot, so every key is looked up in SQL (the vectors are never read here)."""
    directory = tmp_path_factory.mktemp("killed") / "cache"
    Store(directory).close()  # the schema, as the store creates it
    rng = np.random.default_rng(23)
    raw = rng.bytes(16 * ROWS)
    keys = [raw[i : i + 16] for i in range(0, len(raw), 16)]
    split = split_keys(keys)
    order = np.argsort(split[:, 0], kind="stable")  # inserted in key order: quick
    with sqlite3.connect(directory / "index.db", isolation_level=None) as db:
        # Without the triggers that keep the vector bytes (a statement each row): the store
        # sets them up again, and counts, when it next opens the directory.
        db.execute("DROP TRIGGER entries_bytes_in")
        db.execute("DELETE FROM state WHERE name = 'vector_bytes'")
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO entries VALUES (?, ?, 1, ?, 64, 1000, ?, 0, 0)",
            ((hi, lo, i, 1_700_000_000_000_000 + i) for i, (hi, lo) in
             enumerate(split[order].tolist())),
        )  # fmt: skip
        db.execute("COMMIT")
    db.close()
    return directory, keys


def test_looking_up_every_key_newer_than_the_snapshot_holds_sqlite_memory_to_its_budget(
    killed_cache: tuple[Path, list[bytes]],
) -> None:
    directory, keys = killed_cache
    memory = SqliteMemory()
    with Store(directory) as store:
        assert store._index.view() is None  # every key below is looked up in SQL
        before = memory.used()
        memory.reset()
        for start in range(0, ROWS, WINDOW):
            assert all(store.contains_many(keys[start : start + WINDOW]))
        held = memory.highest() - before
    # At 64 MiB a connection the reader held every page it read: about 32 MB here, growing
    # with the rows newer than the snapshot up to 64 MiB.
    assert held < BUDGET + SLACK, f"SQLite held {held / MIB:.1f} MiB"


def test_a_snapshot_rebuild_after_those_lookups_keeps_both_connections_to_their_budget(
    killed_cache: tuple[Path, list[bytes]], tmp_path: Path
) -> None:
    killed, keys = killed_cache
    directory = shutil.copytree(killed, tmp_path / "cache")  # the other test's stays as it is
    memory = SqliteMemory()
    before = memory.used()
    with Store(directory) as store:
        memory.reset()
        for start in range(0, ROWS, 4 * WINDOW):  # a quarter of the pages, to fill the reader
            assert all(store.contains_many(keys[start : start + WINDOW]))
        # The rebuild reads every row through a connection of its own, as a fill's writes
        # do once the index outgrows its cache.
        assert store._index.refresh_snapshot(wait=True)
        view = store._index.view()
        assert view is not None
        assert view.columns.shape[1] == ROWS
        held = memory.highest() - before
    assert held < 2 * BUDGET + SLACK, f"SQLite held {held / MIB:.1f} MiB"


def test_adding_a_window_to_the_distinct_set_needs_memory_for_that_window_not_the_set() -> None:
    # Windows of 2,048 new keys up to 300,000 (a set of 4.8 MB). With one bucket its merges
    # held a third of the set twice over, and a realloc that could not grow a run in place
    # copied all of it (over 1 MB here at times); now a window costs its own keys.
    distinct = DistinctKeys()
    rng = np.random.default_rng(5)
    windows = [rng.bytes(16 * 2048) for _ in range(300_000 // 2048)]
    extras = []
    tracemalloc.start()
    try:
        for raw in windows:
            keys = [raw[i : i + 16] for i in range(0, len(raw), 16)]
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            assert distinct.add(keys).all()
            extras.append(tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()
    assert len(distinct) == 2048 * len(windows)
    worst = max(extras[8:])  # after the first windows (numpy's own first allocations)
    assert worst < 16 * 2048 + 768 * 1024, f"{worst:,} bytes to add a window"
