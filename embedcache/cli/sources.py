"""Reading texts to embed from files: plain text, JSON Lines, CSV/TSV, or standard input.

The format follows the file name (``.txt``, ``.jsonl``/``.ndjson``, ``.csv``, ``.tsv``); other
names and ``-`` (standard input) are read as plain text unless a format is given. Errors name
the file and line.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..errors import InvalidInputError

__all__ = ["FORMATS", "SourceItem", "detect_format", "read_items"]

FORMATS = ("txt", "jsonl", "csv", "tsv")
_SUFFIXES = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
# Corpora often carry whole documents per CSV cell, beyond csv's 128 KiB default.
_CSV_FIELD_LIMIT = 1 << 30


@dataclass(frozen=True)
class SourceItem:
    """One text to embed.

    :ivar text: the text.
    :ivar group: the late-chunking group it belongs to (JSON Lines ``group_field``), if any.
    :ivar origin: ``file:line`` for messages.
    """

    text: str
    group: str | None
    origin: str


def detect_format(path: str, explicit: str | None = None) -> str:
    """The format to read ``path`` as."""
    if explicit is not None:
        return explicit
    return _SUFFIXES.get(Path(path).suffix.lower(), "txt")


def read_items(
    path: str,
    *,
    fmt: str | None = None,
    field: str = "text",
    column: str = "text",
    group_field: str | None = None,
    stdin: TextIO | None = None,
) -> Iterator[SourceItem]:
    """Yield the texts of one file (``-`` for standard input); ``stdin``, when given, is
    read in its place (a copy of standard input or of a pipe, for a second reading).

    - txt: one text per line; blank lines are skipped.
    - jsonl: one JSON object per line, the text under ``field``; blank lines are skipped.
    - csv / tsv: a header row, the text in ``column``.

    :raises InvalidInputError: for a missing field or column, a non-string text, bad JSON.
    :raises OSError: when the file cannot be read.
    """
    kind = detect_format(path, fmt)
    if kind not in FORMATS:
        raise InvalidInputError(f"unknown format {kind!r}; choose one of {', '.join(FORMATS)}")
    if group_field is not None and kind != "jsonl":
        raise InvalidInputError("group fields are read from JSON Lines files only")
    name = "<stdin>" if path == "-" else path
    if path == "-" or stdin is not None:
        yield from _read(stdin or sys.stdin, name, kind, field, column, group_field)
        return
    with open(path, encoding="utf-8", newline="") as handle:
        yield from _read(handle, name, kind, field, column, group_field)


def _read(
    handle: TextIO, name: str, kind: str, field: str, column: str, group_field: str | None
) -> Iterator[SourceItem]:
    try:
        if kind == "txt":
            yield from _read_txt(handle, name)
        elif kind == "jsonl":
            yield from _read_jsonl(handle, name, field, group_field)
        else:
            yield from _read_table(handle, name, column, "\t" if kind == "tsv" else ",")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{name}: not UTF-8 text ({exc.reason})") from None


def _read_txt(handle: TextIO, name: str) -> Iterator[SourceItem]:
    for number, line in enumerate(handle, 1):
        text = line.rstrip("\r\n")
        if text.strip():
            yield SourceItem(text, None, f"{name}:{number}")


def _read_jsonl(
    handle: TextIO, name: str, field: str, group_field: str | None
) -> Iterator[SourceItem]:
    for number, line in enumerate(handle, 1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise InvalidInputError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if field not in record:
            raise InvalidInputError(f"{where}: no field {field!r} (fields: {', '.join(record)})")
        text = record[field]
        if not isinstance(text, str):
            raise InvalidInputError(f"{where}: field {field!r} is {type(text).__name__}, not str")
        group = None
        if group_field is not None:
            if group_field not in record:
                raise InvalidInputError(f"{where}: no group field {group_field!r}")
            group = str(record[group_field])
        yield SourceItem(text, group, where)


def _read_table(handle: TextIO, name: str, column: str, delimiter: str) -> Iterator[SourceItem]:
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    reader = csv.reader(handle, delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return
    if column not in header:
        raise InvalidInputError(f"{name}: no column {column!r} (columns: {', '.join(header)})")
    position = header.index(column)
    for row in reader:
        where = f"{name}:{reader.line_num}"
        if not row:
            continue
        if position >= len(row):
            raise InvalidInputError(f"{where}: row has no {column!r} value")
        if row[position].strip():
            yield SourceItem(row[position], None, where)
