"""Who used the proxy and for what: requests, texts, hits, misses, tokens spent and saved,
errors and over-budget refusals per caller (``k_`` + 12 hex of the key's SHA-256, never the
key) and per model and task, for ``/admin/stats`` and the dashboard.

Input: the :class:`~embedcache.proxy.requestlog.RequestRecord` of every finished request,
in batches handed to :meth:`Usage.add` off the event loop. Each worker adds them up in
memory (bounded: past :data:`MAX_CALLERS` callers, the smallest are folded into one
``others`` row) and, at most once every :data:`FLUSH_SECONDS`, adds what it holds to
``usage.db`` (SQLite, WAL) in the cache directory, in one short transaction. Every worker
of every proxy on the directory adds to the same rows, so a report is the whole lifetime of
the directory (since ``usage.db`` was made), survives restarts, and is read from the table
(:meth:`Usage.report`, in a thread). The table is bounded the same way as memory.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import CacheError
from .requestlog import RequestRecord, Served

__all__ = ["FIELDS", "FLUSH_SECONDS", "MAX_CALLERS", "OTHERS", "USAGE_FILE", "Usage"]

log = logging.getLogger("embedcache")

#: The file in the cache directory.
USAGE_FILE = "usage.db"
#: What is counted for each caller and each model/task.
FIELDS = (
    "requests", "texts", "hits", "misses", "tokens_spent", "tokens_saved", "errors",
    "over_budget",
)  # fmt: skip
#: Most callers (and most model/task pairs) held, in memory and in the table; beyond it
#: the smallest are added to the :data:`OTHERS` row.
MAX_CALLERS = 10_000
#: The row that holds the callers (or models) folded away, by name.
OTHERS = "others"
#: How often a worker adds what it counted to the table, at most.
FLUSH_SECONDS = 1.0
_BUSY_MS = 5_000
# SQLite's primary keys treat NULLs as distinct: "no key" and "no model" are stored as ''.
_NONE = ""
_TOKENS, _SAVED = FIELDS.index("tokens_spent"), FIELDS.index("tokens_saved")
_TABLES = {"callers": ("key",), "models": ("model", "task")}


class _Sql:
    """One table's statements, built once from the constants above (no value of a
    request's is ever written into SQL text: values are bound)."""

    def __init__(self, table: str, names: tuple[str, ...]) -> None:
        keys, counted = ", ".join(names), ", ".join(FIELDS)
        columns = ", ".join((*names, *FIELDS))
        marks = ", ".join("?" * (len(names) + len(FIELDS)))
        updates = ", ".join(f"{name} = {name} + excluded.{name}" for name in FIELDS)
        matched = " AND ".join(f"{name} = ?" for name in names)
        by_size = "tokens_spent + tokens_saved, requests"
        self.create = (
            f"CREATE TABLE IF NOT EXISTS {table} ("
            + ", ".join(f"{name} TEXT NOT NULL" for name in names)
            + ", "
            + ", ".join(f"{name} REAL NOT NULL DEFAULT 0" for name in FIELDS)
            + f", PRIMARY KEY ({keys}))"
        )
        self.add = (
            f"INSERT INTO {table} ({columns}) VALUES ({marks}) "  # noqa: S608
            f"ON CONFLICT ({keys}) DO UPDATE SET {updates}"
        )
        self.largest = (
            f"SELECT {keys}, {counted} FROM {table} "  # noqa: S608
            "ORDER BY tokens_spent + tokens_saved DESC, requests DESC"
        )
        self.count = f"SELECT COUNT(*) FROM {table}"  # noqa: S608
        self.smallest = (
            f"SELECT {keys}, {counted} FROM {table} "  # noqa: S608
            f"WHERE NOT ({matched}) ORDER BY {by_size} LIMIT ?"
        )
        self.delete = f"DELETE FROM {table} WHERE {matched}"  # noqa: S608


_SQL = {table: _Sql(table, names) for table, names in _TABLES.items()}

Tally = dict[tuple[str, ...], list[float]]


class Usage:
    """One worker's share of the per-caller and per-model figures, and the reader of the
    whole directory's (see the module docstring). Thread-safe.

    :param directory: the cache directory (``usage.db`` is made in it).
    :param budgets_on: whether the proxy enforces budgets: only then is a 429 to a request
        with texts counted as over budget (without budgets a 429 is the upstream's own).
    :param max_callers: see :data:`MAX_CALLERS`.
    :param flush_seconds: see :data:`FLUSH_SECONDS`.
    :param clock: monotonic seconds (tests).
    :raises CacheError: ``usage.db`` cannot be opened.
    """

    def __init__(
        self,
        directory: Path,
        *,
        budgets_on: bool = False,
        max_callers: int = MAX_CALLERS,
        flush_seconds: float = FLUSH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._budgets_on = budgets_on
        self._max = max_callers
        self._every = flush_seconds
        self._clock = clock
        self._lock = threading.Lock()  # the tallies
        self._db_lock = threading.Lock()  # the connection
        # Counts by (caller, model, task): one dict update per request, split into the
        # callers' and the models' rows only when written.
        self._held: Tally = {}
        self._flushed = clock()
        self.path = Path(directory) / USAGE_FILE
        try:
            self._db = sqlite3.connect(self.path, timeout=_BUSY_MS / 1000, check_same_thread=False)
            self._db.isolation_level = None  # transactions are begun explicitly
            self._db.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            for sql in _SQL.values():
                self._db.execute(sql.create)
            self._db.execute("CREATE TABLE IF NOT EXISTS since (started REAL NOT NULL)")
            self._db.execute(
                "INSERT INTO since SELECT ? WHERE NOT EXISTS (SELECT 1 FROM since)", (time.time(),)
            )
        except sqlite3.Error as exc:
            raise CacheError(f"cannot open the usage table {self.path}: {exc}") from exc

    def add(self, records: Sequence[RequestRecord | Served]) -> None:
        """Count finished requests (a batch, off the event loop); adds to the table when
        the last addition is :data:`FLUSH_SECONDS` old."""
        budgets_on = self._budgets_on
        with self._lock:
            held = self._held
            # Inline: this runs for every request the proxy answers (~1 µs each).
            for entry in records:
                # A hit comes with the record it shares with the others like it.
                record = entry.record if type(entry) is Served else entry
                assert isinstance(record, RequestRecord)
                name = (record.key or _NONE, record.model or _NONE, record.task or _NONE)
                counts = held.get(name)
                if counts is None:
                    counts = held[name] = [0.0] * len(FIELDS)
                counts[0] += 1
                counts[1] += record.texts
                counts[2] += record.hits
                counts[3] += record.misses
                counts[4] += record.tokens_spent
                counts[5] += record.tokens_saved
                status = record.status
                if status >= 400:
                    counts[6] += 1
                    if status == 429 and budgets_on and record.texts > 0:
                        counts[7] += 1
            if len(held) > self._max:
                _fold(held, self._max)
        if self._clock() - self._flushed >= self._every:
            self.flush()

    @property
    def pending(self) -> bool:
        """Whether this worker holds figures not yet in the table."""
        return bool(self._held)

    def flush_if_due(self) -> None:
        """Add what is held to the table if :data:`FLUSH_SECONDS` have passed (for a quiet
        worker, whose :meth:`add` is not called)."""
        if self._clock() - self._flushed >= self._every:
            self.flush()

    def flush(self) -> None:
        """Add what this worker counted since the last flush to the table, in one
        transaction (kept for the next flush if the table is busy or broken)."""
        with self._lock:
            held, self._held = self._held, {}
            self._flushed = self._clock()
        if not held:
            return
        try:
            with self._db_lock:
                self._write(_split(held))
        except sqlite3.Error as exc:
            log.warning("embedcache proxy: cannot add to %s (kept for later): %s", self.path, exc)
            with self._lock:  # put back: counted again at the next flush
                for name, counts in held.items():
                    _add(self._held, name, counts)

    def report(self, price: float, top: int = 50) -> dict[str, Any]:
        """The whole directory's figures, this worker's held ones added first: the ``top``
        callers and models by tokens (spent + saved), and the rest's totals.

        :param price: dollars per million tokens (``usd_spent``, ``usd_saved``).
        """
        self.flush()
        with self._db_lock:
            try:
                since = self._db.execute("SELECT started FROM since").fetchone()
                tables = {
                    table: self._db.execute(sql.largest).fetchall() for table, sql in _SQL.items()
                }
            except sqlite3.Error as exc:
                raise CacheError(f"cannot read the usage table {self.path}: {exc}") from exc
        out: dict[str, Any] = {
            "usage": {"period": "lifetime", "since": since[0] if since else None, "top": top}
        }
        for table, rows in tables.items():
            width = len(_TABLES[table])
            shown = [_row(table, row[:width], row[width:], price) for row in rows[:top]]
            rest = [row[width:] for row in rows[top:]]
            out[table] = shown
            out["usage"][f"{table}_count"] = len(rows)
            out["usage"][f"{table}_rest"] = (
                _figures([sum(column) for column in zip(*rest, strict=True)], price)
                if rest
                else None
            )
        return out

    def close(self) -> None:
        """Add what is held to the table and close it."""
        self.flush()
        with self._db_lock:
            self._db.close()

    def _write(self, held: dict[str, Tally]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for table, tally in held.items():
                sql = _SQL[table]
                db.executemany(sql.add, [(*name, *counts) for name, counts in tally.items()])
                self._bound(sql, len(_TABLES[table]))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _bound(self, sql: _Sql, width: int) -> None:
        """Fold the table's smallest rows into the ``others`` row when it holds more than
        the bound (in the flush's transaction)."""
        db = self._db
        (count,) = db.execute(sql.count).fetchone()
        if count <= self._max:
            return
        # Down to nine tenths of the bound: not a fold at every flush of a busy proxy.
        others = (OTHERS,) * width
        smallest = db.execute(sql.smallest, (*others, count - self._max * 9 // 10)).fetchall()
        folded = [sum(column) for column in zip(*(row[width:] for row in smallest), strict=True)]
        db.executemany(sql.delete, [row[:width] for row in smallest])
        db.execute(sql.add, (*others, *folded))


def _add(tally: Tally, name: tuple[str, ...], counts: Iterable[float]) -> None:
    held = tally.get(name)
    if held is None:
        tally[name] = list(counts)
    else:
        for i, value in enumerate(counts):
            held[i] += value


def _fold(held: Tally, bound: int) -> None:
    """Add the smallest callers of ``held`` into the ``others`` caller, down to nine
    tenths of ``bound``: by model and task while that is enough, else into one row."""
    ranked = sorted(
        (name for name in held if name[0] != OTHERS),
        key=lambda name: (held[name][_TOKENS] + held[name][_SAVED], held[name][0]),
    )
    for name in ranked[: len(held) - bound * 9 // 10]:
        _add(held, (OTHERS, *name[1:]), held.pop(name))
    if len(held) > bound:  # as many models and tasks as callers: no name kept
        everything = list(held.values())
        held.clear()
        for counts in everything:
            _add(held, (OTHERS, OTHERS, OTHERS), counts)


def _split(held: Tally) -> dict[str, Tally]:
    """Counts by (caller, model, task) as the callers' and the models' rows."""
    callers: Tally = {}
    models: Tally = {}
    for (key, model, task), counts in held.items():
        _add(callers, (key,), counts)
        _add(models, (model, task), counts)
    return {"callers": callers, "models": models}


def _row(table: str, name: Sequence[str], counts: Sequence[float], price: float) -> dict[str, Any]:
    named: dict[str, Any] = {
        column: (value or None) for column, value in zip(_TABLES[table], name, strict=True)
    }
    return {**named, **_figures(counts, price)}


def _figures(counts: Sequence[float], price: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in zip(FIELDS, counts, strict=True):
        # Counts are whole; the saved tokens are an estimate (see Stats.tokens_saved).
        out[name] = round(float(value), 3) if name == "tokens_saved" else int(value)
    out["usd_spent"] = round(out["tokens_spent"] * price / 1_000_000, 6)
    out["usd_saved"] = round(out["tokens_saved"] * price / 1_000_000, 6)
    return out
