"""``embedcache prewarm``: fill the cache for a corpus before an experiment."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TextIO, cast

import click

from ..config import DEFAULT_MAX_CONCURRENCY
from ..errors import InvalidInputError
from ..upstream.limiter import Limits
from .options import (
    CliContext,
    Command,
    build_options,
    dollars,
    echo_json,
    format_duration,
    json_option,
    pass_cli,
    price_option,
    request_options,
)
from .sources import FORMATS, SourceItem, read_items

if TYPE_CHECKING:
    from ..embedding.embedder import WarmReport

__all__ = ["WINDOW", "prewarm"]

_LINE_INTERVAL_SECONDS = 5.0
#: Texts a prewarm reads, hashes, looks up and fills at a time (``--window``): with the
#: batches in flight, what its memory follows. 20,480 texts of 2 KB are 40 MB of text.
WINDOW = 20_480


class Progress:
    """Progress over distinct texts: a bar on a terminal, a plain line every few seconds
    otherwise. Written to stderr so ``--json`` output stays clean.

    :param pace: seconds the rate limits need for a number of texts still to fetch; when
        given, the ETA follows it (a paced fill's early burst would mislead a rate-based one).
    """

    def __init__(self, total: int, cached: int, pace: Callable[[int], float] | None = None) -> None:
        self.total, self.cached = total, cached
        self.pace = pace
        self.fetched = self.tokens = 0
        self.start = self.last_line = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        if self.tty:
            self.bar = click.progressbar(
                length=total, label="prewarm", file=sys.stderr, show_pos=True,
                show_eta=pace is None, item_show_func=lambda _: self.describe(),
            )  # fmt: skip
            self.bar.__enter__()
            self.bar.update(cached)

    def describe(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.fetched / elapsed
        text = (
            f"{self.cached:,} hits, {self.fetched:,} fetched, {self.tokens:,} tokens, "
            f"{rate:,.0f} texts/s"
        )
        if self.pace is not None:
            text += f", ETA {format_duration(self.eta())} at the rate limits"
        return text

    def eta(self) -> float:
        remaining = self.total - self.cached - self.fetched
        if self.pace is not None:
            return self.pace(remaining)
        rate = self.fetched / max(time.monotonic() - self.start, 1e-9)
        return remaining / rate if rate else float("nan")

    def advance(self, texts: int, tokens: int) -> None:
        self.fetched += texts
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(texts)
        elif time.monotonic() - self.last_line >= _LINE_INTERVAL_SECONDS:
            self.line()

    def line(self) -> None:
        self.last_line = time.monotonic()
        done = self.cached + self.fetched
        eta = "" if self.pace is not None else f", ETA {self.eta():,.0f}s"
        click.echo(
            f"prewarm: {done:,}/{self.total:,} texts ({done / max(self.total, 1):.0%}), "
            f"{self.describe()}{eta}",
            err=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


class _Spool:
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


def _windows(
    items: Iterable[SourceItem], size: int, late_chunking: bool
) -> Iterator[list[list[str]]]:
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
    groups: list[list[str]] = []
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
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, allow_dash=True)
)
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), help="Input format (default: by file name)."
)
@click.option("--field", default="text", show_default=True, help="JSON Lines field holding text.")
@click.option("--column", default="text", show_default=True, help="CSV/TSV column holding text.")
@click.option(
    "--group-field", help="JSON Lines field naming each text's late-chunking group (in order)."
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
    help="Texts read, hashed, looked up and filled at a time: memory follows it, not the corpus.",
)
@click.option("--dry-run", is_flag=True, help="Read and hash only: report what would be sent.")
@price_option
@json_option
@pass_cli
@click.pass_context
def prewarm(
    ctx: click.Context,
    cli: CliContext,
    files: tuple[str, ...],
    fmt: str | None,
    field: str,
    column: str,
    group_field: str | None,
    model: str,
    task: str,
    dimensions: int | None,
    late_chunking: bool,
    truncate: bool,
    batch_size: int | None,
    max_concurrency: int,
    window: int,
    dry_run: bool,
    price_per_million: float,
    as_json: bool,
) -> None:
    """Embed the texts of FILES through the cache, so later runs are free.

    FILES are .txt (one text per line), .jsonl (--field), .csv/.tsv (--column), or - for
    standard input. Only texts not cached yet are sent. Interrupted or killed, a re-run sends
    only what is still missing: every batch is committed as it arrives.

    The input is read twice, a --window of texts at a time, so memory stays bounded however
    large the corpus: first to check every line and count what is cached and what is not
    (all a --dry-run does; bad input fails here, before anything is sent), then to fetch
    what is missing. Distinct texts are counted in 16 bytes each. Under --late-chunking a
    group's lines must be consecutive.
    """
    if late_chunking and group_field is None:
        raise click.UsageError("--late-chunking needs --group-field to know the groups")
    options = build_options(model, task, dimensions, late_chunking, truncate)
    spool = _Spool()
    ctx.call_on_close(spool.close)

    def windows() -> Iterator[list[list[str]]]:
        items = (
            item
            for path in files
            for item in read_items(
                path,
                fmt=fmt,
                field=field,
                column=column,
                group_field=group_field,
                stdin=spool.rewound(path),
            )
        )
        return _windows(items, window, late_chunking)

    from ..embedding.distinct import DistinctKeys
    from ..embedding.embedder import WarmReport

    embedder = cli.open(batch_size=batch_size, max_concurrency=max_concurrency).embedder
    seen = DistinctKeys()
    plan: dict[str, Any] = {}
    last_line = time.monotonic()
    for part in windows():
        for texts in part:
            _add(plan, embedder.warm(texts, options, dry_run=True, seen=seen))
        if time.monotonic() - last_line >= _LINE_INTERVAL_SECONDS:
            # Reading a large corpus takes minutes before anything is sent: say so.
            last_line = time.monotonic()
            click.echo(
                f"prewarm (checking the input): {plan['texts']:,} texts read, "
                f"{plan['unique']:,} distinct, {plan['to_fetch']:,} to fetch",
                err=True,
            )
    if not plan:
        _add(plan, WarmReport(0, 0, 0, 0, 0))
    del plan["tokens_spent"]  # filled in by fetching, below
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
    progress = Progress(plan["unique"], plan["cached"], _pace_of(cli.limits, plan))
    try:
        if plan["to_fetch"]:  # a fully cached corpus needs no second reading, key or network
            for part in windows():
                for texts in part:
                    embedder.warm(texts, options, on_batch=progress.advance)
    except KeyboardInterrupt:
        progress.close()
        click.echo(
            f"\ninterrupted: {progress.fetched:,} texts were committed; run the same command "
            "again to fetch only what is still missing",
            err=True,
        )
        ctx.exit(130)
    progress.close()
    stats = embedder.stats
    result = {
        **plan,
        "dry_run": False,
        "fetched": progress.fetched,
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
        f"({result['estimated_requests']:,} requests; plus the API's own latency)"
    )


def _memory(result: dict[str, Any]) -> str:
    return (
        f"windows of {result['window']:,} texts; distinct texts counted in "
        f"{result['distinct_set_bytes'] / 2**20:,.1f} MiB (16 bytes each)"
    )


def _report(result: dict[str, Any], price: float, as_json: bool) -> None:
    if as_json:
        echo_json({**result, "price_per_million_tokens": price})
        return
    title = "Dry run: nothing sent" if result["dry_run"] else "Prewarm done"
    rows = [
        ("texts", f"{result['texts']:,}"),
        ("distinct texts", f"{result['unique']:,}"),
        ("already cached", f"{result['cached']:,}"),
        ("to fetch", f"{result['to_fetch']:,}"),
        ("estimated tokens", f"{result['estimated_tokens']:,}"),
        ("estimated cost", f"${result['estimated_cost_usd']:.4f} (estimate at ${price}/1M tokens)"),
        ("estimated time", _pace(result)),
        ("memory", _memory(result)),
    ]
    if not result["dry_run"]:
        rows += [
            ("fetched", f"{result['fetched']:,}"),
            ("requests", f"{result['requests']:,}"),
            ("tokens spent", f"{result['tokens_spent']:,} (reported by the API)"),
            ("cost", f"${result['cost_usd']:.4f} (estimate at ${price}/1M tokens)"),
            ("time", f"{result['seconds']:.1f} s"),
        ]
    click.echo(f"{title}:")
    for label, value in rows:
        click.echo(f"  {label:<17}{value}")
