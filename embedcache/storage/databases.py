"""Opening the SQLite databases of a cache directory, which any number of processes may be
creating at the same moment, and the one wrapper that words their failures
(:func:`cache_errors`).

Two steps of a first open need more than SQLite's busy timeout:

* ``PRAGMA journal_mode=WAL`` on a database still in rollback mode rewrites its header: it
  starts a read transaction, then upgrades it to a write. SQLite never waits to upgrade (the
  writer it would wait for may be waiting for this reader), so while another connection
  holds the write lock, as another process switching the same new database does, it fails
  at once with "database is locked". It is retried here for as long as the busy timeout
  would have waited (diskcache retries its own pragmas the same way).
* Creating the tables: done in one ``BEGIN IMMEDIATE`` transaction (which does wait on the
  busy timeout) that also records the schema's version as ``PRAGMA user_version``, so no
  process sees half a schema, and whoever gets the lock second finds the version there and
  changes nothing. An open that finds the version already there takes no lock at all:
  opening an existing cache never waits for another process's write. (A change to a schema
  would bump its version and run, once, in that same transaction.)
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import diskcache

from ..errors import CacheError

__all__ = ["BUSY_SECONDS", "cache_errors", "connect_index", "immediate", "open_wal"]

#: How long a statement waits for another process's lock before failing.
BUSY_SECONDS = 60.0
_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (extended codes keep them in the low byte)


@contextlib.contextmanager
def cache_errors(directory: Path, action: str) -> Iterator[None]:
    """Failures of the cache at ``directory`` (its databases, its files) raised as
    :class:`CacheError`, worded ``cannot <action> cache at <directory>: <reason>``."""
    try:
        yield
    except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
        # diskcache.Timeout: another process held the database lock for too long.
        reason = str(exc) or type(exc).__name__
        raise CacheError(f"cannot {action} cache at {directory}: {reason}") from exc


def open_wal(
    path: Path, schema: str, *, version: int = 1, busy_seconds: float = BUSY_SECONDS
) -> sqlite3.Connection:
    """A connection to the database at ``path`` (created when missing), in WAL mode with
    ``schema`` in place, in autocommit mode and usable from any thread (the caller
    serializes its use).

    :param schema: ``CREATE ... IF NOT EXISTS`` statements separated by ``;`` (none inside
        a statement).
    :param version: the schema's version, recorded as the database's ``user_version``.
    :raises sqlite3.Error: the database cannot be opened, or stayed locked ``busy_seconds``.
    """
    db = sqlite3.connect(path, timeout=busy_seconds, isolation_level=None, check_same_thread=False)
    try:
        _set_wal(db, busy_seconds)
        db.execute("PRAGMA synchronous=NORMAL")
        if _version(db) < version:
            _create(db, schema, version)
    except BaseException:
        db.close()
        raise
    return db


def _version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


@contextlib.contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction (``BEGIN IMMEDIATE``: it waits for the write lock up front, so
    whatever it reads stays true until it commits) on an autocommit connection, rolled back
    when the block or the commit fails."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _create(db: sqlite3.Connection, schema: str, version: int) -> None:
    """Create the schema and record its version, unless another process just did."""
    with immediate(db):
        if _version(db) < version:
            for statement in schema.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {int(version)}")


def _set_wal(db: sqlite3.Connection, busy_seconds: float) -> None:
    """Switch to WAL (persistent: a no-op once the database is in it), waiting on busy."""
    deadline = time.monotonic() + busy_seconds
    delay = 0.001
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says another connection holds a lock."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    return str(exc).startswith(("database is locked", "database table is locked"))


# SQLite's page cache per connection (KiB; a store opens two on index.db): random keys fill
# a cache to its bound (at 64 MiB a connection a 2M-entry fill held 127 MiB). The interior
# pages a lookup walks (under 2 MiB at 10M entries) fit; a leaf read past the bound comes
# from the OS's file cache (about 0.6 us more per key looked up in SQL at 1M entries).
_PAGE_CACHE_KIB = 16384


def connect_index(path: Path, read_only: bool, schema: str | None = None) -> sqlite3.Connection:
    """A connection to ``index.db``; with ``schema``, the one that creates it (and the WAL)
    when new, safely against other processes doing the same (:func:`open_wal`)."""
    if read_only:
        # On a read-only directory SQLite cannot create the WAL's shared-memory file;
        # "immutable" reads the database as it stands, without locks.
        uri = f"file:{urllib.parse.quote(str(path))}?mode=ro&immutable=1"
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    elif schema is not None:
        db = open_wal(path, schema)
    else:
        db = sqlite3.connect(
            path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False
        )
    db.execute(f"PRAGMA cache_size=-{_PAGE_CACHE_KIB}")
    return db
