"""What a key means: the ``fingerprints`` table of ``index.db``.

Every entry holds the id of the request settings that produced it (its fingerprint: model,
task, dimensions, upstream...); this table maps each id to the fingerprint's canonical JSON,
so ``ls``, ``stats``, ``export``, ``prune --model`` and ``sync`` can say what an entry is.
A put records its fingerprint (``INSERT OR IGNORE``) in the very transaction that stores
its entries: no entry is ever committed without what it means, whatever stops the writer,
and a read-only open (which cannot open ``meta/``) reads it like any other row.

Versions before this table kept the records in ``meta/`` only
(:meth:`~embedcache.storage.meta.Meta.legacy_fingerprints`): a writer's first open copies
them here once (:func:`keep_fingerprints`), and since such a version may still be writing
to the same directory, readers take the union of both. A record is trusted only if its
JSON hashes to its id (:func:`~embedcache.storage.formats.fingerprint_record`). The
directory layout as a whole is described in :mod:`embedcache.storage.store`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping

from ..cache_keys import Fingerprint
from .databases import immediate
from .formats import fingerprint_record, signed, unsigned

__all__ = ["keep_fingerprints", "read_fingerprints", "record_fingerprint"]

_TABLE = "CREATE TABLE IF NOT EXISTS fingerprints (id INTEGER PRIMARY KEY, canonical TEXT NOT NULL)"
_INSERT = "INSERT OR IGNORE INTO fingerprints (id, canonical) VALUES (?, ?)"
# The state row that says the table is in place and meta/'s records were copied into it.
_KEPT = "fingerprints_kept"


def keep_fingerprints(
    db: sqlite3.Connection, legacy: Callable[[], Mapping[int, Fingerprint]]
) -> None:
    """Create the table on a cache that lacks it and copy ``legacy()``'s records into it,
    once: in one transaction, so another process opening at the same moment either finds
    it all done or does it itself."""
    if db.execute("SELECT 1 FROM state WHERE name = ?", (_KEPT,)).fetchone() is not None:
        return
    with immediate(db):
        if db.execute("SELECT 1 FROM state WHERE name = ?", (_KEPT,)).fetchone() is None:
            db.execute(_TABLE)
            db.executemany(_INSERT, [(signed(fp.id), fp.canonical) for fp in legacy().values()])
            db.execute("INSERT OR IGNORE INTO state (name, value) VALUES (?, 1)", (_KEPT,))


def record_fingerprint(db: sqlite3.Connection, fp: Fingerprint) -> None:
    """(In the write transaction storing entries under ``fp``.) Record what ``fp`` means,
    unless it is there already."""
    db.execute(_INSERT, (signed(fp.id), fp.canonical))


def read_fingerprints(db: sqlite3.Connection) -> dict[int, Fingerprint]:
    """The recorded fingerprints by (unsigned) id; none on a cache written before the table
    (opened read-only, so it could not be added)."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'fingerprints'").fetchone() is None:
        return {}
    out: dict[int, Fingerprint] = {}
    for fp_id, canonical in db.execute("SELECT id, canonical FROM fingerprints"):
        fp = fingerprint_record(unsigned(fp_id), canonical) if isinstance(canonical, str) else None
        if fp is not None:
            out[fp.id] = fp
    return out
