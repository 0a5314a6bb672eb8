"""Where token budgets' spending is kept (:mod:`~embedcache.proxy.budgets` decides what to
spend): one small interface, :class:`Ledger`, and two places behind it.

- :class:`SqliteLedger`: ``budgets.db`` in the cache directory (SQLite in WAL mode), one row
  per budget (``name``, ``window_start``, ``spent``), each change one short
  ``BEGIN IMMEDIATE`` transaction: shared by every worker and process on the directory.
- :class:`RedisLedger`: the shared tier's Redis (or Redis Cluster), one key per budget and
  window, ``<prefix>:budgets:<window start>:<name>``, so proxies on different machines and
  cache directories share the budgets. A reservation is one Lua script on that one key
  (the check and the ``INCRBYFLOAT`` atomic, on a cluster too: a script on one key runs on
  its slot's node), a settlement another (``INCRBYFLOAT`` of the correction); each sets an
  ``EXPIRE`` of a minute past the window's end, so old windows vanish. The namespace is
  outside the tier's entries (``<prefix>:<key version>.<format version>:``), so ``stats``,
  ``verify`` and ``sync`` neither count nor copy it.

Both keep fixed windows aligned on the epoch: the caller passes each window's start. A
ledger that cannot be read or written raises :class:`~embedcache.errors.CacheError` (for
Redis, :class:`~embedcache.errors.SharedCacheError` naming the tier by its redacted URL).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..config import (
    DEFAULT_REDIS_TIMEOUT_SECONDS,
    redact_url,
    resolve_redis_url,
    without_userinfo,
)
from ..errors import CacheError, InvalidInputError, SharedCacheError
from ..extras import requires
from .redis_clients import Outage, check_url, connect, is_cluster_url

__all__ = ["LEDGER_FILE", "Ledger", "RedisLedger", "Spending", "SqliteLedger", "open_ledger"]

LEDGER_FILE = "budgets.db"
_BUSY_MS = 10_000
# After a failure, calls refuse at once for this long (no wait on a dead server per request).
_RETRY_SECONDS = 1.0
# A window's key outlives the window by this much (a settle that comes late still lands).
_EXPIRE_MARGIN_SECONDS = 60
_SCAN_BATCH = 1000
_T = TypeVar("_T")

log = logging.getLogger("embedcache")

#: One budget's spending: its name, the start of the window, and the tokens spent in it.
Spending = tuple[str, float, float]


class Ledger(Protocol):
    """Spending per budget and window (starts aligned on the epoch, given by the caller)."""

    #: Where the ledger is, as it may be shown (a file, or the tier's redacted URL).
    location: str

    @property
    def healthy(self) -> bool:
        """Whether a call is expected to answer at once: not while the ledger is failing
        (a call then may be the one that waits out a timeout)."""
        ...

    def reserve(
        self, name: str, start: float, window: float, tokens: float, limit: float
    ) -> tuple[bool, float]:
        """Atomically: add ``tokens`` to ``name``'s spending in the window starting at
        ``start`` unless that would go over ``limit`` (a reservation of 0 or less is always
        made). Returns whether it was made, and what was spent before."""
        ...

    def settle(self, name: str, start: float, window: float, delta: float) -> float:
        """Add ``delta`` (a correction, possibly negative) to the window's spending;
        returns what is spent after it."""
        ...

    def spent(self, name: str, start: float) -> float:
        """Tokens ``name`` spent in the window starting at ``start``."""
        ...

    def spending(self) -> Iterator[Spending]:
        """Every budget's spending in the latest window it spent in (older ones may be
        gone)."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


def open_ledger(directory: Path, redis_url: str | None, prefix: str) -> Ledger:
    """The shared tier's ledger when there is one (``redis_url``, else
    ``EMBEDCACHE_REDIS_URL``), else ``directory``'s ``budgets.db``.

    :raises CacheError: ``budgets.db`` cannot be opened (a read-only cache directory).
    """
    url = resolve_redis_url(redis_url)
    if url:
        return RedisLedger(url, prefix=prefix)
    return SqliteLedger(directory)


class SqliteLedger:
    """The ledger in ``directory``'s ``budgets.db``: one row per budget, its latest window.

    :raises CacheError: it cannot be opened.
    """

    def __init__(self, directory: Path) -> None:
        path = Path(directory) / LEDGER_FILE
        self.location = str(path)
        self._lock = threading.Lock()
        try:
            self._db = _connect(path)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS spent (name TEXT PRIMARY KEY, "
                "window_start REAL NOT NULL, spent REAL NOT NULL)"
            )
            # Reads of its own: in WAL mode a read never waits for a writer, so a read never
            # queues behind a fill thread's admission.
            self._reader = _connect(path)
        except sqlite3.Error as exc:
            raise CacheError(f"cannot open the budgets ledger {path}: {exc}") from exc
        self._read_lock = threading.Lock()

    @property
    def healthy(self) -> bool:
        return True  # a local file: a failure is an error, not a wait

    def reserve(
        self, name: str, start: float, window: float, tokens: float, limit: float
    ) -> tuple[bool, float]:
        with self._transaction() as db:
            spent = self._spent(db, name, start)
            if tokens > 0 and spent + tokens > limit:
                return False, spent
            if tokens:
                # A row of an older window starts again from these tokens.
                db.execute(
                    "INSERT INTO spent (name, window_start, spent) VALUES (?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET spent = CASE WHEN window_start = "
                    "excluded.window_start THEN spent + excluded.spent ELSE excluded.spent "
                    "END, window_start = excluded.window_start",
                    (name, start, tokens),
                )
        return True, spent

    def settle(self, name: str, start: float, window: float, delta: float) -> float:
        with self._transaction() as db:
            # Only while the row is still that window's: a later window is not corrected.
            db.execute(
                "UPDATE spent SET spent = spent + ? WHERE name = ? AND window_start = ?",
                (delta, name, start),
            )
            return self._spent(db, name, start)

    def spent(self, name: str, start: float) -> float:
        try:
            with self._read_lock:
                return self._spent(self._reader, name, start)
        except sqlite3.Error as exc:
            raise CacheError(f"cannot read the budgets ledger: {exc}") from exc

    def spending(self) -> Iterator[Spending]:
        try:
            with self._read_lock:
                rows = self._reader.execute("SELECT name, window_start, spent FROM spent")
                found = [(str(n), float(s), float(x)) for n, s, x in rows.fetchall()]
        except sqlite3.Error as exc:
            raise CacheError(f"cannot read the budgets ledger: {exc}") from exc
        return iter(found)

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self._lock)

    @staticmethod
    def _spent(db: sqlite3.Connection, name: str, start: float) -> float:
        row = db.execute("SELECT window_start, spent FROM spent WHERE name = ?", (name,)).fetchone()
        return float(row[1]) if row is not None and row[0] == start else 0.0


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` under this process's lock: one writer at a time
    across processes, for a few statements."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db, self._lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._lock.release()
            raise CacheError(f"cannot update the budgets ledger: {exc}") from exc
        return self._db

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("COMMIT" if exc is None else "ROLLBACK")
        except sqlite3.Error as error:
            raise CacheError(f"cannot update the budgets ledger: {error}") from error
        finally:
            self._lock.release()


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=_BUSY_MS / 1000, check_same_thread=False)
    db.isolation_level = None  # transactions are begun explicitly
    db.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
    return db


# KEYS[1]: the budget's key for the window; ARGV: tokens, limit, seconds to live. Numbers
# go back as strings: Redis truncates a Lua number to an integer.
_RESERVE = """
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens = tonumber(ARGV[1])
if tokens > 0 and spent + tokens > tonumber(ARGV[2]) then
  return {0, tostring(spent)}
end
if tokens ~= 0 then
  redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return {1, tostring(spent)}
"""
# KEYS[1]: the budget's key for the window; ARGV: the correction, seconds to live.
_SETTLE = """
local spent = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return spent
"""


class RedisLedger:
    """The ledger in a shared tier's Redis (or Redis Cluster): one key per budget and
    window under ``<prefix>:budgets:``.

    :param url: the tier's URL (see :class:`~embedcache.storage.shared.RedisStore`).
    :param prefix: the tier's namespace.
    :param timeout: seconds to wait for Redis on every call.
    :param retry_after: after a failure, seconds during which calls fail at once.
    :raises InvalidInputError: a malformed URL (named without its credentials).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        timeout: float = DEFAULT_REDIS_TIMEOUT_SECONDS,
        retry_after: float = _RETRY_SECONDS,
    ) -> None:
        with requires("redis"):
            import redis
        self.location = redact_url(without_userinfo(url))
        self.retry_after = retry_after
        self._cluster = is_cluster_url(url)
        try:
            check_url(url)
        except ValueError as exc:  # its text may hold the password
            raise InvalidInputError(
                f"bad Redis URL {self.location!r}: {type(exc).__name__}"
            ) from None
        self._url, self._timeout = url, timeout
        self._namespace = f"{prefix}:budgets:"
        self._failures: tuple[type[Exception], ...] = (
            redis.RedisError, redis.exceptions.RedisClusterException, OSError
        )  # fmt: skip
        self._lock = threading.Lock()
        self._connected: Any = None
        self._scripts: tuple[Any, Any] | None = None
        self._outage = Outage(retry_after)

    def __repr__(self) -> str:
        return f"RedisLedger({self.location!r})"

    @property
    def healthy(self) -> bool:
        return not self._outage.ongoing

    def key(self, name: str, start: float) -> str:
        """The Redis key of ``name``'s spending in the window starting at ``start``."""
        return f"{self._namespace}{start!r}:{name}"

    def reserve(
        self, name: str, start: float, window: float, tokens: float, limit: float
    ) -> tuple[bool, float]:
        ttl = _ttl(start, window)
        reserve, _ = self._script_pair()
        made, spent = self._call(
            "reserve", lambda: reserve(keys=[self.key(name, start)], args=[tokens, limit, ttl])
        )
        return bool(int(made)), float(spent)

    def settle(self, name: str, start: float, window: float, delta: float) -> float:
        ttl = _ttl(start, window)
        _, settle = self._script_pair()
        spent = self._call(
            "settle", lambda: settle(keys=[self.key(name, start)], args=[delta, ttl])
        )
        return float(spent)

    def spent(self, name: str, start: float) -> float:
        value = self._call("read", lambda: self._client().get(self.key(name, start)))
        return float(value) if value is not None else 0.0

    def spending(self) -> Iterator[Spending]:
        return iter(self._call("scan", self._scan))

    def close(self) -> None:
        if self._connected is not None:
            self._connected.close()

    def _scan(self) -> list[Spending]:
        """Every key of the namespace and its value: one ``SCAN`` round trip per page of
        names (on a cluster, on every primary), then their values by ``MGET``s."""
        client = self._client()
        pattern = _glob_escape(self._namespace) + "*"
        where: dict[str, Any] = {"target_nodes": client.PRIMARIES} if self._cluster else {}
        names = list(client.scan_iter(match=pattern, count=_SCAN_BATCH, **where))
        found: list[Spending] = []
        for at in range(0, len(names), _SCAN_BATCH):
            page = names[at : at + _SCAN_BATCH]
            values = client.mget_nonatomic(page) if self._cluster else client.mget(page)
            for raw, value in zip(page, values, strict=True):
                start, _, name = raw[len(self._namespace) :].decode(errors="replace").partition(":")
                try:
                    found.append((name, float(start), float(value)))
                except (TypeError, ValueError):
                    continue  # gone since the SCAN, or not a key this ledger writes
        return found

    def _client(self) -> Any:
        """The redis-py client, made on first use (a cluster's connects as it is made)."""
        if self._connected is None:
            with self._lock:
                if self._connected is None:
                    self._connected = connect(self._url, self._timeout)
        return self._connected

    def _script_pair(self) -> tuple[Any, Any]:
        """The reserve and settle scripts (``EVALSHA``, loaded again by redis-py when the
        server has forgotten them); registered when first needed."""
        if self._scripts is None:
            client = self._call("connect", self._client)
            self._scripts = (client.register_script(_RESERVE), client.register_script(_SETTLE))
        return self._scripts

    def _call(self, action: str, work: Callable[[], _T]) -> _T:
        """``work`` against Redis; while it is down, :class:`SharedCacheError` at once."""
        if not self._outage.available:
            raise self._unreachable(action, "down")
        try:
            result = work()
        except self._failures as exc:
            if self._outage.failed():
                log.warning(
                    "budgets ledger on the shared tier %s unavailable (%s while trying to "
                    "%s): requests that need the API are refused until it is back",
                    self.location, type(exc).__name__, action,
                )  # fmt: skip
            raise self._unreachable(action, type(exc).__name__) from None
        if self._outage.succeeded():
            log.warning("budgets ledger on the shared tier %s is back", self.location)
        return result

    def _unreachable(self, action: str, why: str) -> SharedCacheError:
        return SharedCacheError(
            f"the token budgets are kept in the shared tier {self.location}, which cannot "
            f"be reached ({why}, while trying to {action}): requests that need the API are "
            f"refused until it is back; cached texts are still served"
        )


def _ttl(start: float, window: float) -> int:
    """Seconds a window's key lives from now: until a minute past the window's end."""
    return max(1, math.ceil(start + window - time.time())) + _EXPIRE_MARGIN_SECONDS


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a ``SCAN ... MATCH`` pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
