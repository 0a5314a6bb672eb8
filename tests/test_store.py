from __future__ import annotations

import json
import stat
from pathlib import Path

import diskcache
import numpy as np
import pytest

from embedcache.errors import CacheFormatError
from embedcache.keys import fingerprint, text_keys
from embedcache.models import RequestOptions
from embedcache.store import MARKER_NAME, Store

FP = fingerprint(RequestOptions("jina-embeddings-v3", task="retrieval.passage"))


def vectors(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_round_trip_is_bit_identical(cache_dir: Path) -> None:
    keys = text_keys(FP, ["a", "b", "c"])
    vecs = vectors(3)
    with Store(cache_dir) as store:
        store.put_many(FP, [(k, v, 1.5) for k, v in zip(keys, vecs, strict=True)])
        records = store.get_many([keys[2], b"\0" * 16, keys[0]])
    assert records[1] is None
    assert records[0] is not None
    assert records[2] is not None
    assert records[0].vector.tobytes() == vecs[2].tobytes()
    assert records[2].vector.tobytes() == vecs[0].tobytes()
    assert records[0].tokens == 1.5
    assert records[0].fingerprint_id == FP.id


def test_entries_are_raw_float32_not_pickle(cache_dir: Path) -> None:
    key = text_keys(FP, ["a"])[0]
    vec = vectors(1)[0]
    with Store(cache_dir) as store:
        store.put_many(FP, [(key, vec, 1.0)])
    with diskcache.Cache(str(cache_dir)) as raw:
        blob = raw.get(key)
    assert isinstance(blob, bytes)
    assert blob.startswith(b"EC")
    assert blob.endswith(vec.astype("<f4").tobytes())


def test_new_cache_dir_is_private(tmp_path: Path) -> None:
    directory = tmp_path / "nested" / "cache"
    with Store(directory) as store:
        store.put_many(FP, [(text_keys(FP, ["a"])[0], vectors(1)[0], 1.0)])
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "cache.db").stat().st_mode) == 0o600


def test_marker_records_format_and_key_version(cache_dir: Path) -> None:
    Store(cache_dir).close()
    marker = json.loads((cache_dir / MARKER_NAME).read_text())
    assert marker == {"format_version": 1, "key_version": 1}


def test_format_version_mismatch_is_a_clear_error(cache_dir: Path) -> None:
    Store(cache_dir).close()
    (cache_dir / MARKER_NAME).write_text('{"format_version": 99, "key_version": 1}')
    with pytest.raises(CacheFormatError, match=r"format_version.*99"):
        Store(cache_dir)


def test_foreign_diskcache_dir_is_refused(cache_dir: Path) -> None:
    diskcache.Cache(str(cache_dir)).close()
    with pytest.raises(CacheFormatError, match="not an embedcache directory"):
        Store(cache_dir)


def test_damaged_entry_reads_as_missing(cache_dir: Path) -> None:
    key = text_keys(FP, ["a"])[0]
    with Store(cache_dir) as store:
        store.put_many(FP, [(key, vectors(1)[0], 1.0)])
    with diskcache.Cache(str(cache_dir)) as raw:
        blob = bytearray(raw.get(key))
        blob[-1] ^= 0xFF
        raw.set(key, bytes(blob))
    with Store(cache_dir) as store:
        assert store.get_many([key]) == [None]


def test_no_eviction_by_default_and_limit_is_reported(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        assert store.size_limit is None
        keys = text_keys(FP, [str(i) for i in range(50)])
        store.put_many(FP, list(zip(keys, vectors(50, d=1024), [1.0] * 50, strict=True)))
        assert len(store) == 50
    with Store(cache_dir, size_limit=10_000_000) as store:
        assert store.size_limit == 10_000_000


def test_reads_never_write(cache_dir: Path) -> None:
    key = text_keys(FP, ["a"])[0]
    with Store(cache_dir) as store:
        store.put_many(FP, [(key, vectors(1)[0], 1.0)])

    def files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(cache_dir.iterdir())}

    with Store(cache_dir) as store:
        before = files()
        for _ in range(3):
            assert store.get_many([key, b"x" * 16])[0] is not None
        assert files() == before


def test_fingerprints_list_the_settings_of_stored_entries(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        store.put_many(FP, [(text_keys(FP, ["a"])[0], vectors(1)[0], 1.0)])
        assert store.fingerprints() == {FP.id: FP.fields}
