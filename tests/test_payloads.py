"""Entries that are not one float32 vector on disk: ragged float32 (multi-vector answers) and
bytes (packed bits of the binary types), through every path of the store."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from embedcache.cache_keys import fingerprint, text_keys
from embedcache.errors import CacheFormatError, InvalidInputError
from embedcache.maintenance import inventory
from embedcache.models import RequestOptions
from embedcache.storage.store import MARKER_NAME, Store

from .cli_helpers import invoke, ok, one_line_error
from .test_open_race import race, report

FP = fingerprint(RequestOptions("jina-embeddings-v4", task="retrieval.passage"))
OLD = "af16ef0"  # the last version that knew vectors only


@pytest.fixture(autouse=True)
def _both_index_modes(index_mode: str) -> None:
    """Every test here runs against the snapshot and against SQL alone."""


def payloads(seed: int = 0) -> list[np.ndarray]:
    """One entry of each kind and shape: ragged float32, packed bits as uint8 and int8 (one
    vector, and one row per token), and a plain vector."""
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((7, 128)).astype(np.float32),
        rng.standard_normal((1, 128)).astype(np.float32),
        rng.integers(0, 256, 128).astype(np.uint8),
        rng.integers(-128, 128, 128).astype(np.int8),
        rng.integers(0, 256, (5, 16)).astype(np.uint8),
        rng.integers(-128, 128, (3, 16)).astype(np.int8),
        rng.standard_normal(2048).astype(np.float32),  # v4's own size: verify passes it
    ]


def same(a: np.ndarray | None, b: np.ndarray) -> bool:
    """Bit for bit, dtype and shape."""
    return (
        a is not None and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    )


def all_same(found: Sequence[np.ndarray | None], arrays: Sequence[np.ndarray]) -> bool:
    """Each found array bit for bit the one stored, none missing."""
    return len(found) == len(arrays) and all(map(same, found, arrays))


def put_all(store: Store, tag: str = "") -> tuple[list[bytes], list[np.ndarray]]:
    arrays = payloads(len(tag))
    keys = text_keys(FP, [f"{tag}{i}" for i in range(len(arrays))])
    store.put_payloads(FP, keys, arrays, [float(i) + 0.5 for i in range(len(arrays))])
    return keys, arrays


def heap_offsets(cache_dir: Path, keys: Sequence[bytes]) -> dict[bytes, int]:
    """Where in its heap each of ``keys`` that is a payload starts, from its index row."""
    with sqlite3.connect(cache_dir / "index.db") as db:
        rows = dict(db.execute("SELECT k, row FROM entries WHERE dim < 0").fetchall())
    db.close()
    high = {key: int.from_bytes(key[:8], "little", signed=True) for key in keys}
    return {key: rows[k] >> 24 for key, k in high.items() if k in rows}


def test_each_kind_reads_back_bit_for_bit_with_its_dtype_shape_and_tokens(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        keys, arrays = put_all(store)
        found = store.read_payloads([*keys, b"\0" * 16])
    assert [same(a, b) for a, b in zip(found.payloads, arrays, strict=False)] == [True] * 7
    assert found.payloads[-1] is None
    assert found.tokens.tolist() == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 0.0]
    with Store(cache_dir) as reopened:  # from the files alone
        again = reopened.read_payloads(keys)
        records = reopened.get_many(keys)
    assert all_same(again.payloads, arrays)
    assert all(r is not None and same(r.vector, a) for r, a in zip(records, arrays, strict=True))


def test_a_payload_is_its_bytes_in_a_heap_file_and_counts_them(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        keys, arrays = put_all(store)
        assert store.vector_bytes() == sum(a.nbytes for a in arrays)
        sizes = {key: stored.size for key, stored in store.listing()}
    (heap,) = (cache_dir / "segments").glob("*.heap")
    assert heap.stat().st_size == sum(a.nbytes for a in arrays[:-1])
    assert sizes == {key: a.nbytes for key, a in zip(keys, arrays, strict=True)}


def test_vectors_and_payloads_share_a_directory_and_reads_of_vectors_never_take_a_payload(
    cache_dir: Path,
) -> None:
    vectors = np.random.default_rng(9).standard_normal((3, 128)).astype(np.float32)
    with Store(cache_dir) as store:
        keys, _arrays = put_all(store)
        plain = text_keys(FP, ["v0", "v1", "v2"])
        store.put_many(FP, [(k, v, 1.0) for k, v in zip(plain, vectors, strict=True)])
        asked = [keys[0], plain[0], keys[2], plain[1], plain[2]]  # a ragged entry first
        for dim in (None, 128):
            found = store.read_many(asked, dim)
            assert found.present.tolist() == [False, True, False, True, True]
            assert found.vectors[[1, 3, 4]].tobytes() == vectors.tobytes()
        kinds = {key: r.kind for key, r in store.records() if not isinstance(r, str)}
        listed = {key: (s.kind, s.dimensions) for key, s in store.listing()}
        assert len(store) == 10
        groups = sorted((dim, n) for _, dim, n, _ in store.groups())
    assert [kinds[k] for k in keys] == ["ragged", "ragged"] + ["bytes"] * 4 + ["vector"]
    # The dimensions each answers for: a ragged row's width, 8 bits a packed byte.
    assert [listed[k] for k in keys[:6]] == [("ragged", 128)] * 2 + [("bytes", 1024)] * 2 + [
        ("bytes", 128)
    ] * 2
    assert groups == [(128, 1), (128, 1), (128, 2), (128, 3), (1024, 1), (1024, 1), (2048, 1)]


def test_a_key_stored_again_as_another_kind_reads_as_the_last(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        keys, arrays = put_all(store)
        store.put_payloads(FP, keys[:2], [arrays[2], arrays[6]], [1.0, 1.0])
        found = store.read_payloads(keys[:2])
        total = store.vector_bytes()
    assert same(found.payloads[0], arrays[2])
    assert same(found.payloads[1], arrays[6])
    assert total == sum(a.nbytes for a in arrays[2:]) + arrays[2].nbytes + arrays[6].nbytes


def test_verify_catches_a_flipped_byte_in_each_kind(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        keys, _arrays = put_all(store)
    offsets = heap_offsets(cache_dir, keys)
    heap = next((cache_dir / "segments").glob("*.heap"))
    data = bytearray(heap.read_bytes())
    damaged = [keys[0], keys[3], keys[4]]  # ragged, 1-D int8, 2-D uint8
    for key in damaged:
        data[offsets[key] + 3] ^= 0x01
    heap.write_bytes(bytes(data))
    with Store(cache_dir) as store:
        report = inventory.verify(store)
        found = store.read_payloads(keys)
    # Only the damage: a payload is held to the dimensions its settings asked for, never to
    # the model's native size (a v4 multi-vector row is 128-d, a packed vector 1/8 bytes).
    assert sorted(key for key, _ in report.bad) == sorted(k.hex() for k in damaged)
    assert {reason for _, reason in report.bad} == {"entry checksum mismatch"}
    assert [p is None for p in found.payloads] == [k in damaged for k in keys]


def test_a_heap_cut_short_loses_only_the_payloads_past_its_end(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        keys, arrays = put_all(store)
    offsets = heap_offsets(cache_dir, keys)
    last = max(offsets, key=offsets.__getitem__)
    heap = next((cache_dir / "segments").glob("*.heap"))
    heap.write_bytes(heap.read_bytes()[: offsets[last] + 1])  # a crash mid-append, say
    with Store(cache_dir) as store:
        found = store.read_payloads(keys)
    # Read a heap at a time, one span past the end must not take the others with it.
    assert [p is None for p in found.payloads] == [k == last for k in keys]
    assert all(same(f, a) for f, a, k in zip(found.payloads, arrays, keys, strict=True)
               if k != last)  # fmt: skip


def test_a_size_limit_evicts_payloads_by_their_own_bytes(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        keys, arrays = put_all(store)
        limit = sum(a.nbytes for a in arrays[1:])  # all but the first (oldest by key order)
        chosen = [e.key for page in inventory.prune_pages(store, inventory.Filters(), limit)
                  for e in page]  # fmt: skip
        assert sum(arrays[keys.index(k)].nbytes for k in chosen) >= arrays[0].nbytes
        store.put_payloads(FP, [b"\1" * 16], [arrays[5]], [1.0])
    with Store(cache_dir, size_limit=limit) as limited:
        limited.put_payloads(FP, [b"\2" * 16], [arrays[5]], [1.0])
        assert limited.vector_bytes() <= limit
        assert limited.vector_bytes() == sum(s.size for _, s in limited.listing())


def test_prune_and_compact_keep_the_right_bytes_and_free_the_rest(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        keys, arrays = put_all(store)
        more, extra = put_all(store, "more")
        assert store.delete_many(keys[:4] + more[2:]) == 4 + 5
        freed = store.compact(0.1)
        kept = store.read_payloads(keys[4:] + more[:2])
        assert store.read_payloads(keys[:4]).payloads == [None] * 4
        assert store.vector_bytes() == sum(a.nbytes for a in arrays[4:] + extra[:2])
    assert freed == sum(a.nbytes for a in arrays[:4] + extra[2:])
    expected = arrays[4:] + extra[:2]
    assert all_same(kept.payloads, expected)
    (heap,) = (cache_dir / "segments").glob("*.heap")
    assert heap.stat().st_size == sum(
        a.nbytes for a in expected if a.ndim != 1 or a.dtype != np.float32
    )


def test_clear_removes_heaps_too(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        put_all(store)
        assert store.clear() == 7
        assert store.vector_bytes() == 0
    assert list((cache_dir / "segments").iterdir()) == []


@pytest.mark.parametrize(
    "array",
    [np.zeros((2, 3), np.float64), np.zeros((2, 2, 2), np.uint8), np.zeros((0, 128), np.float32),
     np.zeros(4, np.int16)],
    ids=["float64", "3-D", "empty", "int16"],
)  # fmt: skip
def test_an_array_of_no_stored_kind_is_refused_before_anything_is_written(
    cache_dir: Path, array: np.ndarray
) -> None:
    with Store(cache_dir) as store:
        with pytest.raises(InvalidInputError, match="cannot store"):
            store.put_payloads(FP, [b"\0" * 16], [array], [1.0])
        assert len(store) == 0


def test_export_refuses_mixed_kinds_naming_them_and_vectors_only_leaves_payloads_out(
    cache_dir: Path, tmp_path: Path
) -> None:
    with Store(cache_dir) as store:
        keys, arrays = put_all(store)
    refused = one_line_error(invoke("export", "--out", str(tmp_path / "x"), cache_dir=cache_dir))
    assert "--kind float|multi-vector|binary|ubinary|multi-vector-binary|" in refused
    assert "128-wide multi-vector: 2" in refused
    ok(invoke("export", "--out", str(tmp_path / "v"), "--vectors-only", cache_dir=cache_dir))
    assert np.load(tmp_path / "v.npy").tobytes() == arrays[-1].tobytes()
    lines = (tmp_path / "v.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == [keys[-1].hex()]


def test_a_cache_of_vectors_keeps_format_2_until_a_payload_is_stored(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        store.put_many(FP, [(b"\0" * 16, np.ones(8, np.float32), 1.0)])
        assert json.loads((cache_dir / MARKER_NAME).read_text())["format_version"] == 2
        put_all(store)
    assert json.loads((cache_dir / MARKER_NAME).read_text())["format_version"] == 3


def test_a_cache_of_a_newer_format_is_refused_naming_the_upgrade(cache_dir: Path) -> None:
    Store(cache_dir).close()
    (cache_dir / MARKER_NAME).write_text('{"format_version": 4, "key_version": 1}')
    with pytest.raises(CacheFormatError, match=r"newer embedcache.*upgrade embedcache"):
        Store(cache_dir)


# An older embedcache, run from its own source in a subprocess.


@pytest.fixture(scope="module")
def old_code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as it was before payloads (``git archive``), to run in a subprocess."""
    root = Path(__file__).resolve().parents[1]
    where = tmp_path_factory.mktemp("old")
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", OLD, "embedcache"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        pytest.skip(f"no git history to take {OLD} from")
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True)
    return where


OLD_WRITER = """
import os, sys, numpy as np
import embedcache
assert embedcache.__file__.startswith(os.environ["PYTHONPATH"]), embedcache.__file__
from embedcache.cache_keys import fingerprint, text_keys
from embedcache.models import RequestOptions
from embedcache.storage.store import Store
fp = fingerprint(RequestOptions("jina-embeddings-v4", task="retrieval.passage"))
keys = text_keys(fp, [f"old{i}" for i in range(50)])
vectors = np.arange(50 * 64, dtype=np.float32).reshape(50, 64)
with Store(sys.argv[1]) as store:
    store.put_many(fp, [(k, v, 2.0) for k, v in zip(keys, vectors)])
    if len(sys.argv) > 2:
        store.delete_many(keys[:10])
"""


def run_old(old_code: Path, cache_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", OLD_WRITER, str(cache_dir), *extra],
        capture_output=True, text=True, check=False, timeout=120, cwd=old_code,
        env={"PYTHONPATH": str(old_code), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_a_cache_of_the_older_version_stays_its_until_a_payload_is_stored_then_refuses_it(
    old_code: Path, cache_dir: Path
) -> None:
    assert run_old(old_code, cache_dir).returncode == 0
    old_keys = text_keys(FP, [f"old{i}" for i in range(50)])
    vectors = np.arange(50 * 64, dtype=np.float32).reshape(50, 64)
    with Store(cache_dir) as store:  # adds its triggers, marks nothing
        assert store.read_many(old_keys, 64).vectors.tobytes() == vectors.tobytes()
    deleting = run_old(old_code, cache_dir, "delete")  # the older version still at home
    assert deleting.returncode == 0, deleting.stderr
    with Store(cache_dir) as store:
        assert len(store) == 40
        assert store.vector_bytes() == 40 * 64 * 4
        keys, arrays = put_all(store)
        assert store.vector_bytes() == 40 * 64 * 4 + sum(a.nbytes for a in arrays)
        assert store.delete_many(keys[:2] + old_keys[10:15]) == 7
        # The totals kept by the upgraded triggers count a payload's own bytes.
        assert store.vector_bytes() == sum(s.size for _, s in store.listing())
    assert json.loads((cache_dir / MARKER_NAME).read_text())["format_version"] == 3
    refused = run_old(old_code, cache_dir)
    assert refused.returncode != 0
    assert "format_version': 3" in refused.stderr
    assert "choose another cache directory" in refused.stderr


def write_ragged(directory: Path, i: int) -> None:
    """One process's share of a race: ragged entries of its own, 20 puts."""
    with Store(directory) as store:
        for n in range(20):
            keys = text_keys(FP, [f"p{i}-{n}-{j}" for j in range(5)])
            arrays = [np.full((1 + (n + j) % 9, 128), i * 1000 + n * 10 + j, np.float32)
                      for j in range(5)]  # fmt: skip
            store.put_payloads(FP, keys, arrays, [1.0] * 5)


def expected_ragged(i: int) -> Iterator[tuple[bytes, np.ndarray]]:
    for n in range(20):
        keys = text_keys(FP, [f"p{i}-{n}-{j}" for j in range(5)])
        for j, key in enumerate(keys):
            yield key, np.full((1 + (n + j) % 9, 128), i * 1000 + n * 10 + j, np.float32)


def test_two_processes_writing_ragged_entries_at_once_lose_and_mix_none(tmp_path: Path) -> None:
    failures, (directory,) = race(write_ragged, tmp_path, trials=1, processes=2)
    assert not failures, report(failures)
    wanted = [*expected_ragged(0), *expected_ragged(1)]
    with Store(directory) as store:
        found = store.read_payloads([key for key, _ in wanted])
        assert len(store) == 200
        assert inventory.verify(store).bad == []
    assert all_same(found.payloads, [array for _, array in wanted])
