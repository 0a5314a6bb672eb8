"""What ``index.db`` keeps up to date by triggers, inside each writer's own transaction, so
nothing has to count the entries: the vector byte total, the ``groups`` and ``removed`` tables.

* ``state.vector_bytes``: the entries' total :func:`~embedcache.storage.index.entry_bytes`,
  so a size-limited put reads one row instead of counting every entry.
* ``groups``: entries and millitokens per (fingerprint id, dimension), so ``stats``,
  ``len(store)`` and the size check of ``prune`` read a handful of rows at any size.
* ``removed``: the high half of each key deleted, so readers of the snapshot taken before
  know to ask SQL about it (:mod:`embedcache.storage.snapshot`); a deletion also sets
  ``state.snapshot`` (the snapshot generation of versions that knew no ``removed`` table)
  to NULL, so a process of such a version sharing the directory stops using it.

An entry replaced (``INSERT OR REPLACE`` on its key) is taken off its totals first: SQLite
fires no delete trigger for the row a REPLACE removes. (No ``OR IGNORE`` inside a trigger:
the outer statement's ``OR REPLACE`` would override it.) Each set of triggers is added to an
older cache once, with its totals counted then, in one transaction (:func:`keep_counts`).
The directory layout as a whole is described in :mod:`embedcache.storage.store`.
"""

from __future__ import annotations

import sqlite3

__all__ = ["groups", "keep_counts", "vector_bytes"]

_VECTOR_BYTES = """
CREATE TRIGGER IF NOT EXISTS entries_bytes_in BEFORE INSERT ON entries BEGIN
    UPDATE state SET value = value + 4 * NEW.dim
        - COALESCE((SELECT 4 * dim FROM entries WHERE k = NEW.k), 0)
    WHERE name = 'vector_bytes';
END;
CREATE TRIGGER IF NOT EXISTS entries_bytes_out AFTER DELETE ON entries BEGIN
    UPDATE state SET value = value - 4 * OLD.dim WHERE name = 'vector_bytes';
END;
INSERT OR IGNORE INTO state (name, value) SELECT 'vector_bytes', COALESCE(SUM(4 * dim), 0)
    FROM entries WHERE NOT EXISTS (SELECT 1 FROM state WHERE name = 'vector_bytes');
"""

_GROUPS = """
CREATE TABLE IF NOT EXISTS groups (
    fp INTEGER NOT NULL, dim INTEGER NOT NULL, entries INTEGER NOT NULL,
    millitokens INTEGER NOT NULL, PRIMARY KEY (fp, dim)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS removed (id INTEGER PRIMARY KEY, k INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS entries_groups_in BEFORE INSERT ON entries BEGIN
    UPDATE groups SET entries = entries - 1,
        millitokens = millitokens - (SELECT millitokens FROM entries WHERE k = NEW.k)
    WHERE (fp, dim) = (SELECT fp, dim FROM entries WHERE k = NEW.k);
    INSERT INTO groups (fp, dim, entries, millitokens) SELECT NEW.fp, NEW.dim, 0, 0
    WHERE NOT EXISTS (SELECT 1 FROM groups WHERE fp = NEW.fp AND dim = NEW.dim);
    UPDATE groups SET entries = entries + 1, millitokens = millitokens + NEW.millitokens
    WHERE fp = NEW.fp AND dim = NEW.dim;
END;
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

# Each set, by the state row that says it is in place.
_SETS = (("vector_bytes", _VECTOR_BYTES), ("groups_kept", _GROUPS))


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
    db.execute("BEGIN IMMEDIATE")
    try:
        for name, script in missing:
            if db.execute("SELECT 1 FROM state WHERE name = ?", (name,)).fetchone():
                continue  # another process added it while we waited for the lock
            for statement in _statements(script):
                db.execute(statement)
            db.execute("INSERT OR IGNORE INTO state (name, value) VALUES (?, 1)", (name,))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def vector_bytes(db: sqlite3.Connection) -> int:
    """The :func:`~embedcache.storage.index.entry_bytes` of every entry, summed."""
    kept = db.execute("SELECT value FROM state WHERE name = 'vector_bytes'").fetchone()
    if kept is not None and kept[0] is not None:
        return int(kept[0])
    # A read-only cache written before the total was kept: count.
    rows = db.execute("SELECT dim, COUNT(*) FROM entries GROUP BY dim").fetchall()
    return sum(count * 4 * dim for dim, count in rows)


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
