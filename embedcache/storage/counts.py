"""What ``index.db`` keeps up to date inside each writer's own transaction, so nothing has
to count the entries: the vector byte total, the ``groups`` and ``removed`` tables.

* ``state.vector_bytes``: the entries' total :func:`~embedcache.storage.formats.entry_bytes`
  (a payload's own bytes, :mod:`~embedcache.storage.payloads`), so a size-limited put reads
  one row instead of counting every entry.
* ``groups``: entries and millitokens per (fingerprint id, dimension), so ``stats``,
  ``len(store)`` and the size check of ``prune`` read a handful of rows at any size.
* ``removed``: the high half of each key deleted, so readers of the snapshot taken before
  know to ask SQL about it (:mod:`embedcache.storage.snapshot`); a deletion also sets
  ``state.snapshot`` (the snapshot generation of versions that knew no ``removed`` table)
  to NULL, so a process of such a version sharing the directory stops using it.

Deletions are counted by triggers. Insertions are counted by this version's writers once
per put (:func:`add_entries`: one ``UPDATE`` per group, and a lookup of stored keys only
when a put replaces some), not by a trigger per row: those triggers ran four subqueries and
three updates for each row, two thirds of a put's time. The insert triggers stay, for
older versions writing to the same directory, which count through them, but do nothing
while the transaction holds the ``state`` row ``counted_by_writer`` (written and deleted in
:func:`add_entries`'s own transaction, so no other connection ever sees it).

An entry replaced (``INSERT OR REPLACE`` on its key) is taken off its totals first: SQLite
fires no delete trigger for the row a REPLACE removes. (No ``OR IGNORE`` inside a trigger:
the outer statement's ``OR REPLACE`` would override it.) Each set of triggers is added to an
older cache once, with its totals counted then, in one transaction (:func:`keep_counts`).
The directory layout as a whole is described in :mod:`embedcache.storage.store`.
"""

from __future__ import annotations

import sqlite3
from itertools import groupby

import numpy as np
from numpy.typing import NDArray

from .databases import immediate
from .payloads import SQL_ENTRY_BYTES, entry_bytes, payload_bytes
from .rows import CHECKSUM, COLUMNS, CREATED_US, DIM, FP, LO, MILLITOKENS, ROW, SEG, K

__all__ = ["add_entries", "groups", "keep_counts", "put_rows", "vector_bytes"]

_CHUNK = 500  # keys per IN (...) query: SQLite's bound-parameter limit is 999 on old builds
# The state row that tells the insert triggers this transaction counts its own insertions.
_BULK = "counted_by_writer"
# The SQL interpolated below is only the constant expression of an entry's bytes.
_BYTES_IN = f"""
CREATE TRIGGER IF NOT EXISTS entries_bytes_in BEFORE INSERT ON entries
    WHEN (SELECT value FROM state WHERE name = 'counted_by_writer') IS NULL BEGIN
    UPDATE state SET value = value + {SQL_ENTRY_BYTES.format(r="NEW")}
        - COALESCE((SELECT {SQL_ENTRY_BYTES.format(r="e")} FROM entries AS e
                    WHERE e.k = NEW.k), 0)
    WHERE name = 'vector_bytes';
END;
"""  # noqa: S608
_GROUPS_IN = """
CREATE TRIGGER IF NOT EXISTS entries_groups_in BEFORE INSERT ON entries
    WHEN (SELECT value FROM state WHERE name = 'counted_by_writer') IS NULL BEGIN
    UPDATE groups SET entries = entries - 1,
        millitokens = millitokens - (SELECT millitokens FROM entries WHERE k = NEW.k)
    WHERE (fp, dim) = (SELECT fp, dim FROM entries WHERE k = NEW.k);
    INSERT INTO groups (fp, dim, entries, millitokens) SELECT NEW.fp, NEW.dim, 0, 0
    WHERE NOT EXISTS (SELECT 1 FROM groups WHERE fp = NEW.fp AND dim = NEW.dim);
    UPDATE groups SET entries = entries + 1, millitokens = millitokens + NEW.millitokens
    WHERE fp = NEW.fp AND dim = NEW.dim;
END;
"""

_BYTES_OUT = f"""
CREATE TRIGGER IF NOT EXISTS entries_bytes_out AFTER DELETE ON entries BEGIN
    UPDATE state SET value = value - {SQL_ENTRY_BYTES.format(r="OLD")}
    WHERE name = 'vector_bytes';
END;
"""  # noqa: S608
_BYTES_TOTAL = f"""
INSERT OR IGNORE INTO state (name, value)
    SELECT 'vector_bytes', COALESCE(SUM({SQL_ENTRY_BYTES.format(r="entries")}), 0)
    FROM entries WHERE NOT EXISTS (SELECT 1 FROM state WHERE name = 'vector_bytes');
"""  # noqa: S608

_GROUPS = """
CREATE TABLE IF NOT EXISTS groups (
    fp INTEGER NOT NULL, dim INTEGER NOT NULL, entries INTEGER NOT NULL,
    millitokens INTEGER NOT NULL, PRIMARY KEY (fp, dim)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS removed (id INTEGER PRIMARY KEY, k INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS entries_groups_out AFTER DELETE ON entries BEGIN
    UPDATE groups SET entries = entries - 1, millitokens = millitokens - OLD.millitokens
    WHERE fp = OLD.fp AND dim = OLD.dim;
    INSERT INTO removed (k) VALUES (OLD.k);
    UPDATE state SET value = NULL WHERE name = 'snapshot' AND value IS NOT NULL;
END;
DELETE FROM groups;
INSERT INTO groups (fp, dim, entries, millitokens)
    SELECT fp, dim, COUNT(*), COALESCE(SUM(millitokens), 0) FROM entries GROUP BY fp, dim;
DELETE FROM removed;
INSERT OR REPLACE INTO state (name, value)
    SELECT 'index_snapshot', value FROM state WHERE name = 'snapshot';
INSERT OR REPLACE INTO state (name, value)
    SELECT 'index_rows', value FROM state WHERE name = 'snapshot_rows';
INSERT OR REPLACE INTO state (name, value)
    SELECT 'index_since', value FROM state WHERE name = 'since_snapshot';
"""

# A cache whose insert triggers count every row (versions before writers counted in bulk):
# the same triggers again, guarded (the two sets above create them so on a new cache).
_BULK_COUNTING = """
DROP TRIGGER IF EXISTS entries_bytes_in;
DROP TRIGGER IF EXISTS entries_groups_in;
"""

# A cache whose byte triggers count 4 bytes a dimension (versions before payloads): the
# triggers above again, which count a payload's own bytes (no payload is stored yet there,
# so the total stands).
_PAYLOAD_BYTES = """
DROP TRIGGER IF EXISTS entries_bytes_in;
DROP TRIGGER IF EXISTS entries_bytes_out;
"""

# Each set, by the state row that says it is in place, in the order they are added.
_SETS = (
    ("vector_bytes", (_BYTES_IN, _BYTES_OUT, _BYTES_TOTAL)),
    ("groups_kept", (_GROUPS, _GROUPS_IN)),
    ("bulk_counted", (_BULK_COUNTING, _BYTES_IN, _GROUPS_IN)),
    ("payload_bytes", (_PAYLOAD_BYTES, _BYTES_IN, _BYTES_OUT)),
)


def _statements(script: str) -> list[str]:
    """The statements of ``script``: each ends with ``;`` at the end of a line, a trigger's
    with ``END;`` (the ``;`` inside its body end lines too, but never a statement)."""
    statements, current = [], ""
    for line in script.strip().splitlines():
        current += line + "\n"
        inside = current.lstrip().startswith("CREATE TRIGGER") and line.strip() != "END;"
        if line.rstrip().endswith(";") and not inside:
            statements.append(current)
            current = ""
    return statements


def keep_counts(db: sqlite3.Connection) -> None:
    """Add the triggers and tables this cache lacks, counting their totals once (a scan of
    the index: seconds at 10M entries, on the first open by this version only)."""
    missing = [
        (name, script)
        for name, script in _SETS
        if db.execute("SELECT 1 FROM state WHERE name = ?", (name,)).fetchone() is None
    ]
    if not missing:
        return
    with immediate(db):
        for name, script in missing:
            if db.execute("SELECT 1 FROM state WHERE name = ?", (name,)).fetchone():
                continue  # another process added it while we waited for the lock
            for statement in (line for part in script for line in _statements(part)):
                db.execute(statement)
            db.execute("INSERT OR IGNORE INTO state (name, value) VALUES (?, 1)", (name,))


def vector_bytes(db: sqlite3.Connection) -> int:
    """The :func:`~embedcache.storage.formats.entry_bytes` of every entry, summed."""
    kept = db.execute("SELECT value FROM state WHERE name = 'vector_bytes'").fetchone()
    if kept is not None and kept[0] is not None:
        return int(kept[0])
    # A read-only cache written before the total was kept: count.
    query = f"SELECT COALESCE(SUM({SQL_ENTRY_BYTES.format(r='entries')}), 0) FROM entries"  # noqa: S608
    return int(db.execute(query).fetchone()[0])


def groups(db: sqlite3.Connection) -> list[tuple[int, int, int, int]]:
    """``(fingerprint id, dimension, entries, millitokens)`` of each kind of entry present."""
    if db.execute("SELECT 1 FROM state WHERE name = 'groups_kept'").fetchone() is None:
        # A read-only cache written before the groups were kept: count them.
        query = "SELECT fp, dim, COUNT(*), SUM(millitokens) FROM entries GROUP BY fp, dim"
    else:
        query = "SELECT fp, dim, entries, millitokens FROM groups WHERE entries > 0"
    return [
        (int(fp), int(dim), int(n), int(milli or 0))
        for fp, dim, n, milli in db.execute(query).fetchall()
    ]


_INSERT = f"INSERT OR {{}} INTO entries ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"  # noqa: S608


def put_rows(
    split: NDArray[np.int64],
    seg: int,
    start: int | NDArray[np.int64],
    dim: int,
    millitokens: NDArray[np.int64],
    checksums: NDArray[np.int64],
) -> NDArray[np.int64]:
    """The index rows (every column but ``created_us`` and ``fp``) of keys ``split`` stored
    as rows ``start...`` of ``seg`` (or, for payloads in a heap, with ``start`` the ``row``
    column of each): in key order (SQLite's inserts then walk its B-trees' pages in order),
    and of a key given twice only the later row, as a REPLACE would keep."""
    order = np.argsort(split[:, 0], kind="stable")
    high = split[order, 0]
    order = order[np.append(high[1:] != high[:-1], True)]  # stable: the last of each key
    rows = np.empty((len(order), len(COLUMNS.split(","))), dtype=np.int64)
    rows[:, [K, LO]] = split[order]
    rows[:, ROW] = start + order if isinstance(start, int) else start[order]
    rows[:, MILLITOKENS] = millitokens[order]
    rows[:, CHECKSUM] = checksums[order]
    rows[:, [SEG, DIM]] = (seg, dim)
    return rows


def add_entries(db: sqlite3.Connection, rows: NDArray[np.int64], created_us: int, fp: int) -> None:
    """(In a write transaction.) Store index rows stored at ``created_us`` under settings
    ``fp``, replacing those of the same keys, and count them in the totals: one ``UPDATE``
    per group touched, not statements per row.

    :param rows: as :func:`put_rows` makes them: distinct keys in order, of one dimension,
        in rows of one segment not yet recorded in the index.
    """
    if not len(rows):
        return
    rows[:, [CREATED_US, FP]] = (created_us, fp)
    dim = int(rows[0, DIM])
    added_bytes = payload_bytes(rows[:, DIM], rows[:, ROW])
    listed = rows.tolist()  # one call for every Python int, fewer objects than tuples
    db.execute("INSERT OR REPLACE INTO state (name, value) VALUES (?, 1)", (_BULK,))
    # OR IGNORE: a put of new keys (nearly every put) needs no lookup of what was there.
    added = db.executemany(_INSERT.format("IGNORE"), listed).rowcount
    freed = 0
    if added < len(rows):
        # Some keys were stored already: take their rows off their own totals, then replace.
        old = _stored_before(db, rows)
        for (old_fp, old_dim), group in groupby(sorted(old), key=lambda row: row[:2]):
            taken = list(group)
            milli = [row[2] for row in taken]
            db.execute(
                "UPDATE groups SET entries = entries - ?, millitokens = millitokens - ? "
                "WHERE fp = ? AND dim = ?",
                (len(milli), sum(milli), old_fp, old_dim),
            )
            freed += sum(entry_bytes(old_dim, row[4]) for row in taken)
        at = np.searchsorted(rows[:, K], [row[3] for row in old])
        db.executemany(_INSERT.format("REPLACE"), [listed[i] for i in at.tolist()])
    db.execute(
        "INSERT INTO groups (fp, dim, entries, millitokens) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (fp, dim) DO UPDATE SET entries = entries + excluded.entries, "
        "millitokens = millitokens + excluded.millitokens",
        (fp, dim, len(rows), int(rows[:, MILLITOKENS].sum())),
    )
    db.execute(
        "UPDATE state SET value = value + ? WHERE name = 'vector_bytes'",
        (added_bytes - freed,),
    )
    db.execute("DELETE FROM state WHERE name = ?", (_BULK,))


def _stored_before(db: sqlite3.Connection, rows: NDArray[np.int64]) -> list[tuple[int, ...]]:
    """``(fp, dim, millitokens, k, row)`` of the rows stored under the keys of ``rows`` that are
    not ``rows`` themselves: those are all in one segment, past the rows it had before."""
    seg, first, last = int(rows[0, SEG]), int(rows[:, ROW].min()), int(rows[:, ROW].max())
    keys = rows[:, K].tolist()
    found: list[tuple[int, ...]] = []
    for start in range(0, len(keys), _CHUNK):
        part = keys[start : start + _CHUNK]
        found += db.execute(
            "SELECT fp, dim, millitokens, k, row FROM entries WHERE k IN "  # noqa: S608
            f"({','.join('?' * len(part))}) AND NOT (seg = ? AND row BETWEEN ? AND ?)",
            (*part, seg, first, last),
        ).fetchall()
    return found
