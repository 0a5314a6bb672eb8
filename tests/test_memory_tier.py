"""Recently read vectors kept in memory: repeated small reads skip the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedcache import CachedEmbedder, JinaClient, RequestOptions, Store
from embedcache.storage.memory import MemoryTier
from embedcache.storage.store import Found
from embedcache.testing import JinaEmulator

OPTIONS = RequestOptions("jina-embeddings-v3", task="retrieval.passage")


def found(rows: int, dim: int = 4, present: list[bool] | None = None) -> Found:
    vectors = np.arange(rows * dim, dtype=np.float32).reshape(rows, dim)
    mask = np.array(present if present is not None else [True] * rows)
    return Found(mask, vectors, np.arange(rows, dtype=np.float64))


def test_all_keys_held_come_back_in_the_order_asked() -> None:
    hot = MemoryTier(1 << 20)
    hot.put([b"a", b"b"], found(2))
    got = hot.get_all([b"b", b"a"], dim=4)
    assert got is not None
    assert got.present.all()
    assert got.vectors.tolist() == [[4, 5, 6, 7], [0, 1, 2, 3]]
    assert got.tokens.tolist() == [1.0, 0.0]


def test_a_partial_match_or_another_dimension_is_left_to_the_store() -> None:
    hot = MemoryTier(1 << 20)
    hot.put([b"a", b"b"], found(2, present=[True, False]))
    assert hot.get_all([b"a", b"b"], dim=4) is None
    assert hot.get_all([b"a"], dim=8) is None
    assert hot.get_all([], dim=4) is None


def test_the_least_recently_used_vectors_go_first_past_the_budget() -> None:
    hot = MemoryTier(max_bytes=2 * (16 + 200))  # two 4-d float32 vectors
    hot.put([b"a", b"b"], found(2))
    assert hot.get_all([b"a"], dim=4) is not None  # now b is the oldest
    hot.put([b"c"], found(1))
    assert len(hot) == 2
    assert hot.get_all([b"b"], dim=4) is None
    assert hot.get_all([b"a", b"c"], dim=4) is not None


def test_held_vectors_are_copies_the_caller_cannot_change() -> None:
    hot = MemoryTier(1 << 20)
    batch = found(1)
    hot.put([b"a"], batch)
    batch.vectors[0] = -1
    got = hot.get_all([b"a"], dim=4)
    assert got is not None
    got.vectors[0] = -2
    again = hot.get_all([b"a"], dim=4)
    assert again is not None
    assert again.vectors.tolist() == [[0, 1, 2, 3]]


def test_an_embedder_with_memory_serves_repeats_without_reading_the_store(
    emulator: JinaEmulator, client: JinaClient, cache_dir: Path
) -> None:
    texts = ["kept in memory", "and this"]
    with Store(cache_dir) as store:
        embedder = CachedEmbedder(store, client, memory_bytes=1 << 20)
        first = embedder.embed(texts, OPTIONS)
        embedder.embed(texts, OPTIONS)  # read from the store, now held
        with Store(cache_dir) as other:
            other.clear()  # another process prunes the cache
        requests = len(emulator.requests)
        again = embedder.embed(texts, OPTIONS)
        assert len(emulator.requests) == requests
        assert again.tobytes() == first.tobytes()
        assert embedder.stats.hits == 4
        embedder.close()
