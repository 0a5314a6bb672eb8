"""``embedcache limit``: show or set a cache's size limit, without writing an entry.

The limit lives in the cache directory (``Store(size_limit=...)`` records it), so every
writer honours it: the library, ``prewarm``, ``get`` and the proxy. A store evicts only
when it writes; a limit set here below what the cache holds evicts the excess at once
instead, oldest stored first (what the next write would evict, chosen as ``prune
--max-size`` chooses). So ``stats`` agrees with the limit as soon as it is set, segment
files left mostly dead are compacted now (as ``prune`` does), and a cache that only serves
hits (a proxy on a warm cache) does not stay over its limit until a write comes. Evicting
most of the cache asks first, unless ``--yes``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import click

from ..config import resolve_cache_dir
from .options import CliContext, Command, echo_json, json_option, pass_cli
from .output import plural
from .units import format_bytes, parse_size_limit

if TYPE_CHECKING:
    from ..storage.store import Store

__all__ = ["limit"]


def _size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    return None if value is None else parse_size_limit(value)


def _entries(count: int) -> str:
    return plural(count, "entry", "entries")


def _shown(size_limit: int | None) -> str:
    """A limit as users read it, and exactly (``format_bytes`` counts in thousands, while
    the limit may have been given in KiB)."""
    return f"{format_bytes(size_limit)} ({size_limit:,} bytes)" if size_limit else "none"


@click.command(cls=Command)
@click.argument("size", metavar="[SIZE]", required=False, callback=_size)
@click.option("--dry-run", is_flag=True, help="Show what SIZE would evict; change nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before evicting most of the cache.")
@json_option
@pass_cli
def limit(cli: CliContext, size: int | None, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Show the cache's size limit, or set it to SIZE: 10GB, 512MiB (a unit is required);
    none removes it.

    The limit counts the vectors' bytes (4 per dimension, as `prune --max-size` does) and is
    kept in the cache directory, so the library, prewarm, get and the proxy all honour it:
    past it, the oldest stored entries are evicted. Set below what the cache holds, the
    excess is evicted now (asking first when that is most of the cache, unless --yes).
    """
    if size is None:
        size = cli.size_limit  # `embedcache --size-limit 10GB limit` sets it too
    elif cli.size_limit is not None and cli.size_limit != size:
        raise click.UsageError("SIZE and --size-limit disagree: give one of them")
    # Opened without the new limit: it is recorded only once the user has agreed.
    plain = dataclasses.replace(cli, size_limit=None)
    if size is None:
        _show(plain.open(existing=True).store, as_json)
    elif dry_run:
        _plan(plain, size, as_json)
    else:
        _set(plain.open().store, size, yes, as_json)


def _show(store: Store, as_json: bool) -> None:
    held, size_limit = store.vector_bytes(), store.size_limit
    over = _evicted_by(store, size_limit) if size_limit else (0, 0)
    if as_json:
        echo_json(
            {"directory": str(store.directory), "size_limit": size_limit,
             "entries": len(store), "vector_bytes": held, "bytes_on_disk": store.volume(),
             "over_limit": {"entries": over[0], "bytes": over[1]}}
        )  # fmt: skip
        return
    click.echo(f"cache        {store.directory}")
    click.echo(f"size limit   {_shown(size_limit) if size_limit else 'none (never evicts)'}")
    click.echo(
        f"holds        {_entries(len(store))}, {format_bytes(held)} of vectors "
        f"({format_bytes(store.volume())} on disk)"
    )
    if over[0]:  # a limit recorded by the library, not yet applied by a write
        click.echo(
            f"over limit   the next write evicts the {over[0]:,} oldest entries "
            f"({format_bytes(over[1])}); setting the limit again evicts them now"
        )


def _plan(cli: CliContext, size: int, as_json: bool) -> None:
    """``--dry-run``: what setting ``size`` would evict, the cache left as it is (and not
    created when there is none)."""
    from ..storage.store import Store

    directory = resolve_cache_dir(cli.cache_dir)
    if Store.exists(directory):
        store = cli.open(existing=True).store
        entries, held, before = len(store), store.vector_bytes(), store.size_limit
        evicted = _evicted_by(store, size)
    else:
        entries, held, before, evicted = 0, 0, None, (0, 0)
    report = _report(str(directory), size, before, entries, held, evicted, 0, dry_run=True)
    if as_json:
        echo_json(report)
        return
    click.echo(f"cache        {directory}")
    click.echo(f"size limit   {_shown(before)}; would be {_shown(size)}")
    click.echo(
        f"would evict  {evicted[0]:,} of {entries:,} entries ({format_bytes(evicted[1])}); "
        "nothing changed"
    )


def _set(store: Store, size: int, yes: bool, as_json: bool) -> None:
    from ..maintenance import inventory
    from ..storage.store import Store

    before, entries, held = store.size_limit, len(store), store.vector_bytes()
    planned = _evicted_by(store, size)
    if planned[1] * 2 > held and not yes:
        # With --json the question goes to stderr, so stdout stays one JSON document.
        click.confirm(
            f"Evict {planned[0]:,} of {entries:,} entries ({format_bytes(planned[1])} of "
            f"{format_bytes(held)}) from {store.directory} to fit {format_bytes(size)}?",
            abort=True,
            err=as_json,
        )
    with Store(store.directory, size_limit=size):
        pass  # opening a store with a limit is how the directory records it
    evicted = 0
    if size:  # evicted now, a page per transaction, as the next write would evict them
        pages = inventory.prune_pages(store, inventory.Filters(), size)
        evicted = store.delete_pages([entry.key for entry in page] for page in pages)
    freed = store.compact() if evicted else 0
    left = store.vector_bytes()
    report = _report(
        str(store.directory), size, before, entries, held, (evicted, held - left), freed,
        dry_run=False,
    )  # fmt: skip
    if as_json:
        echo_json(report)
        return
    click.echo(f"cache        {store.directory}")
    click.echo(f"size limit   {_shown(size)}; was {_shown(before)}")
    if evicted:
        click.echo(
            f"evicted      {_entries(evicted)}, the oldest ({format_bytes(held - left)} of "
            "vectors)" + (f"; {format_bytes(freed)} of disk freed" if freed else "")
        )
    click.echo(f"holds        {_entries(entries - evicted)}, {format_bytes(left)} of vectors")


def _evicted_by(store: Store, size: int) -> tuple[int, int]:
    """Entries and vector bytes a limit of ``size`` bytes (0: none) evicts now."""
    from ..maintenance import inventory

    count = total = 0
    if size:
        for page in inventory.prune_pages(store, inventory.Filters(), size):
            count += len(page)
            total += sum(entry.size for entry in page)
    return count, total


def _report(
    directory: str,
    size: int,
    before: int | None,
    entries: int,
    held: int,
    evicted: tuple[int, int],
    freed: int,
    *,
    dry_run: bool,
) -> dict[str, Any]:
    """``--json`` of a set (or its ``--dry-run``): the figures after it, and what went."""
    return {
        "directory": directory,
        "dry_run": dry_run,
        "size_limit": size or None,
        "previous_size_limit": before,
        "entries": entries - evicted[0],
        "vector_bytes": held - evicted[1],
        "evicted": evicted[0],
        "evicted_bytes": evicted[1],
        "bytes_freed": freed,
    }
