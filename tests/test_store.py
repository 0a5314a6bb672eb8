from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest

from embedcache.cache_keys import fingerprint, text_keys
from embedcache.errors import CacheFormatError
from embedcache.models import RequestOptions
from embedcache.storage.store import MARKER_NAME, Store

from .conftest import damage_entry

FP = fingerprint(RequestOptions("jina-embeddings-v3", task="retrieval.passage"))


@pytest.fixture(autouse=True)
def _both_index_modes(index_mode: str) -> None:
    """Every test here runs against the snapshot and against SQL alone."""


def vectors(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def fill(store: Store, n: int, d: int = 8, seed: int = 0) -> list[bytes]:
    keys = text_keys(FP, [f"{seed}-{i}" for i in range(n)])
    store.put_many(FP, list(zip(keys, vectors(n, d, seed), [1.5] * n, strict=True)))
    return keys


def test_round_trip_is_bit_identical(cache_dir: Path) -> None:
    keys = text_keys(FP, ["a", "b", "c"])
    vecs = vectors(3)
    with Store(cache_dir) as store:
        store.put_many(FP, [(k, v, 1.5) for k, v in zip(keys, vecs, strict=True)])
        records = store.get_many([keys[2], b"\0" * 16, keys[0]])
        found = store.read_many([keys[1], b"\1" * 16, keys[2]], dim=8)
    assert records[1] is None
    assert records[0] is not None
    assert records[2] is not None
    assert records[0].vector.tobytes() == vecs[2].tobytes()
    assert records[2].vector.tobytes() == vecs[0].tobytes()
    assert records[0].tokens == 1.5
    assert records[0].fingerprint_id == FP.id
    assert found.present.tolist() == [True, False, True]
    assert found.vectors[0].tobytes() == vecs[1].tobytes()
    assert found.vectors[2].tobytes() == vecs[2].tobytes()
    assert found.tokens.tolist() == [1.5, 0.0, 1.5]


def test_vectors_are_raw_little_endian_float32_on_disk(cache_dir: Path) -> None:
    vec = vectors(1)[0]
    with Store(cache_dir) as store:
        store.put_many(FP, [(text_keys(FP, ["a"])[0], vec, 1.0)])
    (segment,) = (cache_dir / "segments").iterdir()
    assert segment.read_bytes() == vec.astype("<f4").tobytes()


def test_read_many_skips_entries_of_another_dimension(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        small = fill(store, 2, d=4, seed=1)
        large = fill(store, 2, d=8, seed=2)
        found = store.read_many([small[0], large[0]], dim=8)
        assert found.present.tolist() == [False, True]
        assert store.read_many([small[0], large[0]]).present.tolist() == [True, False]


def test_new_cache_dir_is_private(tmp_path: Path) -> None:
    directory = tmp_path / "nested" / "cache"
    with Store(directory) as store:
        fill(store, 1)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path


def test_marker_records_format_and_key_version(cache_dir: Path) -> None:
    Store(cache_dir).close()
    marker = json.loads((cache_dir / MARKER_NAME).read_text())
    assert marker == {"format_version": 2, "key_version": 1}


def test_format_version_mismatch_is_a_clear_error(cache_dir: Path) -> None:
    Store(cache_dir).close()
    (cache_dir / MARKER_NAME).write_text('{"format_version": 99, "key_version": 1}')
    with pytest.raises(CacheFormatError, match=r"format_version.*99"):
        Store(cache_dir)


def test_non_empty_foreign_dir_is_refused(cache_dir: Path) -> None:
    cache_dir.mkdir()
    (cache_dir / "notes.txt").write_text("mine")
    with pytest.raises(CacheFormatError, match="not an embedcache directory"):
        Store(cache_dir)


def test_damaged_entry_reads_as_missing(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        keys = fill(store, 3)
    damaged = damage_entry(cache_dir, keys[1])
    with Store(cache_dir) as store:
        assert store.get_many([damaged]) == [None]
        assert store.read_many(keys, dim=8).present.tolist() == [True, False, True]
        assert dict(store.records())[damaged] == "entry checksum mismatch"


def test_rows_past_the_end_of_a_cut_short_segment_read_as_missing(cache_dir: Path) -> None:
    # As after a disk filled up under an older version: the index lists rows the file lacks.
    with Store(cache_dir) as store:
        keys = fill(store, 300)  # past the row-by-row limit of a read, and under it below
        (segment,) = (cache_dir / "segments").iterdir()
        with open(segment, "r+b") as handle:
            handle.truncate(100 * 8 * 4 + 5)  # rows 0-99 whole, row 100 cut, none after
        many = store.read_many(keys, dim=8)
        few = store.read_many(keys[98:102], dim=8)
    assert many.present.tolist() == [True] * 100 + [False] * 200
    assert many.vectors[100:].any() == False  # noqa: E712
    assert many.vectors[:100].tobytes() == vectors(300)[:100].tobytes()
    assert few.present.tolist() == [True, True, False, False]


def test_no_eviction_by_default(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        assert store.size_limit is None
        fill(store, 50, d=1024)
        assert len(store) == 50


def test_size_limit_persists_and_evicts_oldest_stored(cache_dir: Path) -> None:
    with Store(cache_dir, size_limit=3 * 4096) as store:
        first = fill(store, 2, d=1024, seed=1)
        second = fill(store, 2, d=1024, seed=2)
        # One of the oldest batch goes (ties within a batch are broken by key).
        assert sum(store.contains_many(first)) == 1
        assert all(store.contains_many(second))
    with Store(cache_dir) as store:
        assert store.size_limit == 3 * 4096
    with Store(cache_dir, size_limit=0) as store:
        assert store.size_limit is None


def test_reads_never_write(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        keys = fill(store, 3)

    def files() -> dict[str, bytes]:
        return {str(p): p.read_bytes() for p in sorted(cache_dir.rglob("*")) if p.is_file()}

    with Store(cache_dir) as store:
        before = files()
        for _ in range(3):
            assert store.read_many([*keys, b"x" * 16]).present.sum() == 3
            store.get_many(keys)
            list(store.records())
        assert files() == before


def test_overwrite_and_delete_then_compact_keeps_live_vectors(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        keys = fill(store, 10, seed=1)
        replacement = vectors(1, seed=9)[0]
        store.put_many(FP, [(keys[0], replacement, 2.0)])
        assert store.delete_many([*keys[5:], b"z" * 16]) == 5
        assert len(store) == 5
        assert store.compact() > 0
        found = store.read_many(keys, dim=8)
        assert found.present.tolist() == [True] * 5 + [False] * 5
        assert found.vectors[0].tobytes() == replacement.tobytes()
        assert found.vectors[1].tobytes() == vectors(10, seed=1)[1].tobytes()
        assert len(list((cache_dir / "segments").iterdir())) == 1


def test_clear_removes_entries_and_files_but_keeps_counters(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        fill(store, 4)
        store.add_counters({"hits": 3})
        assert store.clear() == 4
        assert len(store) == 0
        assert list((cache_dir / "segments").iterdir()) == []
        assert store.counters()["hits"] == 3
        fill(store, 2)
        assert len(store) == 2


def test_a_segment_id_dropped_by_clear_or_compact_is_never_given_again(cache_dir: Path) -> None:
    # clear() and compact() delete a dropped segment's file after their commit: a new
    # segment under the same id, written by another process meanwhile, would go with it.
    segments = cache_dir / "segments"
    with Store(cache_dir) as store:
        fill(store, 4)
        used = {path.name for path in segments.iterdir()}
        store.clear()
        fill(store, 4, seed=1)
        after_clear = {path.name for path in segments.iterdir()}
        assert after_clear.isdisjoint(used)
        keys = fill(store, 4, seed=2)
        store.delete_many(keys)
        store.compact()
        fill(store, 1, seed=3)
        assert {path.name for path in segments.iterdir()}.isdisjoint(used | after_clear)
    with Store(cache_dir) as reopened:  # the highest id given is kept with the cache
        reopened.clear()
        fill(reopened, 1, seed=4)
        assert {path.name for path in segments.iterdir()}.isdisjoint(used | after_clear)


def test_fingerprints_list_the_settings_of_stored_entries(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        fill(store, 1)
        assert store.fingerprints() == {FP.id: FP}


def test_two_stores_on_one_directory_see_each_others_writes(cache_dir: Path) -> None:
    with Store(cache_dir) as one, Store(cache_dir) as two:
        keys = fill(one, 3)
        assert two.read_many(keys).present.all()
        more = fill(two, 3, seed=5)
        assert one.read_many(keys + more).present.all()


def test_named_settings_are_shared_by_every_store_on_the_directory(cache_dir: Path) -> None:
    with Store(cache_dir) as one, Store(cache_dir) as two:
        assert one.setting("float_style http://upstream") is None
        one.set_setting("float_style http://upstream", "float32")
        assert two.setting("float_style http://upstream") == "float32"
        two.set_setting("float_style http://upstream", "float64")
        assert one.setting("float_style http://upstream") == "float64"
        assert one.setting("float_style http://another") is None
    with Store(cache_dir) as reopened:
        assert reopened.setting("float_style http://upstream") == "float64"
        assert reopened.fingerprints() == {}  # settings are not request fingerprints


def test_groups_name_fingerprints_as_the_settings_do_whatever_their_top_bit(
    cache_dir: Path,
) -> None:
    # Eight kinds of entry: ids are hashes, so some have the top bit set (checked below),
    # which SQLite holds as a negative integer.
    kinds = [
        RequestOptions("jina-embeddings-v3", task=task, dimensions=dims)
        for task in ("retrieval.passage", "retrieval.query")
        for dims in (32, 64, 128, 256)
    ]
    with Store(cache_dir) as store:
        for options in kinds:
            fp = fingerprint(options)
            vector = np.ones(options.dimensions or 8, np.float32)
            store.put_many(fp, [(text_keys(fp, ["a"])[0], vector, 1.0)])
        ids = [fp_id for fp_id, _, _, _ in store.groups()]
        assert any(fp_id >= 1 << 63 for fp_id in ids)
        assert sorted(ids) == sorted(store.fingerprints())
