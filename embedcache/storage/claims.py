"""Claims on entries being fetched, seen by every process that shares a cache directory.

Before a process sends a batch, it *claims* the batch's keys here. A key another live
process has claimed is being fetched there: the caller waits for that fetch to end and then
reads the store, instead of paying for the same entry again. So however many processes
share a directory (proxy workers, several prewarms, library users), at most one upstream
request per entry is in flight at a time.

Two files in the cache directory hold the claims:

* ``claims.lock`` (always empty): each claim, one batch's keys, holds an exclusive POSIX
  byte-range lock (``fcntl.lockf``) on one byte of it, chosen at random from 2**31, for as
  long as its batch is in flight. A waiter asks for a shared lock on that byte, which the
  kernel grants once the owner lets go or dies.
* ``claims.db`` (SQLite, WAL): which byte each claimed key belongs to. A row counts only
  while its byte is locked: the kernel drops a dead process's locks, so a crash never leaves
  a claim behind. Its rows are taken over by the next process that claims those keys, and
  swept when a process opens the files.

Why not one byte per key: Linux scans a file's POSIX locks as a list on every lock call.
With four processes holding 8,000 keys each, a 2,000-key batch took 9 s to claim and
release that way (Linux, two cores); with one byte per batch the locks number the batches
in flight, and the table costs about 12 ms for such a batch, 0.1 ms for a few texts. Keys
are kept whole in the table, so a key waits only for a fetch of that very key (but for the
rare case below), never for another key that hashed alike.

POSIX locks belong to a process, not to a thread or a file descriptor, and closing *any*
descriptor of the file drops all of the process's locks on it. Hence:

* one :class:`Claims` per process and directory (:func:`claims_for`), with one descriptor
  of ``claims.lock``, closed only when this process holds and awaits nothing in it;
  nothing else in the process may open that file (a copy of the directory taken by the same
  process mid-fetch would cost duplicate fetches, never a wrong answer);
* threads of one process never share a byte, never choose one the process is waiting on,
  and never wait on one it holds (which would turn its own exclusive lock into a shared
  one); coalescing between threads is the in-process registry's job
  (:mod:`embedcache.embedding.coalescing`), which asks here only for keys no thread of
  its process holds.

A byte is taken with ``LOCK_NB``, so two live claims never share one. A row left by a dead
process whose byte a new claim happens to hold costs an extra wait, never a wrong answer:
a waiter always reads the store again and fetches whatever is still missing.

Deadlock: a caller must never block on others' claims while holding its own (the embedder
releases every claim of a call before it waits). The kernel's deadlock detection sees
processes, not threads, so two processes each waiting on the other's batch while *other*
threads of theirs fetch look like a cycle; the refused wait (``EDEADLK``) then polls.

Failures degrade, with one warning: claims files that cannot be opened or locked leave
coalescing to each process from then on, and a database error, for that batch (duplicate
fetches become possible, wrong answers do not). A read-only cache takes no claims: it
cannot fetch. Without ``fcntl`` (not POSIX) there are none either: :func:`claims_for`
returns ``None``. A process that hangs while holding a claim (stopped, not dead) keeps its
waiters waiting, as a hung thread does in one process.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .databases import open_wal

try:
    import fcntl
except ImportError:  # not POSIX: coalescing stays within each process
    fcntl = None  # type: ignore[assignment]

__all__ = ["CLAIMS_DB", "CLAIMS_LOCK", "Claimed", "Claims", "claims_for"]

log = logging.getLogger("embedcache")

CLAIMS_DB = "claims.db"
CLAIMS_LOCK = "claims.lock"
#: Bytes of ``claims.lock`` a claim chooses from: any ``off_t`` holds them.
BYTES = 1 << 31
#: Tries at a free byte before a claim gives up on other processes (each try fails only
#: when another claim holds the byte chosen at random: a chance of in-flight claims / 2**31).
_TRIES = 8
_CHUNK = 500  # keys per IN (...) query, as in the index
_SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (k BLOB PRIMARY KEY, byte INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS claims_byte ON claims(byte);
"""
_HELD = (errno.EACCES, errno.EAGAIN)  # what a refused LOCK_NB raises, by platform


@dataclass(frozen=True)
class Claimed:
    """What :meth:`Claims.take` got, for keys in the order asked.

    :ivar byte: the claim byte this process now holds for ``owned``; give it to
        :meth:`Claims.release` when the batch is committed or has failed. ``None`` when
        nothing was claimed in the directory (no key was free, or claims are unavailable).
    :ivar owned: positions of the keys this process may fetch.
    :ivar other_bytes: the claim bytes of other processes' fetches holding the other keys,
        for :meth:`Claims.wait`.
    """

    byte: int | None
    owned: list[int]
    other_bytes: list[int] = field(default_factory=list)


def claims_for(directory: Path) -> Claims | None:
    """This process's :class:`Claims` for ``directory``, attached for one user (a store):
    call :meth:`Claims.detach` when done. ``None`` where POSIX locks are missing.

    :raises OSError: ``directory`` cannot be looked at.
    """
    if fcntl is None:
        return None
    info = os.stat(directory)
    key = (info.st_dev, info.st_ino)
    with _REGISTRY_LOCK:
        # By device and inode: two spellings of one directory must share one descriptor.
        claims = _REGISTRY.get(key)
        if claims is None or not _is(claims.directory, key):
            # None yet, or one for a deleted directory whose inode was reused: its files
            # are other files, so a new descriptor cannot drop their locks.
            claims = _REGISTRY[key] = Claims(directory)
        claims.attach()
    return claims


def _is(directory: Path, key: tuple[int, int]) -> bool:
    try:
        info = os.stat(directory)
    except OSError:
        return False
    return (info.st_dev, info.st_ino) == key


class Claims:
    """The claims of one cache directory, as this process takes and awaits them.

    Safe to share between threads. Files are opened on first use and closed whenever no user
    is attached and this process holds and awaits nothing. Get one with :func:`claims_for`:
    a second instance for the same directory in one process could drop the first's locks.

    :param choose_byte: draws a candidate claim byte, uniformly below :data:`BYTES` unless
        told (a test hands a fixed sequence to make two claims pick the same byte).
    """

    def __init__(self, directory: Path, *, choose_byte: Callable[[], int] | None = None) -> None:
        self.directory = directory
        self._choose_byte = choose_byte or _random_byte
        self._lock = threading.Lock()
        self._users = 0
        self._fd: int | None = None
        self._db: sqlite3.Connection | None = None
        self._broken = False  # the files cannot be used: claims are left to each process
        self._warned = False
        self._own_bytes: set[int] = set()  # claim bytes this process holds, one per live claim
        self._awaited_bytes: Counter[int] = Counter()  # others' claim bytes this process waits on

    def __repr__(self) -> str:
        return f"Claims({str(self.directory)!r})"

    def attach(self) -> None:
        """Count one more user (a store) of this directory's claims."""
        with self._lock:
            self._users += 1

    def detach(self) -> None:
        """Count one user fewer; the files close once nothing is held or awaited."""
        with self._lock:
            self._users = max(0, self._users - 1)
            self._close_if_idle()

    # Claiming

    def take(self, keys: Sequence[bytes]) -> Claimed:
        """Claim every key of ``keys`` that no other live process has claimed.

        Keys claimed earlier by this process count as free: threads are coalesced by the
        caller, which asks only for keys no thread of its own holds.
        """
        if not keys:
            return Claimed(None, [])
        with self._lock:
            fd = self._files()
            byte = None if fd is None else self._new_byte(fd)
            if fd is None or byte is None:
                return Claimed(None, list(range(len(keys))))
            try:
                owned, other_bytes = self._record(fd, byte, keys)
            except (sqlite3.Error, OSError) as exc:  # lock trouble too (ENOLCK, say)
                self._unlock(fd, byte)
                self._warn(f"cannot record claims: {exc}")
                return Claimed(None, list(range(len(keys))))
            if not owned:
                self._unlock(fd, byte)
                return Claimed(None, [], other_bytes)
            self._own_bytes.add(byte)
            return Claimed(byte, owned, other_bytes)

    def release(self, byte: int) -> None:
        """End the claim of ``byte`` (idempotent); its waiters wake."""
        with self._lock:
            if byte not in self._own_bytes:
                return
            try:
                assert self._db is not None  # open while this process holds a byte
                with _transaction(self._db):
                    self._db.execute("DELETE FROM claims WHERE byte = ?", (byte,))
            except sqlite3.Error as exc:
                # The rows stay, but count for nothing once the byte is unlocked.
                self._warn(f"cannot remove claims: {exc}")
            finally:
                self._own_bytes.discard(byte)
                assert self._fd is not None
                self._unlock(self._fd, byte)
                self._close_if_idle()

    def wait(self, other_bytes: Iterable[int]) -> None:
        """Block until every fetch of ``other_bytes`` (:attr:`Claimed.other_bytes`) has
        ended: committed, failed, or its process died. Never call it holding a claim of
        your own."""
        for byte in dict.fromkeys(other_bytes):
            with self._lock:
                fd = self._files()
                if fd is None:
                    return  # claims unavailable: the caller reads the store and fetches
                if byte in self._own_bytes:
                    continue  # this process holds it now, so that fetch has ended
                self._awaited_bytes[byte] += 1
            try:
                _lock_shared(fd, byte)
            except OSError as exc:
                log.warning("could not wait for a fetch by another process: %s", exc)
            finally:
                with self._lock:
                    self._unlock(fd, byte)
                    self._awaited_bytes[byte] -= 1
                    if not self._awaited_bytes[byte]:
                        del self._awaited_bytes[byte]
                    self._close_if_idle()

    # Inside, always with self._lock held

    def _record(self, fd: int, byte: int, keys: Sequence[bytes]) -> tuple[list[int], list[int]]:
        """Write rows for the keys free of live claims; return their positions, and the
        bytes of the live claims holding the rest."""
        assert self._db is not None
        alive: dict[int, bool] = {}
        held: dict[bytes, int] = {}
        with _transaction(self._db):
            for start in range(0, len(keys), _CHUNK):
                part = list(keys[start : start + _CHUNK])
                marks = ",".join("?" * len(part))
                for key, other in self._db.execute(
                    f"SELECT k, byte FROM claims WHERE k IN ({marks})",  # noqa: S608
                    part,
                ):
                    if other not in alive:
                        alive[other] = other not in self._own_bytes and _held_by_another(fd, other)
                    if alive[other]:
                        held[key] = other
            owned = [i for i, key in enumerate(keys) if key not in held]
            self._db.executemany(
                "INSERT OR REPLACE INTO claims (k, byte) VALUES (?, ?)",
                [(keys[i], byte) for i in owned],
            )
        return owned, sorted(set(held.values()))

    def _new_byte(self, fd: int) -> int | None:
        """A byte no live claim holds, now held by this process."""
        for _ in range(_TRIES):
            byte = self._choose_byte()
            if byte in self._own_bytes or byte in self._awaited_bytes:
                continue  # locking it again would change this process's own lock on it
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte)
            except OSError as exc:
                if exc.errno in _HELD:
                    continue
                self._broken = True
                self._warn(f"cannot lock {CLAIMS_LOCK}: {exc}")
                return None
            return byte
        log.warning("no free claim byte in %s after %d tries", self.directory, _TRIES)
        return None

    def _files(self) -> int | None:
        """The descriptor of ``claims.lock``, with ``claims.db`` open; ``None`` once broken."""
        if self._broken:
            return None
        if self._fd is not None:
            return self._fd
        # Created private before SQLite opens it: its WAL files copy the database's mode.
        try:
            for name in (CLAIMS_LOCK, CLAIMS_DB):
                os.close(os.open(self.directory / name, os.O_RDWR | os.O_CREAT, 0o600))
            # Other processes may be creating it too: open_wal waits them out.
            db = open_wal(self.directory / CLAIMS_DB, _SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            self._broken = True
            self._warn(f"cannot open the claims files: {exc}")
            return None
        try:
            fd = os.open(self.directory / CLAIMS_LOCK, os.O_RDWR | os.O_CLOEXEC)
        except (OSError, sqlite3.Error) as exc:
            db.close()
            self._broken = True
            self._warn(f"cannot open the claims files: {exc}")
            return None
        self._fd, self._db = fd, db
        self._sweep(fd, db)
        return fd

    def _sweep(self, fd: int, db: sqlite3.Connection) -> None:
        """Delete the rows of claims whose process has died (this process holds none yet)."""
        try:
            claim_bytes = [row[0] for row in db.execute("SELECT DISTINCT byte FROM claims")]
            dead = [(b,) for b in claim_bytes if not _held_by_another(fd, b)]
            if dead:
                with _transaction(db):
                    db.executemany("DELETE FROM claims WHERE byte = ?", dead)
        except (OSError, sqlite3.Error) as exc:  # stale rows only cost a probe each
            log.debug("could not sweep stale claims in %s: %s", self.directory, exc)

    def _close_if_idle(self) -> None:
        if self._users or self._own_bytes or self._awaited_bytes or self._fd is None:
            return
        # Nothing held: closing the descriptor drops no lock that matters.
        fd, db, self._fd, self._db = self._fd, self._db, None, None
        os.close(fd)
        if db is not None:
            db.close()

    @staticmethod
    def _unlock(fd: int, byte: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, byte)

    def _warn(self, reason: str) -> None:
        """Say once that processes may fetch the same texts at once (never wrongly)."""
        if not self._warned:
            log.warning(
                "cache at %s: %s; concurrent processes may fetch the same texts", self.directory,
                reason,
            )  # fmt: skip
        self._warned = True

    def _forget_after_fork(self) -> None:
        """In a forked child: the parent's locks are not the child's, nor its connection."""
        self._lock = threading.Lock()
        if self._db is not None:
            # Closing SQLite's inherited handles would disturb the parent's locks on them.
            _ABANDONED.append(self._db)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # the child holds no locks, so this drops none
        self._fd, self._db = None, None
        self._own_bytes.clear()
        self._awaited_bytes.clear()


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _random_byte() -> int:
    return int.from_bytes(os.urandom(4), "little") % BYTES


def _held_by_another(fd: int, byte: int) -> bool:
    """Whether another process holds ``byte`` exclusively: its claim is alive."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, byte)
    except OSError as exc:
        if exc.errno in _HELD:
            return True
        raise
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, byte)
    return False


def _lock_shared(fd: int, byte: int) -> None:
    """Block until a shared lock on ``byte`` is granted (the caller unlocks it)."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH, 1, byte)
        return
    except OSError as exc:
        if exc.errno != errno.EDEADLK:
            raise
    # A cycle of processes, not of claims: whoever holds this byte is fetching, not
    # waiting, so polling ends when that fetch does.
    log.debug("waiting for claim byte %d: the kernel sees a cycle (EDEADLK); polling", byte)
    delay = 0.001
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, byte)
            return
        except OSError as exc:
            if exc.errno not in _HELD:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


_REGISTRY: weakref.WeakValueDictionary[tuple[int, int], Claims] = weakref.WeakValueDictionary()
_REGISTRY_LOCK = threading.Lock()
_ABANDONED: list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()
    for claims in list(_REGISTRY.values()):
        claims._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
