"""``embedcache ls``: a page of a cache's entries as a table, newest first unless
``--sort`` says otherwise, or as JSON."""

from __future__ import annotations

import collections
import itertools
import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import click

from ..config import DEFAULT_UPSTREAM_ID
from .options import (
    LOCAL_ONLY,
    NO_UPSTREAM,
    SENDS_NOTHING,
    CliContext,
    Command,
    build_filters,
    filter_options,
    json_option,
    pass_cli,
)
from .output import format_table, plural
from .units import format_time

if TYPE_CHECKING:
    from ..maintenance.inventory import Entry, Filters
    from ..storage.store import Store

__all__ = ["SORTS", "ls"]

#: ``--sort``'s orders, the default first.
SORTS = ("newest", "oldest")
_HEADER = ("KEY", "CREATED", "MODEL", "TASK", "DIMS", "TOKENS")
_NUMBERS = (4, 5)  # the columns aligned right


def _oldest_first(store: Store, filters: Filters) -> Iterator[Entry]:
    """The matching entries oldest stored first, from the index alone (no vector is read:
    ``verify`` reads them). ``prune_pages`` is that walk: with a size of 0 to reach, it takes
    every match, in the order a size limit evicts (oldest first)."""
    from ..maintenance import inventory

    return itertools.chain.from_iterable(inventory.prune_pages(store, filters, 0))


class _Counted:
    """A walk that counts what it yields, for "50 of 3,000 entries shown"."""

    def __init__(self, walk: Iterable[Entry]) -> None:
        self._walk = iter(walk)
        self.seen = 0

    def __iter__(self) -> Iterator[Entry]:
        return self

    def __next__(self) -> Entry:
        entry = next(self._walk)
        self.seen += 1
        return entry

    def total(self) -> int:
        """How many the whole walk yields (walked to its end)."""
        collections.deque(self, maxlen=0)
        return self.seen


def _page(walk: Iterator[Entry], sort: str, offset: int, limit: int) -> list[Entry]:
    """The ``limit`` entries from ``offset`` on in ``sort`` order. Memory follows the page,
    not the cache; oldest first, the walk stops after the page."""
    if sort == "newest":  # the walk goes oldest first: the newest are its last ones
        newest_last = collections.deque(walk, maxlen=offset + limit)
        return list(reversed(newest_last))[offset:]
    return list(itertools.islice(walk, offset, offset + limit))


def _row(entry: Entry) -> list[str]:
    return [
        entry.key.hex(),
        format_time(entry.created),
        entry.model,
        (entry.task or "-") + (" (late chunking)" if entry.late_chunking else ""),
        str(entry.dimensions),
        f"{entry.tokens:,.1f}",
    ]


@click.command(cls=Command, ignores={**SENDS_NOTHING, **LOCAL_ONLY, **NO_UPSTREAM})
@filter_options
@click.option(
    "--sort",
    type=click.Choice(SORTS),
    default=SORTS[0],
    show_default=True,
    help="Newest stored first, or oldest first.",
)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@json_option
@pass_cli
def ls(
    cli: CliContext,
    model: str | None,
    task: str | None,
    dimensions: int | None,
    since: str | None,
    upstream: str | None,
    sort: str,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List cached entries as a table, LIMIT at a time from OFFSET, newest first (--sort).

    Reads the index only (no vector: `embedcache verify` checks those). Under the table, on
    stderr, how many of how many matching entries it shows.
    """
    filters = build_filters(model, task, dimensions, since, upstream=upstream)
    store = cli.open(existing=True).store
    walk = _Counted(_oldest_first(store, filters))
    page = _page(walk, sort, offset, limit)
    if as_json:
        # The same text as echo_json of the list: each entry's object, indented in the array.
        items = [json.dumps(entry.as_dict(), indent=2).replace("\n", "\n  ") for entry in page]
        click.echo("[\n  " + ",\n  ".join(items) + "\n]" if items else "[]")
        return
    if not page:
        total = walk.total()
        click.echo(
            f"no entries from --offset {offset} ({plural(total, 'entry', 'entries')} match)"
            if total
            else "no entries",
            err=True,
        )
        return
    rows = [_row(entry) for entry in page]
    header: tuple[str, ...] = _HEADER
    if any((entry.input, entry.output) != ("text", "float") for entry in page):
        # Only then, as UPSTREAM: a page of texts' float vectors alone keeps its narrower
        # table. DIMS is a payload's row width (in bits for packed bits), so what the entry
        # holds must be said, and an image's entry is told from a text's.
        rows = [[*row, entry.input, entry.output] for row, entry in zip(rows, page, strict=True)]
        header = (*header, "INPUT", "OUTPUT")
    if any(entry.upstream != DEFAULT_UPSTREAM_ID for entry in page):
        # Only then: a cache of Jina's API's entries alone keeps its narrower table.
        rows = [[*row, entry.upstream] for row, entry in zip(rows, page, strict=True)]
        header = (*header, "UPSTREAM")
    for line in format_table(header, rows, right=_NUMBERS):
        click.echo(line)
    total = walk.total()  # after the table: its lines need not wait for the count
    first, last = offset + 1, offset + len(page)
    if not offset:
        shown = f"{last:,} of {plural(total, 'entry', 'entries')}"
    else:
        numbers = f"{first:,}" if first == last else f"{first:,}-{last:,}"
        shown = f"{'entry' if first == last else 'entries'} {numbers} of {total:,}"
    more = "" if len(page) == total else "; --limit and --offset show others"
    click.echo(f"{shown} shown, {sort} first{more}", err=True)
