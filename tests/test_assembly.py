"""The composition root: what an Assembly builds, and what it closes."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedcache import Assembly, CacheSettings, JinaClient, Store
from embedcache.errors import CacheError, CacheMissError
from embedcache.models import RequestOptions
from embedcache.testing import JinaEmulator

from .conftest import API_KEY

V3 = RequestOptions("jina-embeddings-v3", task="retrieval.passage")


def test_closing_records_the_counters_before_the_store_and_leaves_a_given_upstream_open(
    emulator: JinaEmulator, cache_dir: Path, client: JinaClient
) -> None:
    with Assembly(CacheSettings(cache_dir=cache_dir), upstream=client) as parts:
        parts.embedder.embed(["one", "two"], V3)
        parts.embedder.embed(["one"], V3)
    with Store(cache_dir) as store:
        assert len(store) == 2
        counters = store.counters()
    assert (counters["misses"], counters["hits"], counters["requests"]) == (2, 1, 1)
    assert client.embed(["three"], V3).vectors.shape == (1, 1024)  # still open


def test_the_settings_reach_the_parts(emulator: JinaEmulator, cache_dir: Path) -> None:
    settings = CacheSettings(
        cache_dir=cache_dir, base_url=emulator.url, api_key=API_KEY, max_attempts=2
    )
    with Assembly(settings) as parts:
        assert parts.store.directory == cache_dir
        assert parts.upstream is parts.client
        assert parts.client.max_attempts == 2
        assert parts.shared is None
        assert parts.embedder.embed(["x"], V3).shape == (1, 1024)
    assert len(emulator.requests) == 1


def test_an_offline_assembly_raises_on_a_miss_without_sending(
    emulator: JinaEmulator, cache_dir: Path
) -> None:
    settings = CacheSettings(cache_dir=cache_dir, base_url=emulator.url, offline=True)
    with Assembly(settings) as parts, pytest.raises(CacheMissError):
        parts.embedder.embed(["x"], V3)
    assert emulator.requests == []


def test_a_bad_cache_directory_fails_when_the_assembly_is_made(tmp_path: Path) -> None:
    occupied = tmp_path / "a-file"
    occupied.write_text("not a directory")
    with pytest.raises(CacheError, match="a-file"):
        Assembly(CacheSettings(cache_dir=occupied))


def test_closing_twice_is_harmless(cache_dir: Path) -> None:
    parts = Assembly(CacheSettings(cache_dir=cache_dir))
    parts.close()
    parts.close()


def test_the_api_key_is_not_in_the_settings_repr() -> None:
    assert API_KEY not in repr(CacheSettings(api_key=API_KEY))
