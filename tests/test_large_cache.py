"""Whole-cache operations in bounded memory and bounded write transactions (issue 17).

Memory bounds are checked with tracemalloc on a small cache and a tiny page: the peak must
stay well under the bytes of the cache's vectors, which a whole-cache list or array would
hold. Never wall-clock.
"""

from __future__ import annotations

import json
import sqlite3
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedcache.cache_keys import fingerprint, text_keys
from embedcache.errors import InvalidInputError
from embedcache.maintenance import exporting, inventory, sharing
from embedcache.maintenance.inventory import Filters
from embedcache.models import RequestOptions
from embedcache.storage import snapshot as snapshot_module
from embedcache.storage import store as store_module
from embedcache.storage.shared import RedisStore
from embedcache.storage.store import Store

from .cli_helpers import invoke
from .conftest import tuned
from .redis_server import RedisServer

DIM = 64
N = 4000
VECTOR_BYTES = N * DIM * 4  # 1 MB: what a whole-cache array of the vectors holds
FP = fingerprint(RequestOptions("jina-embeddings-v3", task="retrieval.passage", dimensions=DIM))


def fill(store: Store, n: int = N, dim: int = DIM, seed: int = 0) -> list[bytes]:
    """``n`` entries, each put in its own batch of 100 so their ages differ."""
    keys = text_keys(FP, [f"{seed}-{i}" for i in range(n)])
    matrix = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    for start in range(0, n, 100):
        end = min(n, start + 100)
        store.put_matrix(FP, keys[start:end], matrix[start:end], [1.0] * (end - start))
    return keys


def peak_bytes(work: Callable[[], Any]) -> int:
    """Peak of traced Python and numpy allocations while ``work`` runs (a caller runs it
    once on a tiny cache first: the modules it imports on first use are not its pages)."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_export_streams_a_page_at_a_time_and_writes_every_row(store: Store, tmp_path: Path) -> None:
    with Store(tmp_path / "tiny") as tiny:
        fill(tiny, 10)
        exporting.export(tiny, Filters(), tmp_path / "warm-up", parquet=True, page=64)
    keys = fill(store)
    prefix = tmp_path / "out"
    peak = peak_bytes(lambda: exporting.export(store, Filters(), prefix, parquet=True, page=64))
    # A whole-cache export holds the vectors (1 MB) at least once, stacked; a streamed one
    # holds a page and fixed costs (the Parquet writer, a page of metadata: ~260 KB).
    assert peak < VECTOR_BYTES * 0.3, peak
    matrix = np.load(prefix.with_suffix(".npy"))
    rows = [json.loads(line) for line in prefix.with_suffix(".jsonl").read_text().splitlines()]
    assert matrix.shape == (N, DIM)
    assert len(rows) == N
    expected = {r.vector.tobytes() for r in store.get_many(keys) if r is not None}
    assert {row.tobytes() for row in matrix} == expected
    got = store.get_many([bytes.fromhex(rows[7]["key"])])[0]
    assert got is not None
    assert got.vector.tobytes() == matrix[7].tobytes()
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(prefix.with_suffix(".parquet"))
    assert table.num_rows == N
    assert np.asarray(table.column("embedding")[7].as_py(), np.float32).tobytes() == (
        matrix[7].tobytes()
    )


def test_a_failed_export_leaves_no_files_behind(store: Store, tmp_path: Path) -> None:
    fill(store, 300)
    fill(store, 5, dim=16, seed=1)  # another dimension, found after pages were written
    with pytest.raises(InvalidInputError, match=r"\(16-d: 5, 64-d: 300\)"):
        exporting.export(store, Filters(), tmp_path / "out", page=16)
    assert list(tmp_path.glob("*out*")) == []


@tuned(snapshot_page=50)
def test_prune_selection_holds_one_page_and_each_page_is_committed_before_the_next(
    store: Store, cache_dir: Path
) -> None:
    # The snapshot rebuilt after the last page is paged too, and not what this measures.
    keys = fill(store)
    keep = (N // 2) * DIM * 4
    seen: list[int] = []

    with Store(cache_dir) as other:

        def pages() -> Iterator[list[bytes]]:
            for page in inventory.prune_pages(store, Filters(), keep, page=50):
                # Another process sees every earlier page deleted already.
                seen.append(len(other))
                yield [entry.key for entry in page]

        peak = peak_bytes(lambda: store.delete_pages(pages()))
    assert seen == [N - 50 * i for i in range(N // 2 // 50)]
    # The oldest half went, as a size limit would evict them; all of it listed, page by page.
    assert store.contains_many(keys) == [False] * (N // 2) + [True] * (N // 2)
    assert peak < VECTOR_BYTES / 4, peak


def test_prune_selection_reads_no_vector(store: Store, cache_dir: Path) -> None:
    keys = fill(store, 300)
    for path in (cache_dir / "segments").iterdir():
        path.write_bytes(b"")  # every vector unreadable: only the index is left
    chosen = inventory.select_for_prune(store, Filters(), 100 * DIM * 4)
    assert {entry.key for entry in chosen} == set(keys[:200])  # the oldest two batches


def test_stats_reads_the_index_only_not_a_vector(store: Store, cache_dir: Path) -> None:
    fill(store, 300)
    fill(store, 5, dim=16, seed=1)
    for path in (cache_dir / "segments").iterdir():
        path.write_bytes(b"")  # every vector unreadable: only the index is left
    summary = inventory.summarize(store)
    assert summary.entries == 305
    groups = {g.dimensions: (count, tokens) for g, (count, tokens) in summary.groups.items()}
    assert groups == {DIM: (300, 300.0), 16: (5, 5.0)}  # 1 token recorded for each


@tuned(snapshot_min_rows=16, delete_page=64)  # a snapshot at this size
def test_delete_many_commits_in_pages_of_bounded_size(store: Store, cache_dir: Path) -> None:
    keys = fill(store, 1000)
    assert store.delete_many([*keys[:500], b"\x00" * 16]) == 500
    assert store.contains_many(keys) == [False] * 500 + [True] * 500
    with Store(cache_dir) as reopened:  # the snapshot was rebuilt: no deleted key in it
        view = reopened._index.view()
        assert view is not None
        assert view.columns.shape[1] == 500
        assert reopened.read_many(keys[:500]).present.sum() == 0


@tuned(compact_rows=64)
def test_compact_moves_a_chunk_at_a_time_and_keeps_every_live_vector(
    store: Store, cache_dir: Path
) -> None:
    keys = fill(store, dim=256)  # 4 MB of vectors: they dominate the index (224 KB)
    before = store.read_many(keys[1::2]).vectors.copy()
    store.delete_many(keys[::2])
    old = sorted((cache_dir / "segments").iterdir())
    peak = peak_bytes(lambda: store.compact(0.5))
    assert peak < VECTOR_BYTES  # half the vectors that live (2 MB) was never held at once
    assert not any(path.exists() for path in old)
    with Store(cache_dir) as reopened:
        found = reopened.read_many(keys[1::2])
        assert found.present.all()
        assert found.vectors.tobytes() == before.tobytes()
        assert not reopened.read_many(keys[::2]).present.any()


def test_sync_both_ways_holds_one_page_at_a_time(
    store: Store, redis_server: RedisServer, tmp_path: Path
) -> None:
    shared = RedisStore(redis_server.url, strict=True)
    with Store(tmp_path / "tiny") as tiny, Store(tmp_path / "tiny-down") as tiny_down:
        fill(tiny, 10, seed=1)
        sharing.push(tiny, shared, batch=64)
        sharing.pull(tiny_down, shared, batch=64)
    keys = fill(store)
    try:
        peak = peak_bytes(lambda: sharing.push(store, shared, batch=64))
        assert shared.count() == N + 10
        # A page is 64 entries (16 KB of vectors); redis-py's pipeline buffers add ~300 KB.
        assert peak < VECTOR_BYTES / 2
        with Store(tmp_path / "down") as down:
            peak = peak_bytes(lambda: sharing.pull(down, shared, batch=64))
            assert all(down.contains_many(keys))
        assert peak < VECTOR_BYTES / 2
    finally:
        shared.close()


def test_ls_json_is_one_json_dump_newest_first(store: Store, cache_dir: Path) -> None:
    keys = fill(store, 300)
    listed = invoke("ls", "--json", "--limit", "1000", cache_dir=cache_dir)
    entries = json.loads(listed.output)
    assert listed.output == json.dumps(entries, indent=2) + "\n"
    assert sorted(entries, key=str) == sorted(
        (e.as_dict() for e in inventory.entries(store)), key=str
    )
    created = [entry["created"] for entry in entries]
    assert created == sorted(created, reverse=True)  # newest first
    assert {bytes.fromhex(e["key"]) for e in entries} == set(keys)
    assert invoke("ls", "--json", "--offset", "300", cache_dir=cache_dir).output == "[]\n"


def _recount(cache_dir: Path) -> tuple[int, int]:
    """The total kept in index.db, and the entries' bytes counted afresh."""
    db = sqlite3.connect(cache_dir / "index.db")
    try:
        kept = db.execute("SELECT value FROM state WHERE name = 'vector_bytes'").fetchone()[0]
        counted = db.execute("SELECT COALESCE(SUM(4 * dim), 0) FROM entries").fetchone()[0]
        return int(kept), int(counted)
    finally:
        db.close()


def test_the_vector_byte_total_is_kept_through_every_change_without_a_recount(
    store: Store, cache_dir: Path
) -> None:
    keys = fill(store, 300)
    assert _recount(cache_dir) == (300 * DIM * 4,) * 2
    # Replaced under another dimension, by another process's store.
    with Store(cache_dir) as other:
        other.put_matrix(FP, keys[:10], np.ones((10, 16), np.float32), [1.0] * 10)
    assert _recount(cache_dir) == ((290 * DIM + 10 * 16) * 4,) * 2
    store.delete_many(keys[250:])
    assert _recount(cache_dir)[0] == _recount(cache_dir)[1] == store.vector_bytes()
    with Store(cache_dir, size_limit=100 * DIM * 4) as limited:  # evicts the oldest
        limited.put_matrix(FP, keys[250:251], np.ones((1, DIM), np.float32), [1.0])
        assert limited.vector_bytes() <= 100 * DIM * 4
    kept, counted = _recount(cache_dir)
    assert kept == counted == store.vector_bytes()
    store.clear()
    assert _recount(cache_dir) == (0, 0)


def _mapped_files() -> set[str]:
    return {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
            if line.endswith(".f32")}  # fmt: skip


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_a_sparse_read_of_a_large_segment_reads_rows_and_a_dense_one_maps_it(
    store: Store, cache_dir: Path
) -> None:
    n = 80_000  # one 20 MB segment: 5,000 pages
    keys = text_keys(FP, [f"s-{i}" for i in range(n)])
    matrix = np.random.default_rng(2).standard_normal((n, DIM)).astype(np.float32)
    store.put_matrix(FP, keys, matrix, [1.0] * n)
    with Store(cache_dir) as reader:
        sparse = reader.read_many(keys[::250], DIM)  # 320 rows: fewer than one per 8 pages
        assert sparse.vectors.tobytes() == matrix[::250].tobytes()
        assert _mapped_files() == set()  # populating a 20 MB map would cost more
        dense = reader.read_many(keys[::4], DIM)  # 20,000 rows
        assert dense.vectors.tobytes() == matrix[::4].tobytes()
        assert len(_mapped_files()) == 1


@tuned(compact_rows=20, delete_page=20)
@pytest.mark.parametrize("job", ["compact", "delete"])
def test_a_maintenance_job_pauses_between_its_transactions_so_waiting_fills_get_in(
    store: Store, monkeypatch: pytest.MonkeyPatch, job: str
) -> None:
    # SQLite takes no turns: a job that began its next transaction at once would take the
    # lock back before a fill waiting for it woke (measured in bench/RESULTS.md).
    keys = fill(store, 400)
    if job == "compact":
        store.delete_many(keys[::2])  # every segment half dead: 200 rows to move
    transactions: list[str] = []
    pauses: list[float] = []
    write = store._index.write

    def counted() -> Any:
        transactions.append(job)
        return write()

    monkeypatch.setattr(store._index, "write", counted)
    monkeypatch.setattr(time, "sleep", pauses.append)  # the store's only sleep
    if job == "compact":
        store.compact()
        # The segments' usage is read without the write lock; then 10 moves, the one that
        # finds nothing left, the new snapshot's install and the drop of the old segments.
        moves = 200 // 20
        assert len(transactions) == moves + 3
        assert pauses == [store_module.LOCK_PAUSE_SECONDS] * moves
    else:
        assert store.delete_many(keys[1::2]) == 200
        assert len(transactions) == 200 // 20  # too few changes to take a new snapshot
        assert pauses == [store_module.LOCK_PAUSE_SECONDS] * (200 // 20 - 1)
    assert store_module.LOCK_PAUSE_SECONDS > 0.1  # SQLite's longest busy-handler sleep


@tuned(snapshot_min_rows=16)  # a snapshot at this size
def test_a_prune_stopped_after_its_first_page_leaves_no_deleted_entry_readable(
    store: Store, cache_dir: Path
) -> None:
    keys = fill(store, 400)
    assert store._index.view() is not None

    def pages() -> Iterator[list[bytes]]:
        yield keys[:50]
        raise KeyboardInterrupt  # Ctrl-C (or a kill) before the last page

    with pytest.raises(KeyboardInterrupt):
        store.delete_pages(pages())
    with Store(cache_dir) as reopened:
        for opened in (store, reopened):
            assert opened.contains_many(keys) == [False] * 50 + [True] * 350
            assert opened.read_many(keys, dim=DIM).present.tolist() == [False] * 50 + [True] * 350
    # Readers kept the snapshot all along: the deleted keys are listed beside it.
    view = store._index.view()
    assert view is not None
    assert view.columns.shape[1] == 400
    assert len(view.removed) == 50


def test_keys_removed_page_by_page_are_all_known_to_a_reader_and_no_others() -> None:
    rng = np.random.default_rng(3)
    empty = np.empty((snapshot_module.WIDTH, 0), np.int64)
    view = snapshot_module.View(1, empty, run_keys=64)  # many runs, at this size
    removed: list[int] = []
    for page in range(40):
        high = rng.integers(-(2**63), 2**63 - 1, int(rng.integers(1, 30))).tolist()
        removed += high
        view.add_removed(high, page)
        others = rng.integers(-(2**63), 2**63 - 1, 20)
        mask = view.removed_mask(np.concatenate([np.array(removed, np.int64), others]))
        assert mask[: len(removed)].all()
        assert not mask[len(removed) :].any()
    assert view.removed.tolist() == sorted(removed)
    assert all(len(run) <= 64 for run in view.runs)
