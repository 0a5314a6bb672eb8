"""What a key means lives in ``index.db`` (issue 24): a put records its fingerprint in the
transaction that stores its entries, a read-only open names every entry's settings, and a
cache written when the records lived in ``meta/`` only is read and migrated.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import diskcache
import numpy as np
import pytest

from embedcache.cache_keys import Fingerprint, fingerprint, text_keys
from embedcache.errors import CacheError
from embedcache.maintenance import inventory
from embedcache.models import RequestOptions
from embedcache.storage.store import Store

from .cli_helpers import as_json, invoke

DIM = 8
FP = fingerprint(RequestOptions("jina-embeddings-v3", task="retrieval.passage", dimensions=DIM))
OTHER = fingerprint(RequestOptions("jina-embeddings-v3", task="retrieval.query", dimensions=DIM))


def put(store: Store, fp: Fingerprint = FP, texts: tuple[str, ...] = ("a", "b")) -> list[bytes]:
    keys = text_keys(fp, list(texts))
    store.put_matrix(fp, keys, np.ones((len(keys), DIM), np.float32), [1.0] * len(keys))
    return keys


def index_records(cache_dir: Path) -> dict[int, str]:
    """The ``fingerprints`` table as another process reads it: id (unsigned) → JSON."""
    db = sqlite3.connect(cache_dir / "index.db")
    try:
        rows = db.execute("SELECT id, canonical FROM fingerprints").fetchall()
    finally:
        db.close()
    return {fp_id & 0xFFFF_FFFF_FFFF_FFFF: canonical for fp_id, canonical in rows}


def meta_set(cache_dir: Path, key: str, value: str) -> None:
    """Write to ``meta/`` as a version before the table did."""
    with diskcache.Cache(str(cache_dir / "meta"), eviction_policy="none") as meta:
        meta.set(key, value)


def to_older_layout(cache_dir: Path) -> None:
    """``index.db`` as versions before the ``fingerprints`` table left it."""
    db = sqlite3.connect(cache_dir / "index.db")
    try:
        db.execute("DROP TABLE fingerprints")
        db.execute("DELETE FROM state WHERE name = 'fingerprints_kept'")
        db.commit()
    finally:
        db.close()


def read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every directory read-only, as on a read-only mount (still readable)."""
    access = os.access

    def no_writes(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        return not mode & os.W_OK and access(path, mode, *args, **kwargs)

    monkeypatch.setattr("os.access", no_writes)


def test_a_read_only_open_names_the_model_and_task_of_every_entry(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(cache_dir) as store:
        put(store)
    read_only(monkeypatch)
    with Store(cache_dir) as store:
        assert store.read_only
        groups = inventory.summarize(store).groups  # `stats`
        assert [g[:4] for g in groups] == [
            ("jina-embeddings-v3", "retrieval.passage", DIM, FP.upstream)
        ]
        listed = {(e.model, e.task) for e in inventory.entries(store)}
        assert listed == {("jina-embeddings-v3", "retrieval.passage")}
        assert store.fingerprints() == {FP.id: FP}
    # `ls` on a read-only cache: the model, not "?".
    entries = as_json(invoke("ls", "--json", cache_dir=cache_dir))
    assert [(e["model"], e["task"]) for e in entries] == [
        ("jina-embeddings-v3", "retrieval.passage")
    ] * 2


def test_a_put_records_its_fingerprint_in_index_db_inside_the_entries_transaction(
    cache_dir: Path,
) -> None:
    with Store(cache_dir) as store:
        statements: list[str] = []
        store._index._db.set_trace_callback(statements.append)
        put(store)
        store._index._db.set_trace_callback(None)
        put(store, texts=("c",))  # known by now: recorded once
    assert index_records(cache_dir) == {FP.id: FP.canonical}
    begin = statements.index("BEGIN IMMEDIATE")
    commit = statements.index("COMMIT")
    recorded = [i for i, s in enumerate(statements) if "INTO fingerprints" in s]
    stored = [i for i, s in enumerate(statements) if "INTO entries" in s]
    assert len(recorded) == 1
    assert stored
    # Between the one BEGIN and COMMIT, with the entries: no commit holds one without the other.
    assert begin < recorded[0] < commit
    assert begin < min(stored)
    assert max(stored) < commit
    assert statements.count("COMMIT") == 1


def test_a_put_that_fails_leaves_neither_its_entries_nor_its_fingerprint(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(cache_dir) as store:
        put(store)

        def broken(limit: int | None) -> int:
            raise sqlite3.OperationalError("disk I/O error")  # after the rows, before COMMIT

        monkeypatch.setattr(store._index, "evict", broken)
        with pytest.raises(CacheError, match="disk I/O error"):
            put(store, OTHER)
        monkeypatch.undo()
        assert store.contains_many(text_keys(OTHER, ["a", "b"])) == [False, False]
    assert index_records(cache_dir) == {FP.id: FP.canonical}


def test_an_older_cache_has_its_meta_fingerprints_copied_into_index_db_on_first_open(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(cache_dir) as store:
        put(store)
    to_older_layout(cache_dir)  # the record only in meta/, as older versions kept it
    with Store(cache_dir) as store:
        assert store.fingerprints() == {FP.id: FP}
    assert index_records(cache_dir) == {FP.id: FP.canonical}
    read_only(monkeypatch)
    with Store(cache_dir) as store:
        assert store.fingerprints() == {FP.id: FP}


def test_records_an_older_version_writes_to_meta_later_are_read_beside_the_table(
    cache_dir: Path,
) -> None:
    with Store(cache_dir) as store:
        put(store)
    # An older process sharing the directory stores entries under OTHER: meta/ only.
    meta_set(cache_dir, f"fingerprint:{OTHER.id:016x}", OTHER.canonical)
    with Store(cache_dir) as store:
        assert store.fingerprints() == {FP.id: FP, OTHER.id: OTHER}
    assert index_records(cache_dir) == {FP.id: FP.canonical}  # copied once, not each open


def test_this_version_still_writes_each_fingerprint_to_meta_for_older_versions(
    cache_dir: Path,
) -> None:
    with Store(cache_dir) as store:
        put(store)
    with diskcache.Cache(str(cache_dir / "meta"), eviction_policy="none") as meta:
        assert meta.get(f"fingerprint:{FP.id:016x}") == FP.canonical


def test_a_record_whose_json_does_not_hash_to_its_id_is_ignored_in_either_place(
    cache_dir: Path,
) -> None:
    with Store(cache_dir) as store:
        put(store)
    db = sqlite3.connect(cache_dir / "index.db")
    signed = OTHER.id - (1 << 64) if OTHER.id >= 1 << 63 else OTHER.id
    db.execute("INSERT INTO fingerprints (id, canonical) VALUES (?, ?)", (signed, FP.canonical))
    db.commit()
    db.close()
    meta_set(cache_dir, "fingerprint:0000000000000001", FP.canonical)
    meta_set(cache_dir, "fingerprint:0000000000000002", "not json, not ascii: \u00e9")
    with Store(cache_dir) as store:
        assert store.fingerprints() == {FP.id: FP}
