"""``embedcache demo``: the offline tour against the bundled emulator (embedding, then
reranking, each twice); ``--milvus`` runs the Milvus page's example on Milvus Lite
(:mod:`.demo_milvus`)."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..config import DEFAULT_MODEL, DEFAULT_RERANK_MODEL
from .options import (
    GLOBAL_OPTION_NAMES,
    CliContext,
    Command,
    echo_json,
    json_option,
    pass_cli,
)
from .output import plural

if TYPE_CHECKING:
    import numpy as np

    from ..embedding.counters import Stats
    from ..testing import JinaEmulator
    from ..testing.faults import RecordedRequest
    from .demo_milvus import QueryResult

__all__ = ["DEMO_API_KEY", "demo"]

DEMO_DOCUMENTS = [
    "Milvus is an open-source vector database built for similarity search.",
    "Late chunking embeds a whole document first and pools each chunk afterwards.",
    "A content-addressed cache keys every vector by a hash of its request and text.",
    "Re-running a retrieval experiment should not pay for the same embeddings twice.",
    "Matryoshka embeddings can be truncated to fewer dimensions and still work.",
    "Milvus is an open-source vector database built for similarity search.",
    "Ein Satz auf Deutsch, damit nicht alles Englisch ist.",
    "埋め込みベクトルはディスクにキャッシュされます。",
]
#: The reranking step's query, over the first few distinct documents.
DEMO_QUERY = "Which database is built for similarity search?"
_RERANKED = 4
# Not a real key: the emulator accepts only this one, and it proves keys stay off disk.
DEMO_API_KEY = "jina_demo_key_for_the_bundled_emulator_only"
#: The upstream the demo's entries are cached as: the bundled emulator, whatever its port.
DEMO_UPSTREAM = "embedcache-emulator"
#: Seconds each emulator request takes, about what a small request to the real API does, so
#: the timings show what the cache saves (the emulator alone answers in a millisecond).
DEMO_LATENCY = 0.2
# The demo runs its own emulator with a cache of its own: of the global options it uses
# --cache-dir only (hidden from its --help and refused after its name, options.Command).
_IGNORED = {
    name: "the demo runs against its bundled emulator, on local disk, unpaced"
    for name in GLOBAL_OPTION_NAMES
    if name != "cache_dir"
}
_NEXT_STEP = """\
Next, the real API: get a key at https://jina.ai/embeddings, then
    export JINAAI_API_KEY=jina_...
and in Python (the cache is your user cache directory; `embedcache stats` shows it):
    from embedcache import JinaEmbeddingFunction
    ef = JinaEmbeddingFunction("jina-embeddings-v3")
    vectors = ef.encode_documents(["Milvus is a vector database."])
or `embedcache get "Milvus is a vector database."`; to rerank, JinaRerankFunction or
`embedcache rerank QUERY DOCUMENT...`. The README has the proxy, LangChain, LlamaIndex
and Milvus."""


@dataclass
class _Sent:
    """What one pass sent upstream, the cache's counters, and how long it took."""

    sent: list[RecordedRequest]
    stats: Stats
    seconds: float

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.sent)

    def as_dict(self) -> dict[str, float]:
        return {"requests": len(self.sent), "tokens": self.tokens,
                "hits": self.stats.hits, "misses": self.stats.misses,
                "seconds": round(self.seconds, 4)}  # fmt: skip


@dataclass
class _Pass(_Sent):
    """One embedding pass of the demo: the document vectors, and (``--milvus``) the search
    results."""

    vectors: np.ndarray[Any, Any] = field(kw_only=True)
    results: list[QueryResult] | None = None


@dataclass
class _Reranked(_Sent):
    """One reranking pass: every document's score, in document order."""

    scores: list[float] = field(kw_only=True)


def _first_title(first: _Pass) -> str:
    """The first pass's title, by what it found: a kept --cache-dir may be warm already."""
    hits, misses = first.stats.hits, first.stats.misses
    if not hits:
        return "First pass (cold cache)"
    if not misses:
        return "First pass (all cached already, from an earlier run in this --cache-dir)"
    return f"First pass ({hits} of {hits + misses} cached already, from an earlier run)"


def _seconds(value: float) -> str:
    """``0.43 s``, ``0.0021 s``: two significant digits below a second is enough to show."""
    return f"{value:.2f} s" if value >= 0.1 else f"{value:.2g} s"


def _echo_pass(title: str, done: _Pass) -> None:
    click.secho(title, bold=True)
    for request in done.sent:
        body = request.body or {}
        fields = ", ".join(f"{k}={body[k]}" for k in sorted(body) if k != "input")
        click.echo(
            f"  sent upstream: POST {request.path} with {request.inputs} texts "
            f"({fields}) -> HTTP {request.status}, {request.tokens} tokens"
        )
    click.echo(
        f"  {plural(len(done.sent), 'request')}, {plural(done.tokens, 'token')} upstream; "
        f"{plural(done.stats.hits, 'hit')} and {plural(done.stats.misses, 'miss')} "
        f"(distinct texts), in {_seconds(done.seconds)}"
    )
    click.echo(f"  vectors: {done.vectors.shape[0]} x {done.vectors.shape[1]} float32")
    if done.results is not None:
        click.echo(f"  Milvus Lite search, top {len(done.results[0].hits)} per query (COSINE):")
        for result in done.results:
            click.echo(f"    {result.query!r}")
            for hit in result.hits:
                click.echo(f"      {hit.distance:+.4f}  [{hit.id}] {hit.text}")
    click.echo()


@click.command(
    cls=Command,
    ignores=_IGNORED,
    # The global option, with the demo's own default: a configured cache is left alone.
    global_help={
        "cache_dir": "Cache directory to use and keep (default: a temporary one, removed "
        "afterwards; $EMBEDCACHE_DIR is not used)."
    },
)
@click.option(
    "--milvus",
    is_flag=True,
    help="Run the Milvus page's JinaEmbeddingFunction example on Milvus Lite: insert the "
    "documents into a collection (in a temporary database) and search it with "
    "encode_queries. Needs the milvus extra.",
)
@json_option
@pass_cli
def demo(cli: CliContext, milvus: bool, as_json: bool) -> None:
    """Show the cache at work, offline, against the bundled Jina API emulator.

    Embeds a few documents twice: the first pass goes to the emulator (which takes 0.2 s a
    request, as the real API might), the second is served from disk with no request and no
    tokens; each pass is timed. With --milvus, each pass also builds a Milvus Lite
    collection from the vectors and searches it, and the second pass must find the same
    hits. Then it reranks a query over a few of the documents twice, the same way: the
    second time every score comes from disk. With a kept --cache-dir, a re-run finds the
    first pass cached already.
    """
    from . import demo_milvus as lite

    if milvus:  # before anything starts: without the extra, one line naming it
        lite.require_milvus()
    import numpy as np

    from ..function import JinaEmbeddingFunction
    from ..testing import JinaEmulator

    documents = lite.MILVUS_DOCUMENTS if milvus else DEMO_DOCUMENTS
    with (
        tempfile.TemporaryDirectory(prefix="embedcache-demo-") as tmp,
        JinaEmulator(api_key=DEMO_API_KEY, latency=DEMO_LATENCY) as emulator,
    ):
        directory = cli.cache_dir or Path(tmp) / "cache"
        database = Path(tmp) / "milvus.db"
        say: Callable[[str], None] = (lambda _: None) if as_json else click.echo
        say(
            f"Jina API emulator at {emulator.url}; cache at {directory}"
            + (f"; Milvus Lite at {database}" if milvus else "")
        )
        say(
            f"{len(documents)} documents and {len(lite.MILVUS_QUERIES)} queries, from the "
            "Milvus page's JinaEmbeddingFunction example\n"
            if milvus
            else f"{len(documents)} documents, {len(set(documents))} distinct\n"
        )

        def run(client: Any) -> _Pass:
            before = len(emulator.requests)
            started = time.perf_counter()
            with JinaEmbeddingFunction(DEFAULT_MODEL, **_settings(emulator, directory)) as ef:
                vectors = ef.encode_documents(documents)
                results = None
                if client is not None:  # the Milvus page's flow: index, then query
                    lite.build_collection(client, documents, vectors)
                    queries = lite.MILVUS_QUERIES
                    results = lite.search(client, queries, ef.encode_queries(queries))
                stats = ef.stats
            seconds = time.perf_counter() - started
            sent = emulator.requests[before:]
            return _Pass(sent, stats, seconds, vectors=np.stack(vectors), results=results)

        with lite.milvus_lite(database) if milvus else contextlib.nullcontext() as client:
            first = run(client)
            if not as_json:
                _echo_pass(_first_title(first) + ":", first)
            second = run(client)
            if not as_json:
                title = "Second pass (a fresh JinaEmbeddingFunction"
                _echo_pass(title + (", the collection rebuilt):" if milvus else "):"), second)
        # The reranking step: scores cached per (query, document), the same way.
        candidates = list(dict.fromkeys(documents))[:_RERANKED]
        reranked = (
            _rerank_pass(emulator, directory, candidates),
            _rerank_pass(emulator, directory, candidates),
        )
        _check(first, second, reranked)
        if as_json:
            summary = _summary(directory, documents, first, second)
            echo_json({**summary, "rerank": _rerank_summary(candidates, *reranked)})
            return
        timing = f"first pass {_seconds(first.seconds)}, second {_seconds(second.seconds)}"
        if milvus:
            requests, tokens = plural(len(second.sent), "request"), plural(second.tokens, "token")
            click.echo(
                f"Second pass served from disk: the same hits, {requests}, {tokens} "
                f"({timing}).\nThe emulator's vectors are random per text, so these hits "
                "carry no meaning; with the real API the same code ranks by meaning."
            )
        else:
            click.echo(
                "Second pass served from disk: bit-identical vectors, "
                f"{plural(len(second.sent), 'request')}, {plural(second.tokens, 'token')} "
                f"({timing})."
            )
        click.echo()
        _echo_rerank(candidates, *reranked)
        click.echo("\n" + _NEXT_STEP)


def _summary(directory: Path, documents: list[str], first: _Pass, second: _Pass) -> dict[str, Any]:
    """``--json``: the totals of both passes, each pass, and the search results."""
    summary: dict[str, Any] = {
        "cache_dir": str(directory),
        "documents": len(documents),
        "distinct_documents": len(set(documents)),
        "requests": len(first.sent) + len(second.sent),
        "hits": first.stats.hits + second.stats.hits,
        "tokens": first.tokens + second.tokens,
        "passes": [first.as_dict(), second.as_dict()],
        "seconds": round(first.seconds + second.seconds, 4),
        "identical": True,  # else _check failed the demo
    }
    if first.results is not None:
        from .demo_milvus import COLLECTION

        summary["milvus"] = {
            "collection": COLLECTION,
            "metric": "COSINE",
            "results": [result.as_dict() for result in first.results],
        }
    return summary


def _check(first: _Pass, second: _Pass, reranked: tuple[_Reranked, _Reranked]) -> None:
    """Fail the demo unless each second pass sent nothing and got what the first got."""
    import numpy as np

    identical = np.array_equal(first.vectors.view(np.uint32), second.vectors.view(np.uint32))
    same_hits = first.results == second.results
    rerank_first, rerank_second = reranked
    same_scores = rerank_first.scores == rerank_second.scores  # floats compared exactly
    if not identical or second.sent or not same_hits:
        raise click.ClickException(
            f"demo failed: second pass sent {len(second.sent)} requests, "
            f"vectors {'identical' if identical else 'differ'}"
            + ("" if same_hits else ", search results differ")
        )
    if rerank_second.sent or not same_scores:
        raise click.ClickException(
            f"demo failed: the second reranking sent {len(rerank_second.sent)} requests, "
            f"scores {'identical' if same_scores else 'differ'}"
        )


def _settings(emulator: JinaEmulator, directory: Path) -> dict[str, Any]:
    """The library settings of every pass: the emulator, as one upstream whatever its port
    (every run's emulator gives the same answers, so a kept --cache-dir is warm on the next
    run), and the demo's cache."""
    return {"api_key": DEMO_API_KEY, "base_url": emulator.url, "upstream_as": DEMO_UPSTREAM,
            "cache_dir": directory}  # fmt: skip


def _rerank_pass(emulator: JinaEmulator, directory: Path, documents: list[str]) -> _Reranked:
    """Rerank :data:`DEMO_QUERY` over ``documents`` with a fresh JinaRerankFunction."""
    from ..rerank_function import JinaRerankFunction

    before = len(emulator.requests)
    started = time.perf_counter()
    with JinaRerankFunction(DEFAULT_RERANK_MODEL, **_settings(emulator, directory)) as rf:
        scores = rf.rerank_scores(DEMO_QUERY, documents)
        stats = rf.stats
    seconds = time.perf_counter() - started
    return _Reranked(emulator.requests[before:], stats, seconds, scores=scores)


def _echo_rerank(documents: list[str], first: _Reranked, second: _Reranked) -> None:
    from ..embedding.reranker import ranked

    click.secho(
        f"Reranking {DEMO_QUERY!r} over {plural(len(documents), 'document')} "
        f"({DEFAULT_RERANK_MODEL}), twice:",
        bold=True,
    )
    for label, done in (("first", first), ("second (a fresh JinaRerankFunction)", second)):
        sent = [
            f"sent upstream: POST {r.path} with {plural(r.inputs, 'document')} -> HTTP "
            f"{r.status}, {plural(r.tokens, 'token')}"
            for r in done.sent
        ] or [f"{plural(0, 'request')}, 0 tokens upstream"]
        click.echo(
            f"  {label}: {'; '.join(sent)}; {plural(done.stats.hits, 'hit')} and "
            f"{plural(done.stats.misses, 'miss')}, in {_seconds(done.seconds)}"
        )
    click.echo("  best first (the second pass's scores bit-identical, from disk):")
    for index in ranked(first.scores):
        click.echo(f"    {first.scores[index]:.4f}  [{index}] {documents[index]}")


def _rerank_summary(documents: list[str], first: _Reranked, second: _Reranked) -> dict[str, Any]:
    """``--json``'s ``rerank``: the step's totals, each pass, and the ranking."""
    from ..embedding.reranker import ranked

    return {
        "model": DEFAULT_RERANK_MODEL,
        "query": DEMO_QUERY,
        "documents": len(documents),
        "requests": len(first.sent) + len(second.sent),
        "tokens": first.tokens + second.tokens,
        "passes": [first.as_dict(), second.as_dict()],
        "results": [
            {"index": i, "score": first.scores[i], "document": documents[i]}
            for i in ranked(first.scores)
        ],
        "identical": True,  # else _check failed the demo
    }
