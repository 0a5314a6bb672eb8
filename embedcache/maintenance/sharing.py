"""Moving entries between the local store and the shared Redis tier, and checking the latter.

What ``embedcache sync`` (:func:`push`, :func:`pull`) and ``embedcache verify``
(:func:`verify_shared`) do with Redis. Entries move with their request settings: a
pushed entry's fingerprint is recorded in ``<prefix>:fingerprints``, and a pulled one is
stored locally under the fingerprint found there; an entry whose fingerprint is not recorded
is skipped (and counted), never stored under made-up settings. Both directions work a page at
a time: one existence check and one write per fingerprint and page, never one per entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from ..cache_keys import Fingerprint
from ..storage.entries import Record
from ..storage.formats import check_entry
from ..storage.payloads import array_kind
from ..storage.shared import RedisStore
from ..storage.store import Store
from .inventory import VerifyReport, dimension_problem, pages

__all__ = ["SharedVerifyReport", "SyncReport", "pull", "push", "verify_shared"]

#: Entries per page: one ``EXISTS`` pipeline and one write per fingerprint each.
DEFAULT_BATCH = 1000

_S = TypeVar("_S")  # what a source page holds per key: a local Record, or Redis bytes
_Entry = tuple[bytes, NDArray[np.float32], float]
#: An entry to copy and its fingerprint, or the SyncReport counter saying why not.
_Decoded = tuple[_Entry, Fingerprint] | str


@dataclass
class SyncReport:
    """Outcome of one :func:`push` or :func:`pull`.

    :ivar direction: ``"up"`` (local to Redis) or ``"down"`` (Redis to local).
    :ivar checked: entries looked at on the source side.
    :ivar copied: entries written to the other side (would be, in a dry run).
    :ivar present: entries the other side already had.
    :ivar damaged: source entries that failed their checks; not copied.
    :ivar unknown_fingerprint: source entries whose request settings are not recorded.
    """

    direction: str
    dry_run: bool = False
    checked: int = 0
    copied: int = 0
    present: int = 0
    damaged: int = 0
    unknown_fingerprint: int = 0

    @property
    def skipped(self) -> int:
        """Entries not copied although the other side lacks them."""
        return self.damaged + self.unknown_fingerprint

    def as_dict(self) -> dict[str, object]:
        return {
            "direction": self.direction,
            "dry_run": self.dry_run,
            "checked": self.checked,
            "copied": self.copied,
            "present": self.present,
            "skipped": self.skipped,
            "damaged": self.damaged,
            "unknown_fingerprint": self.unknown_fingerprint,
        }


@dataclass
class SharedVerifyReport(VerifyReport):
    """Outcome of :func:`verify_shared`.

    :ivar unrecorded: intact entries whose request settings are not recorded in Redis; they
        still serve reads but cannot be pulled, so they are reported, not counted as bad.
    """

    unrecorded: int = 0
    location: str = ""
    prefix: str = ""


class _SharedFingerprints:
    """The fingerprints recorded in Redis, read once and again when an unknown id turns up
    (an entry written after the first read), at most once per id."""

    def __init__(self, shared: RedisStore) -> None:
        self._shared = shared
        self._known = shared.fingerprints()
        self._missing: set[int] = set()

    def get(self, fp_id: int) -> Fingerprint | None:
        if fp_id not in self._known and fp_id not in self._missing:
            self._known = self._shared.fingerprints()
            if fp_id not in self._known:
                self._missing.add(fp_id)
        return self._known.get(fp_id)


def push(
    store: Store,
    shared: RedisStore,
    *,
    dry_run: bool = False,
    batch: int = DEFAULT_BATCH,
    on_page: Callable[[SyncReport], None] | None = None,
) -> SyncReport:
    """Copy the local entries Redis lacks up to Redis, with their fingerprints.

    :param on_page: called after each page with the report so far (for progress).
    """
    fingerprints = store.fingerprints()

    def decode(key: bytes, record: Record | str) -> _Decoded:
        if not isinstance(record, Record):
            return "damaged"
        fp = fingerprints.get(record.fingerprint_id)
        return "unknown_fingerprint" if fp is None else ((key, record.vector, record.tokens), fp)

    report = SyncReport("up", dry_run=dry_run)
    paged = pages(store.records(batch), batch)
    return _copy(report, paged, shared.contains_many, decode, shared.put_many, on_page)


def pull(
    store: Store,
    shared: RedisStore,
    *,
    dry_run: bool = False,
    batch: int = DEFAULT_BATCH,
    on_page: Callable[[SyncReport], None] | None = None,
) -> SyncReport:
    """Copy the Redis entries the local store lacks down to it, under the fingerprints
    recorded in Redis.

    :param on_page: called after each page with the report so far (for progress).
    """
    fingerprints = _SharedFingerprints(shared)

    def decode(key: bytes, value: bytes) -> _Decoded:
        entry = check_entry(value)
        if isinstance(entry, str):
            return "damaged"
        vector, tokens, fp_id = entry
        fp = fingerprints.get(fp_id)
        return "unknown_fingerprint" if fp is None else ((key, vector, tokens), fp)

    report = SyncReport("down", dry_run=dry_run)
    paged = pages(shared.raw_values(batch), batch)
    return _copy(report, paged, store.contains_many, decode, store.put_many, on_page)


def _copy(
    report: SyncReport,
    pages: Iterable[list[tuple[bytes, _S]]],
    exists: Callable[[list[bytes]], list[bool]],
    decode: Callable[[bytes, _S], _Decoded],
    write: Callable[[Fingerprint, list[_Entry]], None],
    on_page: Callable[[SyncReport], None] | None,
) -> SyncReport:
    """Copy each page's entries the other side lacks (``exists``), as ``decode`` reads them,
    with one ``write`` per fingerprint and page; ``decode`` names why it cannot
    (``"damaged"``, ``"unknown_fingerprint"``), which is counted."""
    for page in pages:
        report.checked += len(page)
        there = exists([key for key, _ in page])
        groups: dict[int, tuple[Fingerprint, list[_Entry]]] = {}
        for (key, item), present in zip(page, there, strict=True):
            if present:
                report.present += 1
                continue
            decoded = decode(key, item)
            if isinstance(decoded, str):
                setattr(report, decoded, getattr(report, decoded) + 1)
                continue
            entry, fp = decoded
            groups.setdefault(fp.id, (fp, []))[1].append(entry)
        for fp, entries in groups.values():
            if not report.dry_run:
                write(fp, entries)
            report.copied += len(entries)
        if on_page is not None:
            on_page(report)
    return report


def verify_shared(shared: RedisStore, *, batch: int = DEFAULT_BATCH) -> SharedVerifyReport:
    """Check every entry under the namespace: its header, length and checksum, and its
    dimension against its request settings when those are recorded."""
    report = SharedVerifyReport(location=shared.location, prefix=shared.prefix)
    fingerprints = _SharedFingerprints(shared)
    for key, value in shared.raw_values(batch):
        report.checked += 1
        entry = check_entry(value)
        if isinstance(entry, str):
            report.bad.append((key.hex(), entry))
            continue
        fp = fingerprints.get(entry[2])
        if fp is None:
            report.unrecorded += 1
            continue
        kind, dimensions = array_kind(entry[0])
        problem = dimension_problem(fp.fields, dimensions, kind)
        if problem is not None:
            report.bad.append((key.hex(), problem))
    return report
