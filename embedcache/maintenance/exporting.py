"""``embedcache export``: a cache's entries written to ``.npy`` (the data), ``.jsonl`` (each
entry's metadata, row for row) and, when asked, ``.parquet`` (both in one table).

Every kind of entry exports exactly as stored (:mod:`.export_kinds` names them): float
vectors one float32 row each; packed bits (``binary`` int8, ``ubinary`` uint8) one row of
``dimensions / 8`` values each; multi-vector entries every row of every entry stacked, each
metadata line saying where its rows are (``row``, the first; ``rows``, how many). One export
holds one kind and width, so its ``.npy`` is one array.

Streamed a page of entries at a time; the files are written under temporary names and
renamed once complete, so a refused or failed export leaves none behind (nor half of one).
Nothing here knows the byte format (the ``.npy`` header is
:func:`~embedcache.storage.formats.npy_header`).
"""

from __future__ import annotations

import contextlib
import json
import os
import typing
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError
from ..extras import requires
from ..storage.entries import Record
from ..storage.formats import npy_header
from ..storage.store import Store
from .export_kinds import KINDS, differ_message
from .inventory import Entry, Filters, _scan, pages

__all__ = ["export", "export_kind"]

# An entry's array → its export kind, by dtype and whether it has rows.
_BY_ARRAY = {(np.dtype(kind.descr).char, 2 if kind.multi else 1): name
             for name, kind in KINDS.items()}  # fmt: skip

#: About the bytes of entries one page of an export holds. A page of vectors stays ``page``
#: entries (2,048 1024-d vectors: 8 MB); multi-vector entries are hundreds of rows each, and
#: ``page`` of them could take gigabytes, so their pages hold fewer.
PAGE_BYTES = 64 << 20

# The .npy header's length: written first with a placeholder shape and again once the row
# count is known, so both must take the same bytes (numpy's own take 128 at any shape).
_NPY_HEADER_BYTES = 128


def export_kind(entry: Entry, array: NDArray[Any]) -> str:
    """The export kind (a key of :data:`~.export_kinds.KINDS`) of an entry, given its array
    as a :class:`~embedcache.storage.entries.Record` holds it."""
    if entry.output == "score":  # stored as the float64's 8 bytes
        return "score"
    return _BY_ARRAY[(array.dtype.char, array.ndim)]


def _values(kind: str, array: NDArray[Any]) -> NDArray[Any]:
    """An entry's array as exported: a score as the float64 it is."""
    return array.view("<f8") if kind == "score" else array


def export(
    store: Store,
    filters: Filters,
    prefix: Path,
    *,
    kind: str | None = None,
    parquet: bool = False,
    page: int = 2048,
) -> list[Path]:
    """Write the entries matching ``filters`` (and of export ``kind``, when given) to
    ``prefix.npy`` and their metadata, one JSON object a line, to ``prefix.jsonl``; also
    ``prefix.parquet`` when asked (needs pyarrow). See the module's docstring for what each
    kind's files hold.

    Memory holds one page of ``page`` entries (fewer when they are large: see
    :data:`PAGE_BYTES`), whatever the cache's size.

    :raises InvalidInputError: nothing matches, or the matches differ in kind or dimension
        (one line naming each kind and dimension found, and the flags that pick one).
    :raises MissingDependencyError: Parquet was asked for without pyarrow (before anything
        is written).
    :returns: the files written.
    """
    if parquet:  # checked first, so a missing pyarrow leaves no half-written export behind
        with requires("parquet"):
            import pyarrow  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    suffixes = (".npy", ".jsonl") + ((".parquet",) if parquet else ())
    written = [prefix.with_suffix(suffix) for suffix in suffixes]
    partial = [path.with_name(f".{path.name}.partial") for path in written]
    page = _page_size(store, page)
    scanned = (
        (entry, record)
        for entry, record in _scan(store, filters, page)
        if kind is None or export_kind(entry, record.vector) == kind
    )
    try:
        groups = _write_export(scanned, partial, page)
        if not groups:
            raise InvalidInputError("no entries match the filters; nothing exported")
        if len(groups) > 1:
            raise InvalidInputError(differ_message(groups))
        for source, target in zip(partial, written, strict=True):
            os.replace(source, target)
    finally:
        for path in partial:
            path.unlink(missing_ok=True)
    return written


def _page_size(store: Store, page: int) -> int:
    """``page``, or fewer entries when the cache's entries average more than
    :data:`PAGE_BYTES` over ``page`` (from the index's totals: no entry is read)."""
    count = len(store)
    average = store.vector_bytes() / count if count else 0.0
    return max(1, min(page, int(PAGE_BYTES // max(average, 1.0))))


def _write_export(
    scanned: Iterator[tuple[Entry, Record]], paths: list[Path], page: int
) -> Counter[tuple[str, int]]:
    """Write ``scanned`` to the ``.npy``, ``.jsonl`` (and ``.parquet``) at ``paths`` a page
    at a time; returns the entries seen by ``(export kind, dimensions)`` (the files are
    complete only if there is one)."""
    groups: Counter[tuple[str, int]] = Counter()
    rows = width = 0
    descr = "<f4"
    with contextlib.ExitStack() as stack:
        npy = stack.enter_context(paths[0].open("wb"))
        jsonl = stack.enter_context(paths[1].open("w", encoding="utf-8"))
        npy.write(npy_header((0, 0), descr, _NPY_HEADER_BYTES))
        parquet = _ParquetPages(paths[2]) if len(paths) > 2 else None
        if parquet is not None:
            stack.callback(parquet.close)
        for chunk in pages(scanned, page):
            kinds = [export_kind(entry, record.vector) for entry, record in chunk]
            groups.update((k, entry.dimensions) for k, (entry, _) in zip(kinds, chunk, strict=True))
            if len(groups) > 1:
                continue  # an error once counted: nothing more is worth writing
            kind = KINDS[kinds[0]]
            arrays = [_values(kinds[0], record.vector) for _, record in chunk]
            # Stored little-endian already (storage/payloads.py); astype only says so.
            matrix = (np.concatenate(arrays) if kind.multi else np.stack(arrays)).astype(
                kind.descr, copy=False
            )
            lines = [entry.as_dict() for entry, _ in chunk]
            counts = [len(array) for array in arrays] if kind.multi else None
            if counts is not None:
                # Where each entry's rows are in the .npy: np.load(...)[row:row + rows].
                starts = rows + np.cumsum([0, *counts[:-1]])
                for line, start, count in zip(lines, starts.tolist(), counts, strict=True):
                    line.update(row=start, rows=count)
            npy.write(np.ascontiguousarray(matrix).data)
            jsonl.writelines(json.dumps(line) + "\n" for line in lines)
            if parquet is not None:
                parquet.write(lines, matrix, counts)
            rows, width, descr = rows + len(matrix), matrix.shape[1], kind.descr
        npy.seek(0)
        npy.write(npy_header((rows, width), descr, _NPY_HEADER_BYTES))
    return groups


def _hinted_type(pa: Any, name: str) -> Any:
    """The Arrow type of metadata field ``name`` from :class:`Entry`'s annotation, for a
    column whose first page holds no value to tell it by (all ``None``: a task-less page)."""
    hint = typing.get_type_hints(Entry).get(name)
    for python, arrow in ((bool, pa.bool_()), (int, pa.int64()), (float, pa.float64())):
        if hint is python or python in typing.get_args(hint):
            return arrow
    return pa.string()  # what as_dict() writes of anything else (a key's bytes as hex)


class _ParquetPages:
    """A Parquet file written a row group per page, its schema set by the first: a column
    for every key of the metadata lines (:meth:`Entry.as_dict` and the rows' place), so a
    field added to entries is exported without a change here, then the data: ``embedding``,
    a fixed-size list of one row's values, or ``embeddings`` (multi-vector), a list of
    them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: Any = None
        self._schema: Any = None

    def write(
        self, lines: list[dict[str, object]], matrix: np.ndarray, counts: list[int] | None
    ) -> None:
        with requires("parquet"):
            import pyarrow as pa  # type: ignore[import-not-found, unused-ignore]
            import pyarrow.parquet as pq  # type: ignore[import-not-found, unused-ignore]
        values = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), matrix.shape[1])
        if counts is not None:
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
            values = pa.ListArray.from_arrays(pa.array(offsets), values)
        data = "embedding" if counts is None else "embeddings"
        if self._schema is None:
            names = list(dict.fromkeys(name for line in lines for name in line))
            fields = []
            for name in names:
                inferred = pa.array([line.get(name) for line in lines]).type
                fields.append((name, _hinted_type(pa, name) if inferred == pa.null() else inferred))
            self._schema = pa.schema([*fields, (data, values.type)])
            self._writer = pq.ParquetWriter(self.path, self._schema)
        columns: dict[str, Any] = {
            name: [line.get(name) for line in lines] for name in self._schema.names[:-1]
        }
        columns[data] = values
        self._writer.write_table(pa.table(columns, schema=self._schema))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
