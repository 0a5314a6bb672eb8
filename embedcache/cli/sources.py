"""Reading texts to embed from files: plain text, JSON Lines, CSV/TSV, or standard input;
and from a command's arguments (:func:`argument_items`: ``get``'s texts, ``rerank``'s
documents, ``-`` standing for standard input).

The format is the one given (``--format``), else the file name's (``.txt``,
``.jsonl``/``.ndjson``, ``.csv``, ``.tsv``). Standard input (``-``), pipes and other names are
told by their first line (:func:`sniff_format`): a JSON object is JSON Lines, a header naming
the text column is CSV or TSV, anything else plain text. Errors name the file and line, and
the option that changes what was read; :func:`within_limit` refuses a text over the model's
limit so too. :class:`Spool` lets an input that cannot be read twice (a pipe) be read twice.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, cast

import click

from ..errors import InvalidInputError
from ..models import RequestOptions

__all__ = [
    "FORMATS",
    "SourceItem",
    "Spool",
    "argument_items",
    "detect_format",
    "read_items",
    "sniff_format",
    "within_limit",
]

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


def detect_format(path: str, explicit: str | None = None) -> str | None:
    """The format to read ``path`` as: ``explicit`` when given, else its name's; ``None``
    for standard input and names that tell none (see :func:`sniff_format`)."""
    if explicit is not None:
        return explicit
    return _SUFFIXES.get(Path(path).suffix.lower()) if path != "-" else None


def sniff_format(first_line: str, column: str = "text") -> str:
    """The format a file whose first non-blank line is ``first_line`` is read as: ``jsonl``
    for a JSON object, ``tsv`` or ``csv`` for a header of tab- or comma-separated names
    among which ``column`` is, else ``txt``.

    >>> sniff_format('{"text": "a"}'), sniff_format("id,text"), sniff_format("id,body")
    ('jsonl', 'csv', 'txt')
    """
    line = first_line.strip()
    if line.startswith("{"):
        try:
            if isinstance(json.loads(line), dict):
                return "jsonl"
        except json.JSONDecodeError:
            pass
    for kind, delimiter in (("tsv", "\t"), ("csv", ",")):
        if delimiter in line and column in next(csv.reader([line], delimiter=delimiter)):
            return kind
    return "txt"


def read_items(
    path: str,
    *,
    fmt: str | None = None,
    field: str = "text",
    column: str = "text",
    group_field: str | None = None,
    stdin: TextIO | None = None,
    on_sniffed: Callable[[str, str], None] | None = None,
) -> Iterator[SourceItem]:
    """Yield the texts of one file (``-`` for standard input); ``stdin``, when given, is
    read in its place (a copy of standard input or of a pipe, for a second reading).

    :param fmt: the format (``--format``); ``None``: by name, else by the first line.
    :param on_sniffed: called with the name shown for the file and the format its first
        line told (when no format was given and its name tells none).

    - txt: one text per line; blank lines are skipped.
    - jsonl: one JSON object per line, the text under ``field``; blank lines are skipped.
    - csv / tsv: a header row, the text in ``column``.

    :raises InvalidInputError: for a missing field or column, a non-string text, bad JSON.
    :raises OSError: when the file cannot be read.
    """
    kind = detect_format(path, fmt)
    if kind is not None and kind not in FORMATS:
        raise InvalidInputError(f"unknown format {kind!r}; choose one of {', '.join(FORMATS)}")
    name = "<stdin>" if path == "-" else path
    reading = _Reading(name, field, column, group_field, on_sniffed)
    if path == "-" or stdin is not None:
        yield from reading.items(stdin or sys.stdin, kind)
        return
    with open(path, encoding="utf-8", newline="") as handle:
        yield from reading.items(handle, kind)


class _Reading:
    """What to read from one file, whatever its lines come from."""

    def __init__(
        self,
        name: str,
        field: str,
        column: str,
        group_field: str | None,
        on_sniffed: Callable[[str, str], None] | None,
    ) -> None:
        self.name, self.field, self.column, self.group_field = name, field, column, group_field
        self.on_sniffed = on_sniffed

    def items(self, lines: Iterable[str], kind: str | None) -> Iterator[SourceItem]:
        name = self.name
        try:
            if kind is None:
                kind, lines = self._sniffed(iter(lines))
            if self.group_field is not None and kind != "jsonl":
                raise InvalidInputError(
                    f"{name}: --group-field needs JSON Lines, and this is read as {kind} "
                    "(--format jsonl to read it so)"
                )
            if kind == "txt":
                yield from _read_txt(lines, name)
            elif kind == "jsonl":
                yield from _read_jsonl(lines, name, self.field, self.group_field)
            else:
                delimiter = "\t" if kind == "tsv" else ","
                yield from _read_table(lines, name, self.column, delimiter)
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{name}: not UTF-8 text ({exc.reason})") from None

    def _sniffed(self, lines: Iterator[str]) -> tuple[str, Iterator[str]]:
        """The format the first non-blank line tells, and every line again."""
        peeked: list[str] = []
        for line in lines:
            peeked.append(line)
            if line.strip():
                break
        kind = sniff_format(peeked[-1], self.column) if peeked else "txt"
        if self.on_sniffed is not None:
            self.on_sniffed(self.name, kind)
        return kind, itertools.chain(peeked, lines)


def argument_items(arguments: Sequence[str], noun: str) -> list[SourceItem]:
    """The texts of a command's arguments, ``-`` standing for standard input's lines (one
    text a line, as a ``.txt`` file: blank lines skipped), each with where it came from
    (``TEXT 2``, ``<stdin>:3``, ``noun`` naming the argument) for messages.

    :raises click.UsageError: ``-`` given twice, or standard input holding no text.
    """
    if list(arguments).count("-") > 1:
        raise click.UsageError("give - (standard input) once")
    items: list[SourceItem] = []
    for number, argument in enumerate(arguments, 1):
        if argument != "-":
            items.append(SourceItem(argument, None, f"{noun} {number}"))
            continue
        lines = list(_read_txt(sys.stdin, "<stdin>"))
        if not lines:
            raise click.UsageError("- (standard input) holds no text: one text per line")
        items += lines
    return items


def _read_txt(handle: Iterable[str], name: str) -> Iterator[SourceItem]:
    for number, line in enumerate(handle, 1):
        text = line.rstrip("\r\n")
        if text.strip():
            yield SourceItem(text, None, f"{name}:{number}")


def _read_jsonl(
    handle: Iterable[str], name: str, field: str, group_field: str | None
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
            raise InvalidInputError(
                f"{where}: no field {field!r} (fields: {', '.join(record)}); "
                "choose one with --field"
            )
        text = record[field]
        if not isinstance(text, str):
            raise InvalidInputError(f"{where}: field {field!r} is {type(text).__name__}, not str")
        group = None
        if group_field is not None:
            if group_field not in record:
                raise InvalidInputError(
                    f"{where}: no group field {group_field!r} (fields: {', '.join(record)})"
                )
            group = str(record[group_field])
        yield SourceItem(text, group, where)


def _read_table(
    handle: Iterable[str], name: str, column: str, delimiter: str
) -> Iterator[SourceItem]:
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    reader = csv.reader(handle, delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return
    if column not in header:
        raise InvalidInputError(
            f"{name}: no column {column!r} (columns: {', '.join(header)}); choose one with --column"
        )
    position = header.index(column)
    for row in reader:
        where = f"{name}:{reader.line_num}"
        if not row:
            continue
        if position >= len(row):
            raise InvalidInputError(f"{where}: row has no {column!r} value")
        if row[position].strip():
            yield SourceItem(row[position], None, where)


def within_limit(items: Iterable[SourceItem], options: RequestOptions) -> Iterator[SourceItem]:
    """``items``, each refused, by its file and line, if the model's per-input limit cannot
    take it (the caching core would name only its place in a window, and a Python
    parameter: ``texts[3] ... pass truncate=True``).

    :raises InvalidInputError: naming the line and ``--truncate``.
    """
    for item in items:
        if (tokens := options.too_long(item.text)) is not None:
            raise InvalidInputError(
                f"{item.origin}: about {tokens:,} tokens, over the "
                f"{options.input_limit or 0:,}-token limit of {options.model}; shorten it "
                "or use --truncate"
            )
        yield item


class Spool:
    """Inputs that cannot be read twice (standard input, a pipe, ``<(zcat corpus.gz)``),
    each copied to a temporary file on its first reading, so both passes read the copy (in
    bounded memory: the copy is on disk)."""

    def __init__(self) -> None:
        self._copies: dict[str, TextIO] = {}

    def rewound(self, path: str) -> TextIO | None:
        """The copy of ``path`` to read, rewound; ``None`` for a regular file (opened again)."""
        if path != "-" and stat.S_ISREG(os.stat(path).st_mode):
            return None
        copy = self._copies.get(path)
        if copy is None:
            handle = tempfile.TemporaryFile("w+", encoding="utf-8", newline="")  # noqa: SIM115
            copy = self._copies[path] = cast(TextIO, handle)
            if path == "-":
                shutil.copyfileobj(sys.stdin, copy)
            else:
                with open(path, encoding="utf-8", newline="") as source:
                    shutil.copyfileobj(source, copy)
        copy.seek(0)
        return copy

    def close(self) -> None:
        for copy in self._copies.values():
            copy.close()
        self._copies.clear()
