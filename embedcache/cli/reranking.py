"""``embedcache rerank``: documents ranked for a query through the cache, as a table or JSON,
with what the cache did on stderr (the scores themselves are the caching core's,
:class:`~embedcache.embedding.reranker.Reranker`)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from ..config import DEFAULT_RERANK_MODEL
from ..errors import InvalidInputError
from ..models import check_rerank_model
from .options import CliContext, Command, echo_json, json_option, pass_cli
from .output import cut, format_table, plural, text_width
from .sources import SourceItem, argument_items, detect_format, read_items

if TYPE_CHECKING:
    from ..embedding.counters import Stats

__all__ = ["rerank", "rerank_summary"]

_HEADER = ("RANK", "INDEX", "SCORE", "DOCUMENT")
_NUMBERS = (0, 1, 2)  # the columns aligned right
# Line breaks and tabs inside a document would break the table's rows and columns.
_BREAKS = re.compile(r"[\t\n\r\v\f]+")


@click.command(cls=Command)
@click.argument("query")
@click.argument("documents", nargs=-1, metavar="[DOCUMENT...]")
@click.option(
    "--from",
    "files",
    multiple=True,
    metavar="FILE",
    help="Read more documents from FILE, one a line (blank lines skipped; a .jsonl, .csv or "
    '.tsv file\'s "text" field or column), after the arguments; - for standard input. '
    "Repeatable.",
)
@click.option(
    "--model",
    default=DEFAULT_RERANK_MODEL,
    show_default=True,
    metavar="NAME",
    help="Jina reranker: jina-reranker-v2-base-multilingual, jina-reranker-m0 or "
    "jina-colbert-v2 (cached per query and document), jina-reranker-v3 (per whole list).",
)
@click.option(
    "--top-n",
    type=click.IntRange(min=1),
    metavar="N",
    help="Show the N best documents only (all are scored and cached; default: all).",
)
@click.option("--offline", is_flag=True, help="Fail on misses instead of fetching them.")
@json_option
@pass_cli
def rerank(
    cli: CliContext,
    query: str,
    documents: tuple[str, ...],
    files: tuple[str, ...],
    model: str,
    top_n: int | None,
    offline: bool,
    as_json: bool,
) -> None:
    """Rank each DOCUMENT by its relevance to QUERY, best first, fetching the scores not
    cached (unless --offline): a table of rank, index (the document's position, from 0),
    score and document, cut to the terminal's width, or with --json one array of {"index",
    "score", "document"}, the scores exactly as the API sent them.

    `-` reads documents from standard input, one a line. Without --json, stderr says what
    the cache did: `3 of 5 scores cached, 2 fetched in 1 request, 41 tokens`.

    \b
    embedcache rerank "what is milvus?" "Milvus is a vector database." "Paris is in France."
    embedcache rerank "what is milvus?" --from candidates.txt --top-n 3
    """
    from ..embedding.reranker import ranked

    try:  # before anything is read or sent, in the flag's terms
        check_rerank_model(model)
    except InvalidInputError as exc:
        raise InvalidInputError(f"--model: {exc}") from None
    given = [item.text for item in _documents(documents, files)]
    result = cli.open(offline=offline).reranker.rerank(query, given, model)
    assert result is not None  # only a cached_only call comes back empty-handed
    scores = result.scores
    order = ranked(scores, top_n)
    if as_json:  # one document on stdout and nothing on stderr, as every --json command
        echo_json([{"index": i, "score": scores[i], "document": given[i]} for i in order])
        return
    click.echo(rerank_summary(result.stats, len(given)), err=True)
    # repr: the shortest digits that read back as the same float64, the API's own text.
    rows = [(str(rank), str(i), repr(scores[i]), given[i]) for rank, i in enumerate(order, 1)]
    for line in _table(rows, shutil.get_terminal_size((0, 0)).columns):
        click.echo(line)


def _documents(arguments: tuple[str, ...], files: tuple[str, ...]) -> list[SourceItem]:
    """The documents of the arguments, then of each ``--from`` file, in that order (the
    order ``index`` counts in)."""
    if [*arguments, *files].count("-") > 1:
        raise click.UsageError("give - (standard input) once")
    items = argument_items(arguments, "DOCUMENT")
    for path in files:
        # The format by the file's name only (a .txt or an unknown name is a document a
        # line): a first line that happens to look like JSON must not change what is read.
        kind = detect_format(path) or "txt"
        items += read_items(path, fmt=kind)
    if not items:
        raise click.UsageError(
            "no documents to rerank: give them as arguments, - for standard input, or --from FILE"
        )
    return items


def rerank_summary(stats: Stats, documents: int) -> str:
    """What the cache did for one rerank, in a line: ``3 of 5 scores cached, 2 fetched in 1
    request, 41 tokens``. Counts are of distinct entries (a repeated document is one)."""
    cached = stats.hits + stats.coalesced
    total = cached + stats.misses
    line = f"{cached:,} of {plural(total, 'score')} cached"
    if total != documents:
        line += f" ({documents:,} documents, {total:,} distinct)"
    if stats.requests:
        return (
            f"{line}, {stats.misses:,} fetched in {plural(stats.requests, 'request')}, "
            f"{plural(stats.tokens_spent, 'token')}"
        )
    return f"{line}; nothing sent upstream (~{plural(round(stats.tokens_saved), 'token')} saved)"


def _table(rows: Sequence[tuple[str, str, str, str]], columns: int) -> list[str]:
    """The ranked rows under :data:`_HEADER`, each document on one line, cut with ``…`` to
    fit ``columns`` characters (0: a terminal of unknown width, nothing cut)."""
    shown = [(rank, index, score, _BREAKS.sub(" ", text)) for rank, index, score, text in rows]
    if columns > 0:
        # Everything but the document is as wide as its widest cell plus two spaces.
        before = sum(max(text_width(row[i]) for row in [_HEADER, *shown]) + 2 for i in range(3))
        room = max(columns - before, text_width(_HEADER[3]))
        shown = [(*row[:3], cut(row[3], room)) for row in shown]
    return format_table(_HEADER, shown, right=_NUMBERS)
