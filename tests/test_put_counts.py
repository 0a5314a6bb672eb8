"""A put counts its entries in the totals once (issue 23: a copy from Redis to disk bound by
SQLite's per-row triggers), exactly, and an older cache or an older version's writer sharing
the directory keeps exact totals too. Never wall-clock: the work of a put is read as the rows
SQLite changed (``total_changes`` counts those changed by triggers as well).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from embedcache.cache_keys import Fingerprint
from embedcache.storage.formats import signed, split_keys
from embedcache.storage.store import Store

from .test_shared_maintenance import DIM, FP, OTHER, fill, recount

# The insert triggers every version before this one created: each row of a put ran them.
_PER_ROW_TRIGGERS = """
CREATE TRIGGER entries_bytes_in BEFORE INSERT ON entries BEGIN
    UPDATE state SET value = value + 4 * NEW.dim
        - COALESCE((SELECT 4 * dim FROM entries WHERE k = NEW.k), 0)
    WHERE name = 'vector_bytes';
END;
CREATE TRIGGER entries_groups_in BEFORE INSERT ON entries BEGIN
    UPDATE groups SET entries = entries - 1,
        millitokens = millitokens - (SELECT millitokens FROM entries WHERE k = NEW.k)
    WHERE (fp, dim) = (SELECT fp, dim FROM entries WHERE k = NEW.k);
    INSERT INTO groups (fp, dim, entries, millitokens) SELECT NEW.fp, NEW.dim, 0, 0
    WHERE NOT EXISTS (SELECT 1 FROM groups WHERE fp = NEW.fp AND dim = NEW.dim);
    UPDATE groups SET entries = entries + 1, millitokens = millitokens + NEW.millitokens
    WHERE fp = NEW.fp AND dim = NEW.dim;
END;
"""


def _changes_of_put(
    store: Store, fp: Fingerprint, keys: list[bytes], matrix: np.ndarray, tokens: float = 2.5
) -> int:
    """Rows SQLite changed (index rows, totals, state) for one ``put_matrix``."""
    db = store._index.db
    before = db.total_changes
    store.put_matrix(fp, keys, matrix.astype(np.float32), [tokens] * len(keys))
    return db.total_changes - before


def fill_keys(n: int, tag: int = 9) -> list[bytes]:
    """``n`` distinct keys of their own (``tag`` apart from other calls')."""
    return [bytes([tag, i % 256, i // 256]) + bytes(13) for i in range(n)]


def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _assert_totals_exact(store: Store, cache_dir: Path) -> None:
    counted = recount(cache_dir)  # asserts the groups kept equal the entries counted
    assert len(store) == sum(n for _, _, n, _ in counted)
    assert store.vector_bytes() == sum(4 * dim * n for _, dim, n, _ in counted)


def test_a_put_of_new_keys_updates_the_totals_once_not_for_every_row(
    store: Store, cache_dir: Path
) -> None:
    keys = fill(store, 100)  # the group exists: a put adds to it
    new = fill_keys(2000)
    changed = _changes_of_put(store, FP, new, _vectors(2000, DIM, 1))
    # 2,000 index rows, then a handful of totals and state rows; per-row triggers changed
    # three rows per entry (vector bytes, the group's count twice).
    assert 2000 <= changed <= 2000 + 20
    assert len(store) == 2100
    _assert_totals_exact(store, cache_dir)
    assert store.get_many(keys[:1])[0] is not None


def test_a_put_replacing_keys_of_other_settings_and_size_moves_them_between_groups_once(
    store: Store, cache_dir: Path
) -> None:
    old = fill(store, 300)  # FP, 16-d, 1.5 tokens each
    # 100 stored keys again, under other settings and dimension, among 50 new ones, and one
    # key given twice in the same put: the later row wins, counted once.
    keys = old[:100] + fill_keys(50, tag=7) + [old[0]]
    matrix = _vectors(len(keys), 8, 2)
    changed = _changes_of_put(store, OTHER, keys, matrix, tokens=4.0)
    assert changed <= 150 + 100 + 20  # inserted, then the replaced rows again; no row each
    assert sorted((fp, dim, n, milli) for fp, dim, n, milli in store.groups()) == sorted(
        [(FP.id, DIM, 200, 300.0), (OTHER.id, 8, 150, 600.0)]
    )
    _assert_totals_exact(store, cache_dir)
    record = store.get_many([old[0]])[0]
    assert record is not None
    assert record.fingerprint_id == OTHER.id
    assert np.array_equal(record.vector, matrix[-1])  # the later of the two rows


def test_a_cache_with_per_row_insert_triggers_is_migrated_on_first_open_by_a_writer(
    cache_dir: Path,
) -> None:
    with Store(cache_dir) as store:
        fill(store, 200)
    db = sqlite3.connect(cache_dir / "index.db", isolation_level=None)
    with db:  # as every earlier version left the index
        db.execute("DROP TRIGGER entries_bytes_in")
        db.execute("DROP TRIGGER entries_groups_in")
        db.executescript(_PER_ROW_TRIGGERS)
        db.execute("DELETE FROM state WHERE name = 'bulk_counted'")
    db.close()
    with Store(cache_dir) as store:
        changed = _changes_of_put(store, FP, fill_keys(500), _vectors(500, DIM, 3))
        assert changed <= 500 + 20  # the triggers no longer count each row...
        assert len(store) == 700  # ...and nothing is counted twice
        _assert_totals_exact(store, cache_dir)


def test_an_older_versions_writer_on_the_directory_is_still_counted_by_the_triggers(
    store: Store, cache_dir: Path
) -> None:
    stored = fill(store, 200)
    # An older version inserts as it always did: INSERT OR REPLACE, one row at a time,
    # counting through the insert triggers (new keys, and keys this version stored).
    theirs = fill_keys(30, tag=5) + stored[:20]
    split = split_keys(theirs)
    db = sqlite3.connect(cache_dir / "index.db", isolation_level=None)
    with db:
        db.executemany(
            "INSERT OR REPLACE INTO entries (k, lo, seg, row, dim, millitokens, checksum, "
            "created_us, fp) VALUES (?, ?, 1, 0, 8, 3000, 0, 1, ?)",
            [(hi, lo, signed(OTHER.id)) for hi, lo in split.tolist()],
        )
    db.close()
    assert sorted(store.groups()) == sorted([(FP.id, DIM, 180, 270.0), (OTHER.id, 8, 50, 150.0)])
    _assert_totals_exact(store, cache_dir)
    # ...while this version's own put beside it still counts once per put.
    assert _changes_of_put(store, FP, fill_keys(400, tag=6), _vectors(400, DIM, 4)) <= 420
    _assert_totals_exact(store, cache_dir)
