"""What is in a cache: listing, summarising, verifying, selecting for pruning, exporting.

Everything here reads through :class:`~embedcache.storage.store.Store`; nothing knows the
byte format.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from ..extras import requires
from ..models import spec_for
from ..storage.store import Record, Store, entry_bytes

__all__ = [
    "Entry",
    "Filters",
    "Summary",
    "VerifyReport",
    "dimension_problem",
    "entries",
    "export",
    "select_for_prune",
    "summarize",
    "verify",
]


@dataclass(frozen=True)
class Entry:
    """One cached vector's metadata."""

    key: bytes
    model: str
    task: str | None
    dimensions: int
    late_chunking: bool
    tokens: float
    created: float

    @property
    def size(self) -> int:
        """Bytes the entry counts for, in ``prune --max-size`` as against a size limit: its
        vector's (:func:`~embedcache.storage.index.entry_bytes`)."""
        return entry_bytes(self.dimensions)

    def as_dict(self) -> dict[str, object]:
        return {
            "key": self.key.hex(),
            "model": self.model,
            "task": self.task,
            "dimensions": self.dimensions,
            "late_chunking": self.late_chunking,
            "tokens": round(self.tokens, 3),
            "created": self.created,
        }


@dataclass(frozen=True)
class Filters:
    """Which entries a command applies to; ``None`` matches anything."""

    model: str | None = None
    task: str | None = None
    dimensions: int | None = None
    since: float | None = None
    before: float | None = None

    def match(self, entry: Entry) -> bool:
        return (
            (self.model is None or entry.model == self.model)
            and (self.task is None or entry.task == self.task)
            and (self.dimensions is None or entry.dimensions == self.dimensions)
            and (self.since is None or entry.created >= self.since)
            and (self.before is None or entry.created < self.before)
        )


def _entry(key: bytes, record: Record, settings: dict[int, dict[str, object]]) -> Entry:
    fields = settings.get(record.fingerprint_id, {})
    task = fields.get("task")
    return Entry(
        key=key,
        model=str(fields.get("model", "?")),
        task=str(task) if task is not None else None,
        dimensions=len(record.vector),
        late_chunking=bool(fields.get("late_chunking", False)),
        tokens=record.tokens,
        created=record.created,
    )


def _scan(store: Store, filters: Filters) -> Iterator[tuple[Entry, Record]]:
    settings = store.fingerprints()
    for key, found in store.scan():
        if isinstance(found, Record):
            entry = _entry(key, found, settings)
            if filters.match(entry):
                yield entry, found


def entries(store: Store, filters: Filters = Filters()) -> Iterator[Entry]:
    """Intact entries matching ``filters``, in storage order."""
    for entry, _ in _scan(store, filters):
        yield entry


@dataclass
class Summary:
    """Totals for ``embedcache stats``."""

    directory: str
    entries: int = 0
    bytes_on_disk: int = 0
    size_limit: int | None = None
    damaged: int = 0
    #: ``(model, task, dimensions)`` → ``[entries, tokens recorded]``.
    groups: dict[tuple[str, str | None, int], list[float]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


def summarize(store: Store) -> Summary:
    """Count entries by model, task and dimensions, with the lifetime counters."""
    summary = Summary(str(store.directory), size_limit=store.size_limit)
    settings = store.fingerprints()
    for key, found in store.scan():
        if not isinstance(found, Record):
            summary.damaged += 1
            continue
        entry = _entry(key, found, settings)
        group = summary.groups.setdefault((entry.model, entry.task, entry.dimensions), [0, 0.0])
        group[0] += 1
        group[1] += entry.tokens
        summary.entries += 1
    summary.bytes_on_disk = store.volume()
    summary.counters = store.counters()
    return summary


def select_for_prune(store: Store, filters: Filters, max_size: int | None = None) -> list[Entry]:
    """Entries to remove: those matching ``filters`` when no ``max_size`` is given; else the
    oldest stored matching ones until what remains counts ``max_size`` bytes or fewer,
    counted and ordered as a store's size limit evicts: without filters, on a cache with no
    damaged entries, it picks what ``Store(size_limit=max_size)`` would evict."""
    if max_size is None:
        return list(entries(store, filters))
    total = store.vector_bytes()  # damaged entries too: they take room until removed
    matched = list(entries(store, filters))
    chosen: list[Entry] = []
    # Stable, over entries in key order: ties in time go by key, as in eviction.
    for entry in sorted(matched, key=lambda e: e.created):
        if total <= max_size:
            break
        chosen.append(entry)
        total -= entry.size
    return chosen


@dataclass
class VerifyReport:
    """Outcome of ``embedcache verify``."""

    checked: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)  # (key hex, reason)


def verify(store: Store) -> VerifyReport:
    """Check every entry: it decodes (format version, length, checksum), its request settings
    are recorded, and its dimension matches them."""
    report = VerifyReport()
    settings = store.fingerprints()
    for key, found in store.scan():
        report.checked += 1
        if not isinstance(found, Record):
            report.bad.append((key.hex(), found))
            continue
        fields = settings.get(found.fingerprint_id)
        if fields is None:
            report.bad.append((key.hex(), "its request settings are not recorded"))
            continue
        problem = dimension_problem(fields, len(found.vector))
        if problem is not None:
            report.bad.append((key.hex(), problem))
    return report


def dimension_problem(fields: dict[str, object], dimensions: int) -> str | None:
    """Why a vector of ``dimensions`` cannot come from request settings ``fields``, if so."""
    expected = fields.get("dimensions")
    spec = spec_for(str(fields.get("model")))
    if expected is None and spec is not None:
        expected = spec.native_dim
    if expected is not None and expected != dimensions:
        return f"{dimensions} dims, settings say {expected}"
    return None


def export(store: Store, filters: Filters, prefix: Path, *, parquet: bool = False) -> list[Path]:
    """Write matching vectors to ``prefix.npy`` (one float32 row each) and their metadata,
    row for row, to ``prefix.jsonl``; also ``prefix.parquet`` when asked (needs pyarrow).

    :raises InvalidInputError: nothing matches, or the matches differ in dimension.
    :raises MissingDependencyError: Parquet was asked for without pyarrow (before anything
        is written).
    :returns: the files written.
    """
    if parquet:  # checked first, so a missing pyarrow leaves no half-written export behind
        with requires("parquet"):
            import pyarrow  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    rows: list[Entry] = []
    vectors = []
    for entry, record in _scan(store, filters):
        rows.append(entry)
        vectors.append(record.vector)
    if not rows:
        raise InvalidInputError("no entries match the filters; nothing exported")
    dims = Counter(entry.dimensions for entry in rows)
    if len(dims) > 1:
        found = ", ".join(f"{d}-d: {n}" for d, n in sorted(dims.items()))
        raise InvalidInputError(f"entries differ in dimension ({found}); add --dimensions")
    matrix = np.stack(vectors).astype(np.float32, copy=False)
    written = [prefix.with_suffix(".npy"), prefix.with_suffix(".jsonl")]
    np.save(written[0], matrix)
    with written[1].open("w", encoding="utf-8") as handle:
        for entry in rows:
            handle.write(json.dumps(entry.as_dict()) + "\n")
    if parquet:
        written.append(_write_parquet(prefix.with_suffix(".parquet"), rows, matrix))
    return written


def _write_parquet(path: Path, rows: list[Entry], matrix: np.ndarray) -> Path:
    with requires("parquet"):
        import pyarrow as pa  # type: ignore[import-not-found, unused-ignore]
        import pyarrow.parquet as pq  # type: ignore[import-not-found, unused-ignore]
    columns = {name: [row.as_dict()[name] for row in rows] for name in rows[0].as_dict()}
    dim = matrix.shape[1]
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), dim)
    pq.write_table(pa.table(columns), path)
    return path
