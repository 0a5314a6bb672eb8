"""A cache at scale shares itself (issue 23): per-settings totals kept as entries change, so
``stats`` never scans the index; prune and compact in short transactions, their snapshot
written outside the write lock, so another writer gets in at every step; readers keep the
snapshot while entries are deleted. Never wall-clock: a writer that must not wait is given
no busy timeout at all, and gets in or fails at once.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedcache.cache_keys import fingerprint, text_keys
from embedcache.maintenance import inventory
from embedcache.models import RequestOptions
from embedcache.storage import index as index_module
from embedcache.storage.store import Store

from .cli_helpers import invoke, ok
from .conftest import damage_entry, tuned

DIM = 16
FP = fingerprint(RequestOptions("jina-embeddings-v3", task="retrieval.passage", dimensions=DIM))
OTHER = fingerprint(RequestOptions("jina-embeddings-v3", task="retrieval.query", dimensions=8))


def fill(store: Store, n: int, seed: int = 0, fp: Any = FP, dim: int = DIM) -> list[bytes]:
    """``n`` entries, 100 a put (so their ages differ), each recorded as 1.5 tokens."""
    keys = text_keys(fp, [f"{seed}-{i}" for i in range(n)])
    matrix = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    for start in range(0, n, 100):
        end = min(n, start + 100)
        store.put_matrix(fp, keys[start:end], matrix[start:end], [1.5] * (end - start))
    return keys


def recount(cache_dir: Path) -> list[tuple[int, int, int, int]]:
    """``(fp, dim, entries, millitokens)`` counted afresh from the entries, and as kept."""
    db = sqlite3.connect(cache_dir / "index.db")
    try:
        counted = db.execute(
            "SELECT fp, dim, COUNT(*), SUM(millitokens) FROM entries GROUP BY fp, dim ORDER BY 1, 2"
        ).fetchall()
        kept = db.execute(
            "SELECT fp, dim, entries, millitokens FROM groups WHERE entries > 0 ORDER BY 1, 2"
        ).fetchall()
    finally:
        db.close()
    assert kept == counted
    return counted


def _no_wait(store: Store) -> Store:
    """``store`` with no busy timeout: a write while another holds the lock fails at once."""
    store._index._db.execute("PRAGMA busy_timeout = 0")
    return store


def _putter(writer: Store, puts: list[str]) -> Callable[[str], None]:
    """``put(when)``: ``writer`` stores one new entry now, noting ``when`` in ``puts`` (a
    write refused because the lock is held raises: ``writer`` has no busy timeout)."""

    def put(when: str) -> None:
        if when == "snapshot" and "busy" in puts:
            return  # the writer's own put taking a snapshot
        puts.append("busy")
        key = text_keys(FP, [f"writer {len(puts)}"])
        writer.put_matrix(FP, key, np.ones((1, DIM), np.float32), [1.0])  # or "locked"
        puts[puts.index("busy")] = when

    return put


def _put_at_pauses_and_snapshot_pages(
    monkeypatch: pytest.MonkeyPatch, put: Callable[[str], None]
) -> None:
    """Make ``put`` run at each pause between transactions and at each page of rows a
    snapshot reads: when no write lock should be held."""
    monkeypatch.setattr(time, "sleep", lambda seconds: put("pause"))
    fromiter = np.fromiter

    def snapshot_page(*args: Any, **kwargs: Any) -> Any:
        put("snapshot")  # the snapshot's rows are being read: no write lock is held
        return fromiter(*args, **kwargs)

    monkeypatch.setattr(np, "fromiter", snapshot_page)


def _snapshot_now(store: Store) -> None:
    """Take a snapshot of every entry now (the way the code under test has)."""
    if hasattr(store._index, "refresh_snapshot"):
        store._index.refresh_snapshot(wait=True)
    else:  # before issue 23: rebuilt inside a write transaction
        index: Any = store._index
        with index.write():
            index.rebuild_snapshot()


def test_groups_are_kept_exact_through_put_replace_delete_evict_prune_repair_and_clear(
    store: Store, cache_dir: Path
) -> None:
    keys = fill(store, 300)
    other = fill(store, 50, seed=1, fp=OTHER, dim=8)
    assert [n for _, _, n, _ in recount(cache_dir)] == [300, 50] or [
        n for _, _, n, _ in recount(cache_dir)
    ] == [50, 300]
    # Replaced by another process's store, under other tokens and another dimension.
    with Store(cache_dir) as second:
        second.put_matrix(FP, keys[:10], np.ones((10, 4), np.float32), [7.0] * 10)
    recount(cache_dir)
    store.delete_many(keys[250:] + other[:5])
    recount(cache_dir)
    with Store(cache_dir, size_limit=200 * DIM * 4) as limited:  # evicts the oldest
        limited.put_matrix(FP, keys[250:251], np.ones((1, DIM), np.float32), [1.0])
    recount(cache_dir)
    store.set_setting("unused", "x")
    ok(invoke("prune", "--max-size", f"{100 * DIM * 4}B", "--yes", cache_dir=cache_dir))
    recount(cache_dir)
    damage_entry(cache_dir)
    invoke("verify", "--repair", cache_dir=cache_dir)
    counted = recount(cache_dir)
    assert sum(n for _, _, n, _ in counted) == len(store)
    assert sorted((d, n) for _, d, n, _ in store.groups()) == sorted(
        (d, n) for _, d, n, _ in counted
    )
    store.clear()
    assert recount(cache_dir) == []
    assert store.groups() == []


def _forget_groups(cache_dir: Path) -> None:
    """Make ``index.db`` look as a version before the groups were kept left it."""
    db = sqlite3.connect(cache_dir / "index.db")
    with db:
        db.execute("DROP TRIGGER entries_groups_in")
        db.execute("DROP TRIGGER entries_groups_out")
        db.execute("DROP TABLE groups")
        db.execute("DROP TABLE removed")
        db.execute("DELETE FROM state WHERE name = 'groups_kept'")
    db.close()


def test_an_older_cache_gets_its_groups_counted_once_on_first_open(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        fill(store, 300)
    _forget_groups(cache_dir)
    with Store(cache_dir) as store:
        assert len(store) == 300
        assert store.groups() == [(FP.id, DIM, 300, 450.0)]
        fill(store, 20, seed=2)
        assert len(store) == 320
    recount(cache_dir)


def test_a_read_only_older_cache_counts_its_groups_from_the_entries(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(cache_dir) as store:
        fill(store, 30)
    _forget_groups(cache_dir)
    monkeypatch.setattr("os.access", lambda *args, **kwargs: False)  # a read-only mount
    with Store(cache_dir) as store:
        assert store.read_only
        assert len(store) == 30
        assert store.groups() == [(FP.id, DIM, 30, 45.0)]


def test_stats_len_and_size_totals_never_read_the_entries_table(store: Store) -> None:
    fill(store, 300)
    fill(store, 20, seed=1, fp=OTHER, dim=8)
    statements: list[str] = []
    for db in (store._index._reader, store._index._db):
        db.set_trace_callback(statements.append)
    summary = inventory.summarize(store)
    assert (summary.entries, len(store)) == (320, 320)
    assert store.vector_bytes() == (300 * DIM + 20 * 8) * 4
    assert statements  # it did read the index...
    assert not [s for s in statements if "FROM entries" in s]  # ...not one of its rows


@tuned(snapshot_min_rows=16, delete_page=40)
def test_a_writer_gets_in_between_prune_pages_and_while_the_snapshot_is_written(
    store: Store, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = fill(store, 1000)
    writer = _no_wait(Store(cache_dir))
    # Its own puts take no snapshot: the prune's is the one watched.
    monkeypatch.setattr(writer._index, "refresh_snapshot", lambda wait=False: False, raising=False)
    puts: list[str] = []
    put = _putter(writer, puts)

    _put_at_pauses_and_snapshot_pages(monkeypatch, put)
    try:
        assert store.delete_many(keys[:600]) == 600
    finally:
        monkeypatch.undo()
        writer.close()
    assert puts.count("pause") == 600 // 40 - 1
    assert "snapshot" in puts
    with Store(cache_dir) as reopened:
        assert reopened.contains_many(keys) == [False] * 600 + [True] * 400
        assert len(reopened) == 400 + len(puts)


@tuned(compact_rows=50)
def test_a_writer_gets_in_while_compaction_reads_usage_moves_and_writes_its_snapshot(
    store: Store, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = fill(store, 1000)
    before = store.read_many(keys[1::2], DIM).vectors.copy()
    store.delete_many(keys[::2])
    writer = _no_wait(Store(cache_dir))
    puts: list[str] = []
    put = _putter(writer, puts)

    def traced(statement: str) -> None:
        if "GROUP BY seg" in statement:
            put("usage")  # counting live rows: no write lock held

    original = index_module._connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        db = original(*args, **kwargs)
        db.set_trace_callback(traced)
        return db

    monkeypatch.setattr(index_module, "_connect", connect)
    _put_at_pauses_and_snapshot_pages(monkeypatch, put)
    try:
        assert store.compact(0.5) > 0
    finally:
        monkeypatch.undo()
        writer.close()
    assert {"usage", "pause", "snapshot"} <= set(puts)
    with Store(cache_dir) as reopened:
        found = reopened.read_many(keys[1::2], DIM)
        assert found.present.all()
        assert found.vectors.tobytes() == before.tobytes()
        assert not reopened.read_many(keys[::2], DIM).present.any()


@tuned(snapshot_min_rows=16, delete_page=100)
def test_readers_keep_the_snapshot_mid_prune_and_ask_sql_only_about_deleted_keys(
    store: Store, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = fill(store, 1000)
    _snapshot_now(store)  # every key in it
    reader = Store(cache_dir)
    asked: list[int] = []
    lookup = reader._index.lookup

    def counted(high: Any, *args: Any) -> Any:
        asked.append(len(high))
        return lookup(high, *args)

    monkeypatch.setattr(reader._index, "lookup", counted)
    seen: list[list[bool]] = []

    def mid_prune(seconds: float) -> None:
        asked.clear()
        seen.append(reader.read_many(keys, DIM).present.tolist())
        assert sum(asked) == seen[-1].count(False)  # SQL is asked about deleted keys only

    monkeypatch.setattr(time, "sleep", mid_prune)
    try:
        store.delete_many(keys[:500])
    finally:
        monkeypatch.undo()
        reader.close()
    assert len(seen) == 4  # after each of the first 4 pages of 100
    for page, present in enumerate(seen, start=1):
        assert present == [False] * (100 * page) + [True] * (1000 - 100 * page)


@tuned(snapshot_min_rows=16)  # a snapshot at this size
def test_a_key_deleted_after_the_snapshot_and_stored_again_reads_present_from_the_same_map(
    store: Store, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = fill(store, 200)
    _snapshot_now(store)
    loads: list[object] = []
    load = np.load

    def counted(*args: Any, **kwargs: Any) -> Any:
        loads.append(args[0])
        return load(*args, **kwargs)

    monkeypatch.setattr(np, "load", counted)
    with Store(cache_dir) as reader:
        assert reader.contains_many(keys) == [True] * 200
        store.delete_many(keys[:10])
        assert reader.contains_many(keys[:12]) == [False] * 10 + [True] * 2
        store.put_matrix(FP, keys[:5], np.full((5, DIM), 2.0, np.float32), [1.0] * 5)
        found = reader.read_many(keys[:12], DIM)
        assert found.present.tolist() == [True] * 5 + [False] * 5 + [True] * 2
        assert (found.vectors[:5] == 2.0).all()
    # One snapshot mapped all along: the removed keys were read beside it, no new one taken.
    assert len(loads) == 1


def test_a_maintenance_transaction_that_ran_slow_makes_the_next_ones_smaller() -> None:
    from embedcache.storage.upkeep import TARGET_SECONDS, Budget

    budget = Budget(10_000)
    first = budget.size
    budget.took(first, TARGET_SECONDS * 4)  # four times too long: a quarter next
    assert budget.size == first // 4
    budget.took(budget.size, TARGET_SECONDS / 100)  # fast: grows, at most doubling
    assert budget.size == first // 2
    budget.took(3, 60.0)  # a short last slice says nothing of the rate
    assert budget.size == first // 2
    for _ in range(20):
        budget.took(budget.size, 0.0)
    assert budget.size == 10_000  # never past the most a transaction may take
