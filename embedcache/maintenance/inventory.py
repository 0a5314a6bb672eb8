"""What is in a cache: listing, summarising, verifying, selecting for pruning (exporting
is :mod:`.exporting`).

Everything here reads through :class:`~embedcache.storage.store.Store`; nothing knows the
byte format.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from ..cache_keys import Fingerprint
from ..models import spec_for
from ..storage.entries import Record, Stored
from ..storage.payloads import dimensions, kind_name
from ..storage.store import DELETE_PAGE, Store, entry_bytes

_T = TypeVar("_T")

__all__ = [
    "Entry",
    "Filters",
    "Group",
    "Summary",
    "VerifyReport",
    "dimension_problem",
    "entries",
    "pages",
    "prune_pages",
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
    #: where the vector came from (:func:`~embedcache.config.upstream_id`); "?" unrecorded.
    upstream: str = "?"
    #: ``"vector"``, or ``"ragged"``/``"bytes"`` (:mod:`~embedcache.storage.payloads`).
    kind: str = "vector"
    #: the bytes a payload counts for; ``None``: a vector's, 4 a dimension.
    nbytes: int | None = None
    #: what it was made from: ``"text"``, ``"image"``, ``"pdf"`` (:attr:`Fingerprint.input`).
    input: str = "text"
    #: what it holds: ``"float"``, ``"binary"``, ``"ubinary"``, ``"multi-vector"``, a
    #: reranker's ``"score"`` (:attr:`Fingerprint.output`); "?" unrecorded.
    output: str = "float"

    @property
    def size(self) -> int:
        """Bytes the entry counts for, in ``prune --max-size`` as against a size limit: its
        vector's (:func:`~embedcache.storage.formats.entry_bytes`), a payload's own."""
        return entry_bytes(self.dimensions) if self.nbytes is None else self.nbytes

    def as_dict(self) -> dict[str, object]:
        fields: dict[str, object] = {
            "key": self.key.hex(),
            "model": self.model,
            "task": self.task,
            "dimensions": self.dimensions,
            "late_chunking": self.late_chunking,
            "tokens": round(self.tokens, 3),
            "created": self.created,
            "upstream": self.upstream,
            "input": self.input,
            "output": self.output,
        }
        if self.kind != "vector":  # a vector's line stays as it was
            fields["kind"] = self.kind
        return fields


@dataclass(frozen=True)
class Filters:
    """Which entries a command applies to; ``None`` matches anything."""

    model: str | None = None
    task: str | None = None
    dimensions: int | None = None
    since: float | None = None
    before: float | None = None
    upstream: str | None = None
    kind: str | None = None

    def match(self, entry: Entry) -> bool:
        return (
            (self.model is None or entry.model == self.model)
            and (self.kind is None or entry.kind == self.kind)
            and (self.upstream is None or entry.upstream == self.upstream)
            and (self.task is None or entry.task == self.task)
            and (self.dimensions is None or entry.dimensions == self.dimensions)
            and (self.since is None or entry.created >= self.since)
            and (self.before is None or entry.created < self.before)
        )


def _entry(key: bytes, record: Record | Stored, settings: dict[int, Fingerprint]) -> Entry:
    fp = settings.get(record.fingerprint_id)
    fields = fp.fields if fp is not None else {}
    task = fields.get("task")
    return Entry(
        key=key,
        model=str(fields.get("model", "?")),
        task=str(task) if task is not None else None,
        dimensions=_dimensions(fp, record.dimensions),
        late_chunking=bool(fields.get("late_chunking", False)),
        tokens=record.tokens,
        created=record.created,
        upstream=fp.upstream if fp is not None else "?",
        kind=record.kind,
        nbytes=_payload_bytes(record),
        input=fp.input if fp is not None else "?",
        output=fp.output if fp is not None else "?",
    )


def _dimensions(fp: Fingerprint | None, stored: int) -> int:
    """What an entry's dimensions are said to be: a score is one number (stored as the
    float64's 8 bytes, which storage counts as 64 bits)."""
    return 1 if fp is not None and fp.output == "score" else stored


def _payload_bytes(record: Record | Stored) -> int | None:
    """The bytes a payload counts for (``None`` for a vector)."""
    if isinstance(record, Stored):
        return record.nbytes
    return None if record.kind == "vector" else record.vector.nbytes


def _scan(store: Store, filters: Filters, batch: int = 2048) -> Iterator[tuple[Entry, Record]]:
    settings = store.fingerprints()
    for key, found in store.records(batch):
        if isinstance(found, Record):
            entry = _entry(key, found, settings)
            if filters.match(entry):
                yield entry, found


def entries(store: Store, filters: Filters = Filters()) -> Iterator[Entry]:
    """Intact entries matching ``filters``, in storage order."""
    for entry, _ in _scan(store, filters):
        yield entry


class Group(NamedTuple):
    """Entries of one kind in ``embedcache stats``: the settings they were made under, and
    what they hold."""

    model: str
    task: str | None
    dimensions: int
    #: where they came from (:func:`~embedcache.config.upstream_id`); "?" unrecorded.
    upstream: str
    #: ``"text"``, ``"image"``, ``"pdf"`` (:attr:`~embedcache.cache_keys.Fingerprint.input`).
    input: str = "text"
    #: ``"float"``, ``"binary"``, ``"multi-vector"``, ``"score"``...
    #: (:attr:`~embedcache.cache_keys.Fingerprint.output`).
    output: str = "float"
    #: how they are stored: ``"vector"``, or ``"ragged"``/``"bytes"``
    #: (:mod:`~embedcache.storage.payloads`), so a vector's group is never one of payloads
    #: of the same settings and width.
    kind: str = "vector"


@dataclass
class Summary:
    """Totals for ``embedcache stats``, from the index alone (``verify`` reads the vectors)."""

    directory: str
    entries: int = 0
    bytes_on_disk: int = 0
    size_limit: int | None = None
    #: each kind of entry → ``[entries, tokens recorded]``.
    groups: dict[Group, list[float]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


def summarize(store: Store) -> Summary:
    """Count entries by model, task, dimensions, input and output, with the lifetime
    counters: one aggregate query over the index, so its cost does not follow the vectors'
    size."""
    summary = Summary(str(store.directory), size_limit=store.size_limit)
    settings = store.fingerprints()
    for fp_id, dim, count, tokens in store.groups(raw=True):
        fp = settings.get(fp_id)
        fields = fp.fields if fp is not None else {}
        task = fields.get("task")
        name = Group(
            str(fields.get("model", "?")),
            str(task) if task is not None else None,
            _dimensions(fp, dimensions(dim)),
            fp.upstream if fp is not None else "?",
            fp.input if fp is not None else "?",
            fp.output if fp is not None else "?",
            kind_name(dim),
        )
        group = summary.groups.setdefault(name, [0, 0.0])
        group[0] += count
        group[1] += tokens
        summary.entries += count
    summary.bytes_on_disk = store.volume()
    summary.counters = store.counters()
    return summary


def select_for_prune(store: Store, filters: Filters, max_size: int | None = None) -> list[Entry]:
    """Entries to remove, as one list (:func:`prune_pages` gives them a page at a time)."""
    return [entry for page in prune_pages(store, filters, max_size) for entry in page]


def prune_pages(
    store: Store, filters: Filters, max_size: int | None = None, page: int = DELETE_PAGE
) -> Iterator[list[Entry]]:
    """Entries to remove, ``page`` at a time: those matching ``filters`` when no
    ``max_size`` is given; else the oldest stored matching ones until what remains counts
    ``max_size`` bytes or fewer, counted and ordered as a store's size limit evicts: without
    filters it picks what ``Store(size_limit=max_size)`` would evict.

    Chosen from the index alone (:meth:`Store.listing`): no vector is read, and a damaged
    entry is chosen like an intact one (removing it costs a refetch at most). The walk is
    lazy, so deleting each page before taking the next is safe and holds one page in memory.
    """
    settings = store.fingerprints()
    total = store.vector_bytes() if max_size is not None else 0
    chosen: list[Entry] = []
    for key, stored in store.listing(page, oldest_first=max_size is not None):
        if max_size is not None and total <= max_size:
            break
        entry = _entry(key, stored, settings)
        if not filters.match(entry):
            continue
        chosen.append(entry)
        total -= entry.size
        if len(chosen) >= page:
            yield chosen
            chosen = []
    if chosen:
        yield chosen


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
    # Judged once per (settings, dimension, kind) seen, not once per entry.
    problems: dict[tuple[int, int, str], str | None] = {}
    for key, found in store.records():
        report.checked += 1
        if not isinstance(found, Record):
            report.bad.append((key.hex(), found))
            continue
        kind = (found.fingerprint_id, found.dimensions, found.kind)
        if kind not in problems:
            fp = settings.get(kind[0])
            problems[kind] = (
                "its request settings are not recorded"
                if fp is None
                else dimension_problem(fp.fields, kind[1], kind[2])
            )
        problem = problems[kind]
        if problem is not None:
            report.bad.append((key.hex(), problem))
    return report


def dimension_problem(
    fields: dict[str, object], dimensions: int, kind: str = "vector"
) -> str | None:
    """Why an entry of ``dimensions`` cannot come from request settings ``fields``, if so
    (a payload, per-token or packed, is held to the ``dimensions`` asked for only)."""
    expected = fields.get("dimensions")
    spec = spec_for(str(fields.get("model")))
    if expected is None and spec is not None and kind == "vector":
        expected = spec.native_dim
    if expected is not None and expected != dimensions:
        return f"{dimensions} dims, settings say {expected}"
    return None


def pages(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """``items`` in lists of ``size`` (the last may be shorter), drawn lazily."""
    iterator = iter(items)
    while page := list(itertools.islice(iterator, size)):
        yield page
