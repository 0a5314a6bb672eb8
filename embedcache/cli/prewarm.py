"""``embedcache prewarm``: fill the cache for a corpus before an experiment."""

from __future__ import annotations

import hashlib
import itertools
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click

from ..config import DEFAULT_MAX_CONCURRENCY
from ..errors import InvalidInputError
from ..upstream.limiter import Limits
from .image_sources import check_model, listed_sources, media_kind, media_windows, path_sources
from .options import (
    CliContext,
    Command,
    build_options,
    echo_json,
    json_option,
    pass_cli,
    price_option,
    request_options,
)
from .output import plural
from .progress import Pacing, Progress, StatusLine, fit_line
from .sources import FORMATS, SourceItem, Spool, read_items, within_limit
from .units import dollars, format_duration, money

if TYPE_CHECKING:
    from ..embedding.embedder import WarmReport
    from ..inputs import Input

__all__ = ["WINDOW", "Pacing", "Progress", "prewarm"]

#: Texts a prewarm reads, hashes, looks up and fills at a time (``--window``): with the
#: batches in flight, what its memory follows. 20,480 texts of 2 KB are 40 MB of text.
WINDOW = 20_480


def _windows(
    items: Iterable[SourceItem], size: int, late_chunking: bool
) -> Iterator[list[Sequence[Input]]]:
    """The texts of ``items``, ``size`` at a time, as the lists to warm: one per window, or
    under late chunking each group whole (a window takes whole groups only, so it may hold a
    group's worth more than ``size``).

    :raises InvalidInputError: when a group's lines are not consecutive (a group is known
        whole only once the next one starts: holding every group open would hold the corpus).
    """
    from ..embedding.distinct import DistinctKeys

    if not late_chunking:
        texts = (item.text for item in items)
        while window := list(itertools.islice(texts, size)):
            yield [window]
        return
    groups: list[Sequence[Input]] = []
    held = 0
    started = DistinctKeys()  # every group met so far, 16 bytes each
    current: str | None = None
    group: list[str] = []
    for item in items:
        if item.group != current or not group:
            if group:
                groups.append(group)
                held += len(group)
                if held >= size:
                    yield groups
                    groups, held = [], 0
            name = hashlib.blake2b(str(item.group).encode(), digest_size=16).digest()
            if not started.add([name])[0]:
                raise InvalidInputError(
                    f"{item.origin}: group {item.group!r} appears again after other groups; "
                    "a group's lines must be consecutive"
                )
            current, group = item.group, []
        group.append(item.text)
    if group:
        groups.append(group)
    if groups:
        yield groups


def _add(total: dict[str, int], report: WarmReport) -> None:
    for name, value in asdict(report).items():
        total[name] = total.get(name, 0) + value


@click.command(cls=Command)
@click.argument("files", nargs=-1, type=click.Path(exists=True, allow_dash=True))
@click.option(
    "--images",
    "images",
    is_flag=True,
    help="FILES are images, or folders of them (.png .jpg .jpeg .gif .webp, recursively); "
    "the model must take images (--model jina-clip-v2, say).",
)
@click.option(
    "--images-from",
    "images_from",
    multiple=True,
    metavar="LIST",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    help="A list of images, one a line: a path, a folder or an http(s) URL (- for standard "
    "input). Repeatable.",
)
@click.option(
    "--pdfs", is_flag=True, help="FILES are PDFs, or folders of them (jina-embeddings-v4)."
)
@click.option(
    "--pdfs-from",
    multiple=True,
    metavar="LIST",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    help="A list of PDFs, one a line, as --images-from.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="Input format of every file (default: by file name; standard input and other "
    "names by their first line: a JSON object is jsonl, a header naming --column csv/tsv).",
)
@click.option("--field", default="text", show_default=True, help="JSON Lines field holding text.")
@click.option("--column", default="text", show_default=True, help="CSV/TSV column holding text.")
@click.option(
    "--group-field",
    help="JSON Lines field naming each text's late-chunking group (in order); "
    "needs --late-chunking.",
)
@request_options
@click.option("--batch-size", type=click.IntRange(min=1), help="Most texts per request.")
@click.option(
    "--max-concurrency",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_CONCURRENCY,
    show_default=True,
    help="Most requests in flight.",
)
@click.option(
    "--window",
    type=click.IntRange(min=1),
    default=WINDOW,
    show_default=True,
    help="Texts (or images, up to 64 MiB of them) read, hashed, looked up and filled at a "
    "time: memory follows it, not the corpus.",
)
@click.option("--dry-run", is_flag=True, help="Read and hash only: report what would be sent.")
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress on stderr (errors and the summary remain)."
)
@price_option
@json_option
@pass_cli
@click.pass_context
def prewarm(
    ctx: click.Context,
    cli: CliContext,
    files: tuple[str, ...],
    images: bool,
    images_from: tuple[str, ...],
    pdfs: bool,
    pdfs_from: tuple[str, ...],
    fmt: str | None,
    field: str,
    column: str,
    group_field: str | None,
    model: str,
    task: str | None,
    dimensions: int | None,
    late_chunking: bool,
    truncate: bool,
    batch_size: int | None,
    max_concurrency: int,
    window: int,
    dry_run: bool,
    quiet: bool,
    price_per_million: float,
    as_json: bool,
) -> None:
    """Embed the texts (or images, PDFs) of FILES through the cache, so later runs are free.

    FILES are .txt (one text per line), .jsonl (--field), .csv/.tsv (--column), or - for
    standard input (its format told by its first line, or --format). Only texts not cached
    yet are sent. Interrupted or killed, a re-run sends only what is still missing: every
    batch is committed as it arrives. Processes prewarming one cache at once share the
    work: each reports what it fetched, and what another process stored meanwhile.

    The input is read twice, a --window of texts at a time, so memory stays bounded however
    large the corpus: first to check every line and count what is cached and what is not
    (all a --dry-run does; bad input fails here, before anything is sent), then to fetch
    what is missing. Distinct texts are counted in 16 bytes each. Under --late-chunking a
    group's lines must be consecutive.

    With --images, FILES are images or folders of them (their .png .jpg .jpeg .gif .webp
    files, recursively, in sorted order); --images-from LIST names more, a path, folder or
    http(s) URL a line (a URL is keyed as written: the API fetches it). --pdfs and
    --pdfs-from the same for PDFs. Every file is read and checked first: one that is not an
    image (or PDF), cannot be read or is over 8 MB stops the run, by name, before anything
    is sent. Tokens are estimated by 512x512 tiles.
    """
    kind = media_kind(files, images, images_from, pdfs, pdfs_from, fmt, group_field)
    if late_chunking and group_field is None and kind is None:
        raise click.UsageError("--late-chunking needs --group-field to know the groups")
    if group_field is not None and not late_chunking:
        # Groups mean nothing to a plain fill: say so rather than ignore the option.
        raise click.UsageError("--group-field names late-chunking groups: add --late-chunking")
    options = build_options(model, task, dimensions, late_chunking, truncate)
    lists = images_from or pdfs_from
    if kind is not None:
        check_model(options, kind, "--images" if kind == "image" else "--pdfs")
    noun = {None: "text", "image": "image", "pdf": "PDF"}[kind]
    spool = Spool()
    ctx.call_on_close(spool.close)
    checking = StatusLine(sys.stderr) if not quiet and sys.stderr.isatty() else None
    told: set[str] = set()

    def sniffed(name: str, kind: str) -> None:
        if kind != "txt" and name not in told and not quiet:
            told.add(name)
            if checking is not None:
                checking.clear()
            click.echo(
                f"prewarm: reading {name} as {kind} (its first line says so; --format to choose)",
                err=True,
            )

    def windows(first: bool = False) -> Iterator[list[Sequence[Input]]]:
        if kind is not None:
            sources = itertools.chain(
                path_sources(files, kind),
                *(listed_sources(path, kind, spool.rewound(path)) for path in lists),
            )
            return ([part] for part in media_windows(sources, window))
        items: Iterable[SourceItem] = (
            item
            for path in files
            for item in read_items(
                path,
                fmt=fmt,
                field=field,
                column=column,
                group_field=group_field,
                stdin=spool.rewound(path),
                on_sniffed=sniffed,
            )
        )
        if first:  # the second reading reads what the first has checked
            items = within_limit(items, options)
        return _windows(items, window, late_chunking)

    from ..embedding.distinct import DistinctKeys
    from ..embedding.embedder import WarmReport

    embedder = cli.open(batch_size=batch_size, max_concurrency=max_concurrency).embedder
    seen = DistinctKeys()
    pacing = Pacing.of(ctx)
    plan: dict[str, Any] = {}
    last_line = time.monotonic()
    for part in windows(first=True):
        for texts in part:
            _add(plan, embedder.warm(texts, options, dry_run=True, seen=seen))
        # Reading a large corpus takes minutes before anything is sent: say so.
        said = (
            f"{plan['texts']:,} {noun}s read, {plan['unique']:,} distinct, "
            f"{plan['to_fetch']:,} to fetch"
        )
        if checking is not None:
            if checking.due():
                checking.show(fit_line("prewarm: checking the input", [(0, said)], checking.width))
        elif not quiet and time.monotonic() - last_line >= pacing.line_seconds:
            last_line = time.monotonic()
            click.echo(f"prewarm (checking the input): {said}", err=True)
    if checking is not None:
        checking.clear()
    if not plan:
        _add(plan, WarmReport(0, 0, 0, 0, 0))
    del plan["tokens_spent"]  # filled in by fetching, below
    plan["inputs"] = f"{noun.lower()}s"
    plan["window"] = window
    plan["distinct_set_bytes"] = seen.nbytes
    del seen  # the fill needs no count of its own: what an earlier window stored is cached
    plan["estimated_cost_usd"] = dollars(plan["estimated_tokens"], price_per_million)
    plan["estimated_seconds"] = (
        None
        if cli.limits.unlimited
        else round(cli.limits.seconds_for(plan["estimated_requests"], plan["estimated_tokens"]), 1)
    )
    if dry_run:
        _report({**plan, "dry_run": True}, price_per_million, as_json)
        return
    start = time.monotonic()
    pace = _pace_of(cli.limits, plan)
    progress = Progress(
        plan["unique"], plan["cached"], pace, quiet=quiet, line_seconds=pacing.line_seconds,
        noun=noun,
    )  # fmt: skip
    try:
        if plan["to_fetch"]:  # a fully cached corpus needs no second reading, key or network
            for part in windows():
                for texts in part:
                    embedder.warm(
                        texts, options, on_batch=progress.advance, on_found=progress.found
                    )
    except KeyboardInterrupt:
        progress.close()
        elsewhere = (
            f" ({progress.elsewhere:,} more were stored by another process meanwhile)"
            if progress.elsewhere
            else ""
        )
        click.echo(
            f"\ninterrupted: this run committed {plural(progress.fetched, noun)}{elsewhere}; "
            "run the same command again to fetch only what is still missing",
            err=True,
        )
        ctx.exit(130)
    progress.close()
    stats = embedder.stats  # this process's own: another's requests and tokens are not ours
    result = {
        **plan,
        "dry_run": False,
        "fetched": progress.fetched,
        "filled_elsewhere": progress.elsewhere,
        "requests": stats.requests,
        "tokens_spent": stats.tokens_spent,
        "cost_usd": dollars(stats.tokens_spent, price_per_million),
        "seconds": round(time.monotonic() - start, 3),
    }
    _report(result, price_per_million, as_json)


def _pace_of(limits: Limits, plan: dict[str, Any]) -> Callable[[int], float] | None:
    """Seconds the limits need for ``n`` texts still to fetch, at the plan's average tokens
    and requests per text; ``None`` without limits."""
    if limits.unlimited or not plan["to_fetch"]:
        return None
    tokens = plan["estimated_tokens"] / plan["to_fetch"]
    requests = plan["estimated_requests"] / plan["to_fetch"]
    return lambda n: limits.pace_seconds(n * requests, n * tokens)


def _pace(result: dict[str, Any]) -> str:
    seconds = result["estimated_seconds"]
    if seconds is None:
        return "no rate limits set (--tier, --rpm, --tpm)"
    return (
        f"at least {format_duration(seconds)} at the configured limits "
        f"({plural(result['estimated_requests'], 'request')}; plus the API's own latency)"
    )


def _memory(result: dict[str, Any], noun: str) -> str:
    media = " or 64 MiB" if noun != "text" else ""
    return (
        f"windows of {plural(result['window'], noun)}{media}; distinct {noun}s counted in "
        f"{result['distinct_set_bytes'] / 2**20:,.1f} MiB (16 bytes each)"
    )


def _report(result: dict[str, Any], price: float, as_json: bool) -> None:
    if as_json:
        echo_json({**result, "price_per_million_tokens": price})
        return
    noun = {"texts": "text", "images": "image", "pdfs": "PDF"}[result["inputs"]]
    if not result["to_fetch"]:
        # Nothing to fetch is the answer: one line, not a table of zeros.
        read = f"of {result['texts']:,} read"
        if not result["unique"]:
            click.echo(f"Nothing to embed: no {noun} in the input ({read}).")
            return
        cached = (
            f"The 1 distinct {noun} ({read}) is"
            if result["unique"] == 1
            else f"All {result['unique']:,} distinct {noun}s ({read}) are"
        )
        sent = "nothing would be sent" if result["dry_run"] else "nothing sent"
        click.echo(f"{cached} cached already: {sent}.")
        return
    estimate = f"(estimate at ${price}/1M tokens)"
    rows = [
        (f"{noun}s", f"{result['texts']:,} read, {result['unique']:,} distinct"),
        ("already cached", f"{result['cached']:,}"),
    ]
    if result["dry_run"]:
        title = "Dry run: nothing sent"
        rows += [
            ("to fetch", f"{result['to_fetch']:,}"),
            ("estimated tokens", f"{result['estimated_tokens']:,}"),
            ("estimated cost", f"{money(result['estimated_cost_usd'])} {estimate}"),
            ("estimated time", _pace(result)),
            ("memory", _memory(result, noun)),
        ]
    else:
        title = "Prewarm done"
        rows.append(
            ("fetched", f"{result['fetched']:,} by this run, in "
                        f"{plural(result['requests'], 'request')}")
        )  # fmt: skip
        if result["filled_elsewhere"]:
            rows.append(
                ("stored elsewhere", f"{result['filled_elsewhere']:,} by another process "
                                     "meanwhile (not paid for by this run)")
            )  # fmt: skip
        rows += [
            ("tokens spent", f"{result['tokens_spent']:,} (reported by the API; "
                             f"{result['estimated_tokens']:,} estimated)"),
            ("cost", f"{money(result['cost_usd'])} {estimate}"),
            ("time", f"{result['seconds']:.1f} s"),
        ]  # fmt: skip
    click.echo(f"{title}:")
    for label, value in rows:
        click.echo(f"  {label:<17}{value}")
