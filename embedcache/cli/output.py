"""How the commands talk to a person: aligned tables, counted nouns, an entry's kind in
words, and the question asked before removing much of a cache."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

__all__ = [
    "confirm",
    "cut",
    "describe_entry",
    "format_table",
    "plural",
    "stdin_is_terminal",
    "text_width",
    "yes_option",
]


def stdin_is_terminal() -> bool:
    """Whether standard input is a terminal someone can answer a question on."""
    return sys.stdin.isatty()


def confirm(action: str, *, err: bool = False) -> None:
    """Ask whether to ``action`` (``"remove 3,000 of the 3,000 entries in DIR"``), and
    abort on no. Standard input that is not a terminal (a script, cron, a pipe) is not
    asked, and the command refused: an answer read from a stream meant for something else
    must not empty a cache. ``--yes`` (``-y``) is for scripts.

    :param err: ask on stderr (a ``--json`` command keeps stdout for its document).
    :raises click.ClickException: not asked.
    """
    if not stdin_is_terminal():
        raise click.ClickException(
            f"not asked to {action}: standard input is not a terminal; pass --yes (-y) to go ahead"
        )
    click.confirm(action[:1].upper() + action[1:] + "?", abort=True, err=err)


yes_option = click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")


def plural(count: float, noun: str, many: str | None = None) -> str:
    """``1 request``, ``2 requests``, ``1,000 misses`` (``many``: the plural, when not
    ``noun`` + s/es)."""
    if many is None:
        many = noun + ("es" if noun.endswith(("s", "sh", "ch", "x")) else "s")
    return f"{count:,} {noun if count == 1 else many}"


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()
) -> list[str]:
    """``header`` and ``rows`` as lines of columns two spaces apart, each as wide as its
    widest cell; the columns numbered in ``right`` (numbers) aligned right. The last column
    is not padded, so no line ends in spaces."""
    shown = [[(cell, text_width(cell)) for cell in row] for row in [header, *rows]]
    widths = [max(row[i][1] for row in shown) for i in range(len(header))]
    last = len(header) - 1
    lines = []
    for row in shown:
        cells = [
            " " * (room - used) + cell
            if i in right
            else cell
            if i == last
            else cell + " " * (room - used)
            for i, ((cell, used), room) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    return lines


def text_width(text: str) -> int:
    """The columns ``text`` takes on a terminal: two for a wide character (Chinese,
    Japanese, Korean, most emoji), none for a combining one, where ``len`` counts one each
    and a table of such texts falls out of line."""
    if text.isascii():  # one column a character (see _char_width); no wcwidth to load (~50 ms)
        return len(text)
    from wcwidth import wcswidth

    shown = wcswidth(text)
    return shown if shown >= 0 else sum(_char_width(char) for char in text)


def cut(text: str, columns: int) -> str:
    """``text`` within ``columns`` terminal columns, ending in ``…`` when cut."""
    if text_width(text) <= columns:
        return text
    kept, used = [], 0
    for char in text:
        used += _char_width(char)
        if used > columns - 1:
            break
        kept.append(char)
    return "".join(kept) + "…" if columns > 0 else ""


def _char_width(char: str) -> int:
    if char.isascii():  # a control character is shown as something: one column
        return 1
    from wcwidth import wcwidth

    columns = wcwidth(char)
    return columns if columns >= 0 else 1  # -1: a control character, as above


def describe_entry(kind: str, shape: Sequence[int], dtype: str, nbytes: int) -> str:
    """An entry's data in a line, as ``inspect`` shows it: a vector's ``1024 float32`` (as
    it always said), a payload's shape, dtype, bytes and what it holds
    (:mod:`~embedcache.storage.payloads`): ``7 x 128 float32, 3,584 bytes (ragged:
    multi-vector, one row per token)``."""
    if kind == "vector":
        return f"{shape[0]} float32"
    if kind == "ragged":
        words = "multi-vector, one row per token"
    else:  # the API's embedding_type for int8 packed bits is binary, for uint8 ubinary
        words = f"packed bits, embedding_type {'ubinary' if dtype == 'uint8' else 'binary'}"
        words += ", one row per token" if len(shape) == 2 else ""
    return f"{' x '.join(map(str, shape))} {dtype}, {nbytes:,} bytes ({kind}: {words})"
