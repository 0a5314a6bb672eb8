"""``embedcache analyze``: the waste and savings in request logs and captured request bodies.

The files are read here (plain or gzip, ``-`` for standard input, one JSON object a line);
the figures are :mod:`embedcache.maintenance.analysis`'s.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any, cast

import click

from ..config import DEFAULT_RERANK_MODEL, upstream_id
from ..errors import InvalidInputError
from .options import GLOBAL_OPTION_NAMES, Command, echo_json, json_option, price_option
from .output import format_table, plural
from .units import dollars, money

__all__ = ["analyze"]

_GZIP_MAGIC = b"\x1f\x8b"
# analyze reads only the files it is given: no cache, no API, no Redis.
_IGNORED = dict.fromkeys(
    GLOBAL_OPTION_NAMES, "it reads only the files it is given (--upstream: the upstream to key as)"
)


def read_lines(path: str) -> Iterator[tuple[str, int, bytes]]:
    """``(file name, line number, line)`` for every non-blank line of ``path`` (``-``: stdin),
    gunzipped when it starts as gzip does, whatever its name.

    :raises InvalidInputError: a gzip file that is damaged or cut short, naming it.
    """
    name = "<stdin>" if path == "-" else path
    raw: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    try:
        # A buffered reader's peek() keeps the magic bytes for the reader below: standard
        # input cannot seek back.
        buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(cast(Any, raw))
        handle: Iterable[bytes] = buffered
        if buffered.peek(2)[:2] == _GZIP_MAGIC:
            handle = gzip.GzipFile(fileobj=buffered, mode="rb")
        number = 0
        try:
            for number, line in enumerate(handle, 1):  # number names the damage
                if line.strip():
                    yield name, number, line
        except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
            raise InvalidInputError(
                f"{name}: unreadable gzip after line {number} ({exc})"
            ) from None
    finally:
        if raw is not sys.stdin.buffer:
            raw.close()


EXAMPLE = """\b
Examples:
  embedcache analyze requests.log requests.log.1.gz
  embedcache analyze --json captured-bodies.jsonl
  zcat old.log.gz | embedcache analyze - --price-per-million 0.02
"""


@click.command(cls=Command, ignores=_IGNORED, epilog=EXAMPLE)
@click.argument("logs", metavar="LOG...", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, allow_dash=True))  # fmt: skip
@click.option(
    "--upstream",
    metavar="URL",
    default="https://api.jina.ai",
    show_default=True,
    help="Key request bodies as the cache keys this upstream's answers.",
)
@click.option(
    "--rerank-model",
    metavar="NAME",
    default=DEFAULT_RERANK_MODEL,
    show_default=True,
    help="The model of rerank bodies that name no Jina reranker (TEI's, vLLM's), as "
    "`serve --rerank-model`.",
)
@price_option
@json_option
def analyze(
    logs: tuple[str, ...], upstream: str, rerank_model: str, price_per_million: float,
    as_json: bool,
) -> None:  # fmt: skip
    """What request logs (`serve --request-log`) or captured request bodies (one
    /v1/embeddings or rerank body a line, in any dialect the proxy speaks) say about waste
    and savings: repeat rate, tokens and dollars spent vs saved, what the cache could still
    save, the most repeated request settings, per kind (embeddings, rerank), key and model.

    A body's texts (a rerank body's documents) are keyed as the cache keys them, across all
    the files: one seen before is one the cache would have served (tokens are estimated, as
    `prewarm --dry-run` does). Gzip files are read as such; - reads standard input. A
    malformed line is skipped, counted and reported once.
    """
    from ..maintenance.analysis import Analysis

    analysis = Analysis(upstream_id(upstream), rerank_model)
    malformed = 0
    first_bad = ""
    for path in logs:
        for name, number, line in read_lines(path):
            try:
                analysis.add(json.loads(line))
            except ValueError as exc:  # bad JSON or UTF-8, or a line neither kind (ours)
                reason = str(exc) if isinstance(exc, InvalidInputError) else "not JSON"
                malformed += 1
                first_bad = first_bad or f"{name}:{number}: {reason}"
    if analysis.log_lines + analysis.body_lines == 0:
        if first_bad:
            raise click.ClickException(f"no line could be read; the first malformed: {first_bad}")
        shown = ", ".join("<stdin>" if log == "-" else log for log in logs)
        raise click.ClickException(f"no line could be read: {shown} holds no JSON lines")
    if malformed:
        click.echo(
            f"Warning: skipped {plural(malformed, 'malformed line')} (the first at {first_bad})",
            err=True,
        )
    report = analysis.report(functools.partial(_dollars, price=price_per_million))
    report["malformed_lines"] = malformed
    report["price_per_million_tokens"] = price_per_million
    if as_json:
        echo_json(report)
    else:
        click.echo("\n".join(_text(report)))


def _dollars(tokens: float, price: float) -> float:
    return dollars(tokens, price)


def _could_why(could: dict[str, Any]) -> str:
    """Where the texts the cache could still save come from, in words."""
    parts = []
    asked, fetched = could["asked_again"]["texts"], could["fetched_again"]["texts"]
    if asked or not fetched:
        parts.append(f"{plural(asked, 'text')} fetched once and asked for again later")
    if fetched:
        parts.append(f"{plural(fetched, 'text')} fetched again (the cache had not kept them)")
    return "; ".join(parts)


def _text(report: dict[str, Any]) -> list[str]:
    """The report as a person reads it: the totals, then one table per breakdown."""
    could = report["could_still_save"]
    could_text = (
        "unknown (this request log has no request digests; analyze captured bodies to tell)"
        if could is None
        else f"{could['tokens']:,} tokens ({money(could['usd'])}): " + _could_why(could)
    )
    price = f"at ${report['price_per_million_tokens']:g}/1M tokens"
    lines = format_table(
        ["", ""],
        [
            ["lines", f"{report['log_lines']:,} log, {report['body_lines']:,} body, "
                      f"{report['malformed_lines']:,} malformed"],
            ["requests", f"{report['requests']:,} ({report['refused']:,} refused, "
                         f"{report['uncacheable']:,} uncacheable)"],
            ["texts", f"{report['texts']:,}"],
            ["repeat rate", f"{report['repeat_rate']:.1%} ({report['hits']:,} served from "
                            f"cache, {report['misses']:,} fetched)"],
            ["spent", f"{report['tokens_spent']:,} tokens ({money(report['usd_spent'])} {price})"],
            ["saved", f"{report['tokens_saved']:,} tokens ({money(report['usd_saved'])})"],
            ["could still save", could_text],
        ],
    )[1:]  # fmt: skip
    breakdowns = [
        ("Top repeated request settings", "model / task / dimensions", report["top_settings"]),
        ("Per key", "key", report["by_key"]),
        ("Per model", "model", report["by_model"]),
    ]
    if len(report["by_kind"]) > 1:  # embeddings and reranks: a rerank's texts are documents
        breakdowns.insert(0, ("Per kind", "kind", report["by_kind"]))
    for title, column, rows in breakdowns:
        lines += ["", title]
        lines += format_table(
            [column, "requests", "texts", "repeat", "spent", "saved", "saved $"],
            [[_label(row, column), f"{row['requests']:,}", f"{row['texts']:,}",
              f"{row['repeat_rate']:.1%}", f"{row['tokens_spent']:,}",
              f"{row['tokens_saved']:,}", money(row["usd_saved"])] for row in rows],
            right=range(1, 7),
        )  # fmt: skip
    return lines


def _label(row: dict[str, Any], column: str) -> str:
    if column == "kind":
        return "rerank (documents)" if row["kind"] == "rerank" else row["kind"]
    if column == "key":
        return row["key"] or "(none)"
    if column == "model":
        return row["model"] or "(none)"
    return " / ".join(
        "-" if row[f] is None else str(row[f]) for f in ("model", "task", "dimensions")
    )
