"""Commands that look into and look after a cache: stats, inspect, get, export, prune,
clear, verify (``ls`` is in :mod:`.listing`). With a Redis URL, ``stats`` and ``verify``
cover the shared tier too (and fail with a one-line error when it cannot be reached); the
others are about local disk only."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ..maintenance.export_kinds import KINDS
from .options import (
    LOCAL_ONLY,
    NO_UPSTREAM,
    SENDS_NOTHING,
    CliContext,
    Command,
    build_filters,
    build_options,
    echo_json,
    filter_options,
    json_option,
    pass_cli,
    price_option,
    request_options,
)
from .output import confirm, plural, yes_option
from .sources import argument_items, within_limit
from .units import dollars, format_bytes, money, parse_duration, parse_size

__all__ = ["clear", "export", "get", "prune", "stats", "verify"]

# The global options each command has no use for (hidden from its --help, refused after
# its name; see options.Command).
_DISK_ONLY = {**SENDS_NOTHING, **LOCAL_ONLY}
_NO_API = {**SENDS_NOTHING, **NO_UPSTREAM}


def _entries(count: int) -> str:
    return plural(count, "entry", "entries")


@click.command(cls=Command, ignores={**SENDS_NOTHING, **NO_UPSTREAM})
@price_option
@json_option
@pass_cli
def stats(cli: CliContext, price_per_million: float, as_json: bool) -> None:
    """Entries, size, breakdown by model/task/dimensions, and lifetime savings; with a Redis
    URL, also the shared tier's entries and size. Reads the index only, so it is quick on
    any size of cache; `embedcache verify` reads and checks every vector."""
    from ..maintenance import inventory

    parts = cli.open(existing=True, shared_strict=True)
    summary = inventory.summarize(parts.store)
    shared = parts.shared
    tier: dict[str, Any] | None = None
    if shared is not None:
        usage = shared.usage()
        tier = {"location": shared.location, "prefix": shared.prefix,
                "entries": usage.entries, "bytes": usage.bytes}  # fmt: skip
    counters = summary.counters
    saved_usd = dollars(counters["tokens_saved"], price_per_million)
    groups = sorted(summary.groups.items(), key=str)
    if as_json:
        echo_json(
            {
                "directory": summary.directory,
                "entries": summary.entries,
                "bytes_on_disk": summary.bytes_on_disk,
                "size_limit": summary.size_limit,
                "groups": [
                    {
                        "model": g.model,
                        "task": g.task,
                        "dimensions": g.dimensions,
                        "upstream": g.upstream,
                        "input": g.input,
                        "output": g.output,
                        "entries": int(n),
                        "tokens": tok,
                        # A payload's group says its kind; a vector's stays as it was.
                        **({"kind": g.kind} if g.kind != "vector" else {}),
                    }
                    for g, (n, tok) in groups
                ],
                "lifetime": counters,
                "estimated_usd_saved": saved_usd,
                "price_per_million_tokens": price_per_million,
                "shared": tier,
            }
        )
        return
    limit = format_bytes(summary.size_limit) if summary.size_limit else "none (never evicts)"
    click.echo(f"cache        {summary.directory}")
    click.echo(f"entries      {summary.entries:,}")
    click.echo(f"on disk      {format_bytes(summary.bytes_on_disk)}")
    click.echo(f"size limit   {limit}")
    if tier is not None:
        click.echo(f"shared       {tier['location']} (prefix {tier['prefix']})")
        click.echo(f"shared size  {_entries(tier['entries'])}, {format_bytes(tier['bytes'])}")
    if groups:
        # Only entries that are not a text's float vector say what they are made from and
        # hold: a cache of those alone keeps its narrower lines.
        said = any((g.input, g.output) != ("text", "float") for g, _ in groups)
        kinds = " [input output]" if said else ""
        click.echo(f"\n  entries  model / task / dimensions{kinds}  (from upstream)")
        for g, (count, _) in groups:
            shown = f"{g.dimensions} {g.input} {g.output}" if said else str(g.dimensions)
            click.echo(f"  {int(count):>7,}  {g.model} / {g.task or '-'} / {shown}  ({g.upstream})")
    click.echo(
        f"\nlifetime     {plural(counters['hits'], 'hit')}, "
        f"{plural(counters['misses'], 'miss')}, {plural(counters['requests'], 'request')}"
    )
    click.echo(
        f"tokens       {counters['tokens_spent']:,} spent, {counters['tokens_saved']:,} saved "
        f"(saved is an estimate: ~{money(saved_usd)} at ${price_per_million:g}/1M tokens)"
    )


@click.command(cls=Command)
@click.argument("texts", nargs=-1, required=True, metavar="TEXT... | -")
@request_options
@click.option("--offline", is_flag=True, help="Fail on misses instead of fetching them.")
@click.option(
    "--npy", type=click.Path(dir_okay=False, path_type=Path), help="Write an .npy file instead."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON array of those objects instead of a line each (with --npy: an "
    "object naming the file and its shape).",
)
@pass_cli
def get(
    cli: CliContext,
    texts: tuple[str, ...],
    model: str,
    task: str,
    dimensions: int | None,
    late_chunking: bool,
    truncate: bool,
    offline: bool,
    npy: Path | None,
    as_json: bool,
) -> None:
    """Print the vector of each TEXT, one JSON object per line ({"text", "embedding"}) in
    the order given, fetching misses (unless --offline).

    `-` reads the texts from standard input, one per line (blank lines skipped):
    `cut -f2 queries.tsv | embedcache get - --task retrieval.query`.
    """
    import numpy as np

    options = build_options(model, task, dimensions, late_chunking, truncate)
    # Checked here by argument and line: the caching core would name a Python parameter.
    given = [item.text for item in within_limit(argument_items(texts, "TEXT"), options)]
    vectors = cli.open(offline=offline).embedder.embed(given, options)
    if npy is not None:
        np.save(npy, vectors)
        rows, dims = vectors.shape
        if as_json:
            echo_json({"files": [str(npy)], "rows": rows, "dimensions": dims})
        else:
            click.echo(f"wrote {rows} x {dims} float32 to {npy}")
        return
    answers = [
        {"text": text, "embedding": vector.tolist()}
        for text, vector in zip(given, vectors, strict=True)
    ]
    if as_json:
        echo_json(answers, compact=True)  # vectors are long: one line, not one per number
        return
    # One compact line per text: vectors are long, and JSON Lines stream well into tools.
    for row in answers:
        echo_json(row, compact=True)


@click.command(cls=Command, ignores={**_DISK_ONLY, **NO_UPSTREAM})
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output path without suffix: writes OUT.npy and OUT.jsonl.",
)
@filter_options
@click.option(
    "--kind",
    type=click.Choice(list(KINDS)),
    help="Only entries of this kind: float vectors, multi-vector (v4's return_multivector, "
    "ColBERT), packed bits (binary int8, ubinary uint8), multi-vector packed bits, or "
    "rerank scores.",
)
@click.option("--parquet", is_flag=True, help="Also write OUT.parquet (needs pyarrow).")
@click.option("--vectors-only", is_flag=True, help="The same as --kind float.")
@json_option
@pass_cli
def export(
    cli: CliContext,
    out: Path,
    model: str | None,
    task: str | None,
    dimensions: int | None,
    since: str | None,
    upstream: str | None,
    kind: str | None,
    parquet: bool,
    vectors_only: bool,
    as_json: bool,
) -> None:
    """Write the selected entries to OUT.npy with their keys and metadata, row for row, in
    OUT.jsonl (and both in OUT.parquet). One export holds one kind and size of entry: --kind
    and --dimensions (a multi-vector's row width; packed bits in bits) pick it. Each kind is
    written exactly as cached:

    \b
    float           OUT.npy: one float32 row an entry (entries x dimensions)
    binary/ubinary  OUT.npy: one row of packed bits an entry, int8/uint8
                    (entries x dimensions/8)
    multi-vector    OUT.npy: every entry's rows stacked (total rows x width,
                    float32; int8/uint8 for multi-vector-binary/-ubinary);
                    each OUT.jsonl line says where its rows are: "row" (the
                    first) and "rows" (how many)
    score           OUT.npy: one float64 a rerank score (entries x 1)

    OUT.parquet has a column for each metadata field and the data: "embedding" (one row's
    values), or "embeddings" (multi-vector: a list of rows).
    """
    from ..maintenance import exporting

    if vectors_only:
        if kind not in (None, "float"):
            raise click.UsageError(f"--vectors-only is --kind float: give one, not --kind {kind}")
        kind = "float"
    filters = build_filters(model, task, dimensions, since, upstream=upstream)
    store = cli.open(existing=True).store
    written = exporting.export(store, filters, out, kind=kind, parquet=parquet)
    if as_json:
        echo_json({"files": [str(p) for p in written]})
    else:
        click.echo("wrote " + ", ".join(str(p) for p in written))


@click.command(cls=Command, ignores={**_DISK_ONLY, **NO_UPSTREAM})
@filter_options
@click.option("--older-than", help="Only entries stored longer ago than this: 30d, 12h, 2w.")
@click.option(
    "--max-size",
    metavar="SIZE",
    callback=lambda _ctx, _param, value: parse_size(value),  # a bad size is bad usage
    help="Remove the oldest (matching) entries until the rest's vectors fit, counted as a "
    "size limit counts them (4 bytes per dimension). With a unit: 2GB, 512MiB.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@yes_option
@json_option
@pass_cli
def prune(
    cli: CliContext,
    model: str | None,
    task: str | None,
    dimensions: int | None,
    since: str | None,
    upstream: str | None,
    older_than: str | None,
    max_size: int | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Remove entries by model/task/dimensions/age, or down to a size.

    Asks first when that is more than half of the cache's entries (refused without a
    terminal to ask on): --yes to go ahead, --dry-run to see how many.
    """
    from ..maintenance import inventory

    if max_size is None and not any((model, task, dimensions, since, upstream, older_than)):
        raise click.UsageError("say what to prune (filters, --older-than or --max-size)")
    age = parse_duration(older_than)
    filters = build_filters(
        model,
        task,
        dimensions,
        since,
        before=None if age is None else time.time() - age,
        upstream=upstream,
    )
    limit = max_size
    store = cli.open(existing=True).store
    if not dry_run and not yes:
        # Counted from the index first (no vector read): a mistyped filter or size must not
        # empty a cache unasked.
        planned = sum(len(page) for page in inventory.prune_pages(store, filters, limit))
        total = len(store)
        if planned * 2 > total:
            confirm(
                f"remove {planned:,} of the {total:,} entries in {store.directory}", err=as_json
            )
    selected = size = removed = freed = 0

    def chosen() -> Iterator[list[bytes]]:
        # A page at a time, each deleted before the next is chosen: memory and each write
        # transaction stay bounded on a cache of any size.
        nonlocal selected, size
        for page in inventory.prune_pages(store, filters, limit):
            selected += len(page)
            size += sum(entry.size for entry in page)
            yield [entry.key for entry in page]

    if dry_run:
        collections.deque(chosen(), maxlen=0)
    else:
        removed = store.delete_pages(chosen())
        # Deleting leaves dead rows in the segment files; give mostly-dead files back.
        freed = store.compact()
    if as_json:
        echo_json(
            {"dry_run": dry_run, "selected": selected, "removed": removed, "bytes": size,
             "bytes_freed": freed}
        )  # fmt: skip
    elif dry_run:
        click.echo(f"would remove {_entries(selected)} (~{format_bytes(size)}); nothing removed")
    else:
        click.echo(
            f"removed {_entries(removed)} (~{format_bytes(size)}); "
            f"{format_bytes(freed)} of disk freed"
        )


@click.command(cls=Command, ignores={**_DISK_ONLY, **_NO_API})
@yes_option
@json_option
@pass_cli
def clear(cli: CliContext, yes: bool, as_json: bool) -> None:
    """Remove every entry (lifetime counters are kept).

    Asks first (refused without a terminal to ask on): --yes to go ahead.
    """
    store = cli.open().store
    count = len(store)
    if not yes:
        # With --json the question goes to stderr, so stdout stays one JSON object.
        confirm(f"remove all {count:,} entries from {store.directory}", err=as_json)
    removed = store.clear()
    if as_json:
        echo_json({"directory": str(store.directory), "removed": removed})
    else:
        click.echo(f"removed {_entries(removed)}")


@click.command(cls=Command, ignores=_NO_API)
@click.option("--repair", is_flag=True, help="Remove the bad entries found (they refetch).")
@json_option
@pass_cli
@click.pass_context
def verify(ctx: click.Context, cli: CliContext, repair: bool, as_json: bool) -> None:
    """Check every entry decodes, matches its checksum, format and recorded settings; with a
    Redis URL, also every entry of the shared tier (header, length, checksum, dimensions).

    Exits 1 when bad entries remain.
    """
    from ..maintenance import inventory
    from ..maintenance.sharing import verify_shared

    parts = cli.open(existing=True, shared_strict=True)
    store, shared = parts.store, parts.shared
    report = inventory.verify(store)
    remote = verify_shared(shared) if shared is not None else None
    removed = removed_shared = 0
    if repair:
        removed = store.delete_many([bytes.fromhex(k) for k, _ in report.bad])
        store.compact()
        if shared is not None and remote is not None:
            removed_shared = shared.delete_many([bytes.fromhex(k) for k, _ in remote.bad])
    if as_json:
        echo_json(
            {
                "checked": report.checked,
                "bad": [{"key": k, "reason": r} for k, r in report.bad],
                "removed": removed,
                "shared": None
                if remote is None
                else {
                    "location": remote.location,
                    "prefix": remote.prefix,
                    "checked": remote.checked,
                    "bad": [{"key": k, "reason": r} for k, r in remote.bad],
                    "removed": removed_shared,
                    "unrecorded_settings": remote.unrecorded,
                },
            }
        )
    else:
        for key, reason in report.bad:
            click.echo(f"bad {key}: {reason}")
        click.echo(
            f"checked {_entries(report.checked)}: {len(report.bad):,} bad"
            + (f", {removed:,} removed" if repair else "")
        )
        if remote is not None:
            for key, reason in remote.bad:
                click.echo(f"bad shared {key}: {reason}")
            click.echo(
                f"checked {remote.checked:,} shared entries at {remote.location} (prefix "
                f"{remote.prefix}): {len(remote.bad):,} bad"
                + (f", {removed_shared:,} removed" if repair else "")
                + (f"; {remote.unrecorded:,} with unrecorded request settings (kept)"
                   if remote.unrecorded else "")
            )  # fmt: skip
    if (report.bad or (remote is not None and remote.bad)) and not repair:
        ctx.exit(1)
