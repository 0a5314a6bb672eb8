"""``embedcache export`` of entries that are not one float vector, filled through the
emulator: multi-vector rows stacked with each entry's ``row``/``rows`` in its metadata, packed
bits in their own dtype, exactly what encode returned; Parquet the same; entries of several
kinds refused in one line naming them, leaving no file behind; ``--kind`` picks one."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from embedcache import JinaEmbeddingFunction
from embedcache.cache_keys import fingerprint, text_keys
from embedcache.maintenance import exporting
from embedcache.maintenance.exporting import export
from embedcache.maintenance.inventory import Entry, Filters
from embedcache.models import RequestOptions
from embedcache.storage.store import Store

from .cli_helpers import as_json, invoke, ok, one_line_error

FP = fingerprint(RequestOptions("jina-embeddings-v4", task="retrieval.passage"))
V3, V4, COLBERT = "jina-embeddings-v3", "jina-embeddings-v4", "jina-colbert-v2"
TEXTS = ["a cat sat on the mat", "dogs bark at night", "the quick brown fox jumps", "hello"]

# Each way of asking for multi-vector rows: (model, options, the rows' dtype, --kind).
MULTI: dict[str, tuple[str, dict[str, Any], type, str]] = {
    "v4": (V4, {"return_multivector": True}, np.float32, "multi-vector"),
    "colbert": (COLBERT, {}, np.float32, "multi-vector"),
    "colbert-binary": (COLBERT, {"embedding_type": "binary"}, np.int8, "multi-vector-binary"),
}


def exported(cache_dir: Path, out: Path, *args: str) -> tuple[NDArray[Any], list[dict[str, Any]]]:
    """Export the cache with ``args`` to ``out`` through the CLI: the .npy and the lines."""
    files = as_json(invoke("export", "--out", str(out), "--json", *args, cache_dir=cache_dir))
    assert files["files"] == [str(out.with_suffix(s)) for s in (".npy", ".jsonl")]
    lines = out.with_suffix(".jsonl").read_text().splitlines()
    return np.load(out.with_suffix(".npy")), [json.loads(line) for line in lines]


def as_set(arrays: list[NDArray[Any]]) -> set[tuple[str, tuple[int, ...], bytes]]:
    """Each array's dtype, shape and bytes: equal sets are the same arrays, bit for bit."""
    return {(a.dtype.str, a.shape, a.tobytes()) for a in arrays}


@pytest.mark.parametrize("ask", list(MULTI))
def test_multivector_export_stacks_every_row_and_each_line_says_where_its_rows_are(
    ask: str, make_ef: Callable[..., JinaEmbeddingFunction], cache_dir: Path, tmp_path: Path
) -> None:
    model, options, dtype, kind = MULTI[ask]
    encoded = make_ef(model, **options).encode_documents(TEXTS)
    matrix, lines = exported(cache_dir, tmp_path / "mv")
    assert matrix.dtype == dtype
    assert matrix.shape == (sum(len(a) for a in encoded), encoded[0].shape[1])
    # Stacked in line order, every row once: each line starts where the last one ended.
    assert [line["row"] for line in lines] == np.cumsum([0] + [ln["rows"] for ln in lines])[
        :-1
    ].tolist()
    slices = [matrix[line["row"] : line["row"] + line["rows"]] for line in lines]
    assert as_set(slices) == as_set(encoded)
    assert {line["kind"] for line in lines} == {"ragged" if dtype == np.float32 else "bytes"}
    again, _ = exported(cache_dir, tmp_path / "picked", "--kind", kind)
    assert again.tobytes() == matrix.tobytes()


@pytest.mark.parametrize(("kind", "dtype"), [("binary", np.int8), ("ubinary", np.uint8)])
def test_packed_bits_export_one_row_each_in_their_own_dtype(
    kind: str,
    dtype: type,
    make_ef: Callable[..., JinaEmbeddingFunction],
    cache_dir: Path,
    tmp_path: Path,
) -> None:
    encoded = make_ef(V3, embedding_type=kind, dimensions=256).encode_documents(TEXTS)
    matrix, lines = exported(cache_dir, tmp_path / "bits")
    assert matrix.dtype == dtype
    assert matrix.shape == (len(TEXTS), 256 // 8)
    assert as_set(list(matrix)) == as_set(encoded)
    assert [line["dimensions"] for line in lines] == [256] * len(TEXTS)
    assert all("row" not in line for line in lines)  # line i is row i, as for vectors


def test_multivector_row_offsets_continue_across_pages(
    make_ef: Callable[..., JinaEmbeddingFunction], cache_dir: Path, tmp_path: Path
) -> None:
    encoded = make_ef(V4, return_multivector=True).encode_documents(TEXTS)
    prefix = tmp_path / "paged"
    with Store(cache_dir) as store:
        export(store, Filters(), prefix, kind="multi-vector", page=1)
    matrix = np.load(prefix.with_suffix(".npy"))
    lines = [json.loads(line) for line in prefix.with_suffix(".jsonl").read_text().splitlines()]
    slices = [matrix[line["row"] : line["row"] + line["rows"]] for line in lines]
    assert as_set(slices) == as_set(encoded)
    assert len(matrix) == sum(len(a) for a in encoded)


@pytest.mark.parametrize("ask", ["v4", "colbert-binary", "binary"])
def test_parquet_holds_every_metadata_field_and_the_same_values_as_the_npy(
    ask: str, make_ef: Callable[..., JinaEmbeddingFunction], cache_dir: Path, tmp_path: Path
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    if ask == "binary":
        make_ef(V3, embedding_type="binary").encode_documents(TEXTS)
    else:
        model, options, _, _ = MULTI[ask]
        make_ef(model, **options).encode_documents(TEXTS)
    out = tmp_path / "p"
    ok(invoke("export", "--out", str(out), "--parquet", cache_dir=cache_dir))
    matrix = np.load(out.with_suffix(".npy"))
    lines = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    table = pq.read_table(out.with_suffix(".parquet")).to_pylist()
    multi = ask != "binary"
    data = "embeddings" if multi else "embedding"
    assert [{k: v for k, v in row.items() if k != data} for row in table] == lines
    for row, line in zip(table, lines, strict=True):
        got = np.array(row[data], dtype=matrix.dtype)
        start = line["row"] if multi else lines.index(line)
        expected = matrix[start : start + line["rows"]] if multi else matrix[start]
        assert got.shape == expected.shape
        assert got.tobytes() == expected.tobytes()


def test_entries_of_several_kinds_are_refused_in_one_line_naming_them_and_leave_no_file(
    make_ef: Callable[..., JinaEmbeddingFunction], cache_dir: Path, tmp_path: Path
) -> None:
    floats = make_ef(V3, dimensions=64).encode_documents(TEXTS)
    make_ef(V4, return_multivector=True).encode_documents(TEXTS[:3])
    out = tmp_path / "out"
    out.mkdir()
    error = one_line_error(invoke("export", "--out", str(out / "x"), cache_dir=cache_dir))
    assert error.endswith(
        "entries differ in kind (64-d vectors: 4, 128-wide multi-vector: 3); "
        "add --kind float|multi-vector"
    )
    assert list(out.iterdir()) == []
    vectors, _ = exported(cache_dir, out / "v", "--kind", "float")
    assert as_set(list(vectors)) == as_set(floats)
    alias, _ = exported(cache_dir, out / "alias", "--vectors-only")
    assert alias.tobytes() == vectors.tobytes()
    conflict = invoke("export", "--out", str(out / "c"), "--vectors-only", "--kind", "binary",
                      cache_dir=cache_dir)  # fmt: skip
    assert "--vectors-only is --kind float" in one_line_error(conflict, code=2)


def test_a_kind_in_several_widths_is_refused_naming_kind_and_dimensions(
    make_ef: Callable[..., JinaEmbeddingFunction], cache_dir: Path, tmp_path: Path
) -> None:
    make_ef(V3, dimensions=64).encode_documents(TEXTS[:1])
    make_ef(COLBERT).encode_documents(TEXTS[:2])
    make_ef(COLBERT, dimensions=96).encode_documents(TEXTS[:1])
    error = one_line_error(invoke("export", "--out", str(tmp_path / "x"), cache_dir=cache_dir))
    assert error.endswith(
        "entries differ in kind and dimension (64-d vectors: 1, 96-wide multi-vector: 1, "
        "128-wide multi-vector: 2); add --kind float|multi-vector and --dimensions"
    )
    matrix, lines = exported(
        cache_dir, tmp_path / "narrow", "--kind", "multi-vector", "--dimensions", "96"
    )
    assert matrix.shape[1] == 96
    assert len(lines) == 1
    assert list(tmp_path.glob("x.*")) == []


def test_parquet_takes_every_field_entries_list_without_naming_them(
    make_ef: Callable[..., JinaEmbeddingFunction],
    cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    make_ef(V3, dimensions=64).encode_documents(TEXTS[:2])
    listed = Entry.as_dict

    def with_more(entry: Entry) -> dict[str, object]:  # as a field added to entries would
        return {**listed(entry), "input": "text", "output": "float"}

    monkeypatch.setattr(Entry, "as_dict", with_more)
    ok(invoke("export", "--out", str(tmp_path / "p"), "--parquet", cache_dir=cache_dir))
    table = pq.read_table(tmp_path / "p.parquet").to_pylist()
    assert [(row["input"], row["output"]) for row in table] == [("text", "float")] * 2


def test_a_page_of_large_multivector_entries_holds_fewer_of_them(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((64, 128)).astype(np.float32) for _ in range(100)]  # 32 KB
    with Store(cache_dir) as store:
        store.put_payloads(FP, text_keys(FP, [str(i) for i in range(100)]), arrays, [1.0] * 100)
        export(store, Filters(), tmp_path / "warm-up", page=4)  # first-use imports, not pages
        monkeypatch.setattr(exporting, "PAGE_BYTES", 256 << 10)
        tracemalloc.start()
        try:
            export(store, Filters(), tmp_path / "out")  # the default page: 2,048 entries
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    # Every entry as one page holds all 3.2 MB twice (read, then stacked): 6.8 MB measured;
    # 8 at a time, 256 KB twice and fixed costs (the index's page, the writers): 0.9 MB.
    assert peak < sum(a.nbytes for a in arrays) / 2, peak
    matrix = np.load(tmp_path / "out.npy")
    assert as_set([matrix[i * 64 : (i + 1) * 64] for i in range(100)]) == as_set(arrays)
