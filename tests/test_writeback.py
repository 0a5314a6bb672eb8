"""The copy of what the shared tier served down to local disk (storage/writeback.py), with a
real store in a temporary directory; the Redis side is covered in test_redis.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from embedcache.cache_keys import fingerprint, text_keys
from embedcache.models import RequestOptions
from embedcache.storage.formats import encode_entry
from embedcache.storage.store import Store
from embedcache.storage.writeback import PUT_ROWS, WriteBack

FP = fingerprint(RequestOptions("jina-embeddings-v3", task="retrieval.passage"))
DIM = 4


def _generation(cache_dir: Path) -> int:
    db = sqlite3.connect(cache_dir / "index.db")
    try:
        row = db.execute("SELECT value FROM state WHERE name = 'generation'").fetchone()
    finally:
        db.close()
    return 0 if row is None or row[0] is None else int(row[0])


def test_a_copy_of_many_transactions_into_an_empty_cache_takes_one_snapshot_at_its_end(
    cache_dir: Path,
) -> None:
    # Each snapshot rewrites every row: one per transaction made a copy into an empty cache
    # write each row several times over.
    batches = 3
    texts = [f"text {i}" for i in range(batches * PUT_ROWS)]
    keys = text_keys(FP, texts)
    vectors = np.random.default_rng(0).standard_normal((len(keys), DIM)).astype(np.float32)
    values: list[bytes | None] = [encode_entry(v, 1.0, FP.id) for v in vectors]
    with Store(cache_dir) as store:
        copier = WriteBack(store)
        with copier.reading():  # all queued before the writer starts: three transactions
            for start in range(0, len(keys), PUT_ROWS):
                part = slice(start, start + PUT_ROWS)
                copier.offer(FP, keys[part], values[part], np.ones(PUT_ROWS, bool), DIM,
                             read_entries=len(keys))  # fmt: skip
        copier.flush()
        assert _generation(cache_dir) == 1
        found = store.read_many(keys, dim=DIM)
    assert found.present.all()
    assert found.vectors.tobytes() == vectors.tobytes()
