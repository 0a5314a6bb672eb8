"""``Store.removals``: every way entries leave a directory changes it, as a long-lived store
in another process (the proxy) sees it; nothing else does."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embedcache.cache_keys import fingerprint, text_keys
from embedcache.models import RequestOptions
from embedcache.storage.store import Store

from .conftest import damage_entry


def fill(store: Store, n: int, d: int = 8, seed: int = 0) -> list[bytes]:
    """``n`` entries of ``d`` dimensions, stored under settings that ask for ``d`` (so
    ``verify`` finds them right)."""
    fp = fingerprint(RequestOptions("jina-embeddings-v3", "retrieval.passage", dimensions=d))
    keys = text_keys(fp, [f"{seed}-{i}" for i in range(n)])
    vectors = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    store.put_many(fp, list(zip(keys, vectors, [1.0] * n, strict=True)))
    return keys


def cli(cache_dir: Path, *args: str) -> None:
    """Run ``embedcache --cache-dir DIR ARGS`` in a process of its own, as a user would."""
    done = subprocess.run(
        [sys.executable, "-m", "embedcache", "--cache-dir", str(cache_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture
def watcher(cache_dir: Path) -> Iterator[Store]:
    """A store opened before anything is removed and kept open, as a proxy worker's is."""
    with Store(cache_dir) as store:
        fill(store, 4)
        fill(store, 3, d=16, seed=1)
        yield store


def test_clear_by_another_process_changes_removals(cache_dir: Path, watcher: Store) -> None:
    before = watcher.removals()
    cli(cache_dir, "clear", "--yes")
    assert watcher.removals() != before


def test_clearing_an_empty_cache_still_changes_removals(cache_dir: Path) -> None:
    # A reader may hold entries the directory no longer has (another tier's): clear means
    # "forget everything", whatever the index held.
    with Store(cache_dir) as store, Store(cache_dir) as other:
        before = store.removals()
        other.clear()
        assert store.removals() != before


def test_prune_by_another_process_changes_removals(cache_dir: Path, watcher: Store) -> None:
    before = watcher.removals()
    cli(cache_dir, "prune", "--dimensions", "16", "--yes")
    assert len(watcher) == 4
    assert watcher.removals() != before


def test_verify_repair_by_another_process_changes_removals(cache_dir: Path, watcher: Store) -> None:
    damage_entry(cache_dir)
    before = watcher.removals()
    cli(cache_dir, "verify", "--repair")
    assert len(watcher) == 6
    assert watcher.removals() != before


def test_delete_many_changes_removals_seen_by_another_store(cache_dir: Path) -> None:
    with Store(cache_dir) as store, Store(cache_dir) as other:
        keys = fill(store, 4)
        before = other.removals()
        assert store.delete_many(keys[:1]) == 1
        after_one = other.removals()
        assert after_one != before
        store.delete_many(keys[1:])
        assert other.removals() != after_one


def test_a_deletion_stopped_part_way_has_changed_removals(cache_dir: Path) -> None:
    class Interrupted(Exception):
        pass

    with Store(cache_dir) as store, Store(cache_dir) as other:
        keys = fill(store, 4)
        before = other.removals()

        def pages() -> Iterator[list[bytes]]:
            yield keys[:2]
            raise Interrupted

        with pytest.raises(Interrupted):
            store.delete_pages(pages())
        assert len(other) == 2
        assert other.removals() != before


def test_puts_reads_compaction_eviction_and_deleting_nothing_leave_removals_alone(
    cache_dir: Path,
) -> None:
    with Store(cache_dir) as store, Store(cache_dir) as other:
        keys = fill(store, 4)
        store.delete_many(keys[:3])  # dead rows for compact to drop
        before = other.removals()
        fill(store, 4)  # the same keys again: replaced, not removed
        store.read_many(keys)
        store.get_many(keys)
        store.contains_many(keys)
        list(store.records())
        assert store.compact(0.1) > 0
        assert store.delete_many([b"\0" * 16]) == 0
        with Store(cache_dir, size_limit=4 * 8 * 2) as limited:
            fill(limited, 4, seed=2)  # evicts the oldest: a size limit at work
            assert len(limited) == 2
        assert other.removals() == before
