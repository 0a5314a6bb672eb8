"""One size model: a store's size limit and ``prune --max-size`` count the same bytes and
remove the same entries."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from embedcache.cache_keys import fingerprint, text_keys
from embedcache.cli import main
from embedcache.maintenance.inventory import entries
from embedcache.models import RequestOptions
from embedcache.storage.store import Store, entry_bytes

FP = fingerprint(RequestOptions("jina-embeddings-v3", task="retrieval.passage"))
# (texts, dimensions) per write, oldest first; mixed sizes, so the model's per-dimension
# count matters, and the last write is the one that goes over the limit.
BATCHES = [(5, 8), (4, 16), (3, 8)]
LAST = (2, 16)
# 5*32 + 4*64 + 3*32 + 2*64 = 640 bytes of vectors. Down to 400: the five oldest 8-d entries
# and two of the four 16-d ones go, the cut falling inside a write (ties go by key).
LIMIT = 400


def _write(store: Store, batch: int, count: int, dim: int) -> None:
    keys = text_keys(FP, [f"{batch}-{i}" for i in range(count)])
    vectors = np.random.default_rng(batch).standard_normal((count, dim)).astype(np.float32)
    store.put_many(FP, [(k, v, 1.0) for k, v in zip(keys, vectors, strict=True)])


def _keys(directory: Path) -> set[bytes]:
    with Store(directory) as store:
        return {entry.key for entry in entries(store)}


def test_entry_bytes_is_what_the_segment_files_hold(tmp_path: Path) -> None:
    with Store(tmp_path / "c") as store:
        for batch, (count, dim) in enumerate([*BATCHES, LAST]):
            _write(store, batch, count, dim)
        assert store.vector_bytes() == 640
        assert sum(entry.size for entry in entries(store)) == 640
    on_disk = sum(p.stat().st_size for p in (tmp_path / "c" / "segments").iterdir())
    assert on_disk == 640
    assert entry_bytes(1024) == 4096


def test_prune_max_size_removes_what_the_size_limit_evicts(tmp_path: Path) -> None:
    base = tmp_path / "base"
    with Store(base) as store:
        for batch, (count, dim) in enumerate(BATCHES):
            _write(store, batch, count, dim)
    before = _keys(base)
    pruned, limited = tmp_path / "pruned", tmp_path / "limited"
    shutil.copytree(base, pruned)
    shutil.copytree(base, limited)

    with Store(pruned) as store:  # no limit: the last write keeps everything
        _write(store, len(BATCHES), *LAST)
    prune = ["--cache-dir", str(pruned), "prune", "--max-size", f"{LIMIT}B"]  # bytes: a unit
    dry = CliRunner().invoke(main, [*prune, "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    planned = json.loads(dry.stdout)
    result = CliRunner().invoke(main, [*prune, "--yes", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)

    with Store(limited, size_limit=LIMIT) as store:  # the same write, over the limit
        _write(store, len(BATCHES), *LAST)
        assert store.vector_bytes() == 352

    kept = _keys(limited)
    assert _keys(pruned) == kept
    assert len(before) - len(kept & before) == 7 == report["removed"] == planned["selected"]
    assert report["bytes"] == planned["bytes"] == 640 - 352
    with Store(pruned) as store:
        assert store.vector_bytes() == 352
