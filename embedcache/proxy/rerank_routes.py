"""The rerank endpoints: Jina's ``POST /v1/rerank``, TEI's and vLLM's ``POST /rerank``
(Milvus's ``tei`` and ``vllm`` Model Rankers) and Cohere's ``POST /v2/rerank``, in the
formats of :mod:`.rerank`, through the caching core's :class:`Reranker`.

The same order of work as ``/v1/embeddings``: the access decision (settled at the headers
by :mod:`.gate`, so a refused request's body is never read), the body read (bounded by the
server's ``--max-body``), parsed and checked against ``--max-inputs`` before anything is
fetched; a small all-cached request answered on the event loop, anything else in a fill
thread, misses sent with the caller's own key. Counted, timed, logged and held to the
caller's token budget like an embeddings request.

Every score answered is kept in the worker's memory beside the embeddings' answers
(:class:`~.rendered.RenderedAnswers`: the same ``--rendered-memory`` budget, reported as
``embedcache_rendered_bytes``, let go when another process removes entries), so a repeat
is keys and lookups, with no read of the store.
"""

from __future__ import annotations

import logging
import struct
from functools import partial

from starlette.requests import Request
from starlette.responses import Response

from ..config import COHERE_RERANK_PATH, DEFAULT_RERANK_MODEL, RERANK_PATH, TEI_RERANK_PATH
from ..embedding.counters import COUNTERS, Stats
from ..embedding.reranker import Reranked, Reranker, ranked
from ..errors import EmbedcacheError
from ..inputs import Media, estimate_input
from ..upstream.jina import JinaClient
from . import rerank
from .budgets import BUDGET_HEADER, Budget, Over, over_budget_body, over_budget_headers
from .filling import INLINE_BODY_BYTES, INLINE_TEXTS
from .gate import bearer_of
from .hits import CACHED_HEADER
from .requestlog import RequestRecord, status_headers
from .responses import Answer, RouteParts, admitted, counted, json_response, new_record
from .wire import error_status, redact_urls

__all__ = ["DEFAULT_RERANK_MODEL", "LOGGED_PATHS", "RerankRoutes", "with_reranks"]

#: The rerank paths, by the dialect a refusal at the headers is logged with (``/rerank``
#: is TEI's or vLLM's: only the body tells).
LOGGED_PATHS = {
    RERANK_PATH.encode(): "jina",
    TEI_RERANK_PATH.encode(): "rerank",
    COHERE_RERANK_PATH.encode(): "cohere",
}
# The 429 of an exhausted budget, in the dialect of each rerank dialect's clients.
_BUDGET_DIALECTS = {"jina": "jina", "tei": "tei", "vllm": "openai"}

#: Scores are kept beside the embeddings' answers, told apart by this suffix of their keys.
_SCORES = b"s"
_DOUBLE = struct.Struct("<d")

log = logging.getLogger("embedcache")


class RerankRoutes:
    """The rerank endpoints (:meth:`handle`, one handler for every path).

    :param model: the model a body naming no Jina reranker is answered with
        (``serve --rerank-model``).
    :param reranker: the caching core's reranker (the server's store, tiers and client).
    :param parts: what the route is built from, as ``/v1/embeddings``.
    """

    def __init__(self, model: str, reranker: Reranker, parts: RouteParts) -> None:
        self._model = model
        self._reranker = reranker
        self._parts = parts
        self._gate, self._filler, self._budgets = parts.gate, parts.filler, parts.budgets
        # Within the same memory budget as the embeddings' answers, and forgotten with them
        # when another process removes entries.
        self._kept_scores = parts.filler.rendered
        message = "internal error in the embedcache proxy"
        self._failures = {
            path.decode(): json_response(500, rerank.render_error(dialect, message, 500))
            for path, dialect in LOGGED_PATHS.items()
        }

    async def handle(self, request: Request) -> Response:
        """Answer one rerank request: counted, timed, logged and published."""
        bearer = bearer_of(request)
        path = request.url.path
        record = new_record(path, LOGGED_PATHS[path.encode()], bearer)
        answer = self._answer(request, path, bearer, record)
        return await counted(self._parts, request, answer, self._failures[path], record)

    async def _answer(
        self, request: Request, path: str, bearer: str, record: RequestRecord
    ) -> Answer:
        let_in = await admitted(self._parts, request, bearer)
        if isinstance(let_in, Answer):
            return let_in
        raw, upstream, budget = let_in
        parsed: rerank.RerankRequest | None = None
        if len(raw) <= INLINE_BODY_BYTES:
            read = self._read(raw, path, record)
            if isinstance(read, Answer):
                return read
            parsed = read
            if len(parsed.documents) <= INLINE_TEXTS:
                try:
                    done = self._cached(parsed, upstream)
                except EmbedcacheError as exc:
                    return _failure(parsed.dialect, self._gate.in_clients_terms(exc))
                if done is not None:
                    return self._answered(parsed, done, record, budget)
        job = partial(self._answer_fully, raw, path, parsed, upstream, record, budget)
        return await self._filler.in_thread(job)

    def _answer_fully(
        self,
        raw: bytes,
        path: str,
        parsed: rerank.RerankRequest | None,
        upstream: JinaClient,
        record: RequestRecord,
        budget: Budget | None,
    ) -> Answer:
        """The whole answer, in a fill thread: the body read unless it was, then reranked
        (only the documents not cached are sent, batched, each batch committed)."""
        if parsed is None:
            read = self._read(raw, path, record)
            if isinstance(read, Answer):
                return read
            parsed = read
        try:
            if budget is None or self._budgets is None:
                return self._answered(parsed, self._fetched(parsed, upstream), record)
            return self._within_budget(parsed, upstream, record, budget)
        except EmbedcacheError as exc:
            return _failure(parsed.dialect, self._gate.in_clients_terms(exc))

    def _within_budget(
        self,
        parsed: rerank.RerankRequest,
        upstream: JinaClient,
        record: RequestRecord,
        budget: Budget,
    ) -> Answer:
        """The answer of a caller with a token budget: free when every score is cached;
        otherwise the estimated cost of the documents not cached (a listwise list's: all)
        reserved before anything is sent, and settled with what the upstream charged."""
        budgets = self._budgets
        assert budgets is not None
        done = self._cached(parsed, upstream)
        if done is not None:
            return self._answered(parsed, done, record, budget)
        query = estimate_input(parsed.query)
        documents = parsed.documents
        missing = self._reranker.absent(parsed.query, documents, parsed.model)
        estimate = sum(query + estimate_input(documents[i]) for i in missing)
        found = budgets.reserve(budget, estimate)
        if isinstance(found, Over):
            body = _over_budget(found, parsed.dialect)
            return Answer(json_response(429, body, over_budget_headers(found)), "error")
        try:
            fetched = self._fetched(parsed, upstream)
        except BaseException:
            budgets.settle(found, 0)  # a failed request costs nothing
            raise
        left = budgets.settle(found, fetched.stats.tokens_spent)
        return self._answered(parsed, fetched, record, budget, left)

    def _cached(self, parsed: rerank.RerankRequest, upstream: JinaClient) -> Reranked | None:
        """Every score from what this worker keeps, or else from the cache; ``None`` if any
        is missing."""
        kept = self._kept(parsed)
        if kept is not None:
            return kept
        done = self._rerank(parsed, upstream, cached_only=True)
        if done is not None:
            self._keep(done)
        return done

    def _kept(self, parsed: rerank.RerankRequest) -> Reranked | None:
        """A repeat answered from the scores this worker keeps in memory, with no read of
        the store (a hit costs keys and lookups); ``None`` unless every score is kept."""
        keys = self._reranker.keys(parsed.query, parsed.documents, parsed.model)
        found = self._kept_scores.get_all(keys, _SCORES)
        if found is None:
            return None
        scores = [_DOUBLE.unpack(text)[0] for text, _ in found]
        tokens = [cost for _, cost in found]
        distinct = dict(zip(keys, tokens, strict=True))  # a repeated document counts once
        saved = sum(distinct.values())
        self._reranker.count_hits(len(distinct), saved)
        return Reranked(scores, Stats(hits=len(distinct), tokens_saved=saved), tokens, keys)

    def _keep(self, done: Reranked) -> None:
        """Keep the scores of an answer for the next repeat (each as its 8 float64 bytes:
        exactly what the upstream wrote)."""
        texts = [_DOUBLE.pack(score) for score in done.scores]
        self._kept_scores.put(done.keys, _SCORES, texts, done.tokens)

    def _rerank(
        self, parsed: rerank.RerankRequest, upstream: JinaClient, cached_only: bool = False
    ) -> Reranked | None:
        return self._reranker.rerank(
            parsed.query,
            parsed.documents,
            parsed.model,
            upstream=upstream,
            cached_only=cached_only,
        )

    def _fetched(self, parsed: rerank.RerankRequest, upstream: JinaClient) -> Reranked:
        done = self._rerank(parsed, upstream)
        assert done is not None  # only a cached_only call answers None
        self._keep(done)
        return done

    def _read(self, raw: bytes, path: str, record: RequestRecord) -> rerank.RerankRequest | Answer:
        """The body parsed and checked against ``--max-inputs``, or the error answer."""
        try:
            parsed = rerank.parse_rerank(raw, path, self._model)
        except rerank.RerankInputError as exc:
            record.dialect = exc.dialect
            body = rerank.render_error(exc.dialect, exc, exc.status)
            return Answer(json_response(exc.status, body), "error")
        record.dialect, record.model = parsed.dialect, parsed.model
        record.texts = len(parsed.documents)
        problem = self._parts.limits.inputs_problem(len(parsed.documents))
        if problem:
            problem = problem.replace("inputs", parsed.documents_field)
            body = rerank.render_error(parsed.dialect, problem, 413)
            return Answer(json_response(413, body), "error", record.texts)
        return parsed

    def _answered(
        self,
        parsed: rerank.RerankRequest,
        done: Reranked,
        record: RequestRecord,
        budget: Budget | None = None,
        left: int | None = None,
    ) -> Answer:
        """The answer from every document's score: ordered and cut locally, the usage only
        what this request sent; its figures in the record and the headers."""
        stats = done.stats
        order = ranked(done.scores, parsed.top_n)
        body = rerank.render_answer(parsed, done.scores, order, stats.tokens_spent)
        cached = stats.hits + stats.coalesced
        spent, saved = stats.tokens_spent, stats.tokens_saved
        # The digest is only of a request that fetched: a hit need not encode its documents.
        asked = _asked(parsed) if stats.misses else ()
        record.answered(cached, stats.misses, spent, saved, asked)
        headers = {CACHED_HEADER: str(cached), **status_headers(record)}
        if budget is not None and self._budgets is not None:
            headers[BUDGET_HEADER] = str(self._budgets.shown(budget) if left is None else left)
        outcome = "fetched" if stats.misses else "cached"
        return Answer(json_response(200, body, headers), outcome, len(parsed.documents), cached)


def with_reranks(stats: Stats, reranker: Reranker) -> Stats:
    """``stats`` (an embedder's) plus ``reranker``'s counters: the metrics board's hits,
    misses and tokens cover rerank entries too, as the lifetime counters do."""
    reranks = reranker.stats
    return Stats.from_values({n: getattr(stats, n) + getattr(reranks, n) for n in COUNTERS})


def _asked(parsed: rerank.RerankRequest) -> list[bytes]:
    """What a request asked for, for the request log's digest: the model, the query and
    every document in order, each length-prefixed (an image by its identity)."""
    parts = [parsed.model, parsed.query, *parsed.documents]
    raw = [
        p.identity if isinstance(p, Media) else p.encode("utf-8", "surrogatepass") for p in parts
    ]
    return [len(part).to_bytes(8, "little") + part for part in raw]


def _over_budget(over: Over, dialect: str) -> bytes:
    shape = _BUDGET_DIALECTS.get(dialect)
    return (
        over_budget_body(over, shape) if shape else rerank.render_error(dialect, over.message, 429)
    )


def _failure(dialect: str, exc: EmbedcacheError) -> Answer:
    status = error_status(exc)
    if status >= 500:
        log.warning("embedcache proxy: %s: %s", type(exc).__name__, redact_urls(str(exc)))
    return Answer(json_response(status, rerank.render_error(dialect, exc, status)), "error")
