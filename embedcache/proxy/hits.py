"""The hit path: a ``POST /v1/embeddings`` whose every input was answered before, answered
from memory on the event loop, before any framework sees it
(:attr:`~embedcache.proxy.http.Handlers.fast`).

Per request: a lookup of the body among the bodies read before (the same query text comes
back again and again), else a parse and the entry keys; then each key's JSON text from
:class:`~.rendered.RenderedAnswers` and one join. Anything else (a miss, an error, a body
over :data:`HIT_BODY_BYTES`, a request over a limit) is ``None``: the
application answers it, errors and limits included.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import orjson

from ..config import EMBEDDINGS_PATH
from ..embedding.embedder import CachedEmbedder
from ..errors import EmbedcacheError, InvalidInputError
from ..models import RequestOptions
from ..upstream.float_style import FloatStyle
from .access import Access
from .budgets import BUDGET_HEADER, Budget, Budgets
from .gate import bearer_value
from .http import Request
from .limits import RequestLimits, answer_bytes
from .metrics import ProxyMetrics
from .outcomes import Outcomes
from .rendered import RenderedAnswers, variant
from .requestlog import HITS_HEADER, MISSES_HEADER, STATUS_HEADER, TOKENS_SAVED_HEADER
from .wire import EmbeddingsRequest, dialect_of, parse_request, render_body

__all__ = ["CACHED_HEADER", "HIT_BODY_BYTES", "HitPath"]

#: Largest body the hit path parses on the event loop: at most about half a millisecond
#: (parse and keys), and room for 64 texts of 1,000 characters (69 KB); a bigger body is
#: parsed in a fill thread, hit or not.
HIT_BODY_BYTES = 256 * 1024

#: Response header: how many of the request's distinct inputs came from the cache
#: (stored, or fetched by a concurrent request) rather than from this request's upstream calls.
CACHED_HEADER = "X-Embedcache-Cached"
_CACHED_HEADER = CACHED_HEADER.lower().encode()
_BUDGET_HEADER = BUDGET_HEADER.lower().encode()
_EMBEDDINGS_PATH = EMBEDDINGS_PATH.encode()
# Every hit's status headers that do not depend on the request, as bytes once.
_HIT_STATUS = (STATUS_HEADER.lower().encode(), b"hit")
_NO_MISSES = (MISSES_HEADER.lower().encode(), b"0")
_HITS_HEADER = HITS_HEADER.lower().encode()
_SAVED_HEADER = TOKENS_SAVED_HEADER.lower().encode()
# Request bodies whose parse the hit path remembers: at most this many, of at most this
# size (so at most 16 MiB); parsing is a pure function of the bytes, so a remembered body
# reads exactly as it would again.
_KNOWN_BODIES, _KNOWN_BODY_BYTES = 2048, 8192
# Callers whose budget the hit path remembers at most.
_REMEMBERED_CALLERS = 10_000


class _Known(NamedTuple):
    """What the hit path remembers of a body: enough to answer it and log it."""

    model: str
    embedding_type: str
    keys: list[bytes]
    options: RequestOptions
    dialect: str


class HitPath:
    """Answers repeat requests from the answers' text already written.

    :param embedder: keys texts, and counts the hits answered here.
    :param rendered: the answers' text.
    :param access: who may be served (checked again here: a hit is still a read).
    :param float_style: the style ``float`` answers are written in.
    :param metrics: where each hit is counted.
    :param limits: a request over them is left to the application, which says why.
    :param budgets: the callers' budgets, whose remaining tokens a hit shows (it spends none).
    :param outcomes: where each hit is handed over for the request log and the usage
        figures (``None``: neither is kept).
    :param needs_fetch: whether a request holds an image to fetch before it can be keyed
        (left to the application, which fetches it in a fill thread).
    """

    def __init__(
        self,
        embedder: CachedEmbedder,
        rendered: RenderedAnswers,
        access: Access,
        float_style: FloatStyle,
        metrics: ProxyMetrics,
        limits: RequestLimits,
        budgets: Budgets | None = None,
        outcomes: Outcomes | None = None,
        needs_fetch: Callable[[EmbeddingsRequest], bool] | None = None,
    ) -> None:
        self.embedder = embedder
        self.budgets = budgets
        self.rendered = rendered
        self.access = access
        self.metrics = metrics
        self._float_style = float_style
        self._limits = limits
        self._outcomes = outcomes
        self._needs_fetch = needs_fetch
        self._known_bodies: dict[bytes, _Known] = {}
        # Each caller's budget by the header it sends: no decoding per hit.
        self._budget_of: dict[bytes, Budget | None] = {}

    def answer(self, request: Request) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
        """The body and extra headers of a ``POST /v1/embeddings`` whose every input has
        been answered before, from the texts already written; ``None`` for anything else,
        which the application then answers in full. Runs on the event loop, so it only
        ever looks at memory, and at small bodies."""
        if request.method != b"POST" or request.path != _EMBEDDINGS_PATH:
            return None
        started = time.perf_counter()
        if not self.access.open:
            decision = self.access.decide(bearer_value(request.authorization), verify=False)
            if decision is None or decision.status:
                return None
        body = request.body
        if len(body) > HIT_BODY_BYTES:
            return None  # parsed in a fill thread: it would stall every other client here
        known = self._known_bodies.get(body) or self._read_body(body)
        if known is None:
            return None
        model, embedding_type, keys = known.model, known.embedding_type, known.keys
        found = self.rendered.get_all(keys, variant(embedding_type, self._float_style.current))
        if found is None:
            return None
        if len(keys) == 1:
            distinct, saved = 1, found[0][1]
        else:
            costs = {key: cost for key, (_, cost) in zip(keys, found, strict=True)}
            distinct, saved = len(costs), sum(costs.values())
        self.embedder.count_hits(distinct, saved)
        answer = render_body(model, [text for text, _ in found], 0)
        self.metrics.observe_hits(distinct, saved, time.perf_counter() - started)
        request.texts = len(keys)
        request.hits = distinct
        hits = b"%d" % distinct
        if self._outcomes is not None:
            self._outcomes.add_hit(
                request.authorization,
                known,
                model,
                known.dialect,
                known.options,
                len(keys),
                distinct,
                saved,
                time.perf_counter() - started,
            )
        headers = [
            (_CACHED_HEADER, hits),
            _HIT_STATUS,
            (_HITS_HEADER, hits),
            _NO_MISSES,
            (_SAVED_HEADER, b"%d" % round(saved)),
        ]
        if self.budgets is not None:
            budget = self._budget_header(request.authorization, self.budgets)
            if budget is not None:
                headers.append(budget)
        return answer, headers

    def _budget_header(self, authorization: bytes, budgets: Budgets) -> tuple[bytes, bytes] | None:
        """What the caller's budget has left, as a header (``None``: the caller has none)."""
        try:
            budget = self._budget_of[authorization]
        except KeyError:
            if len(self._budget_of) >= _REMEMBERED_CALLERS:
                self._budget_of.clear()  # bounded: an unverified proxy sees any key
            budget = self._budget_of[authorization] = budgets.budget_of(bearer_value(authorization))
        if budget is None:
            return None
        return (_BUDGET_HEADER, b"%d" % budgets.shown(budget))

    def forget(self) -> None:
        """Drop the bodies remembered."""
        self._known_bodies.clear()

    def _read_body(self, body: bytes) -> _Known | None:
        """The model, encoding and entry keys of a request body the hit path can answer,
        remembered for small bodies: the same query text comes back again and again."""
        try:
            decoded = orjson.loads(body)
            parsed = parse_request(decoded)
        except (orjson.JSONDecodeError, EmbedcacheError):
            return None  # the application answers with the error
        if parsed is None or parsed.options.late_chunking or not parsed.options.plain:
            return None  # multi-vector and packed bits: the application answers them
        if self._needs_fetch is not None and self._needs_fetch(parsed):
            return None  # keyed by content once fetched, off the event loop
        count = len(parsed.texts)
        estimate = answer_bytes(
            count, parsed.options.expected_dim, parsed.embedding_type, self._float_style.current
        )
        limits = self._limits
        if limits.inputs_problem(count) or limits.answer_problem(estimate):
            return None  # the application says which limit (never remembered: no cost here)
        try:
            keys = self.embedder.keys(parsed.texts, parsed.options)
        except InvalidInputError:
            return None  # a text that cannot be keyed: the application says why
        dialect = dialect_of(decoded)
        known = _Known(parsed.model, parsed.embedding_type, keys, parsed.options, dialect)
        if len(body) <= _KNOWN_BODY_BYTES:
            bodies = self._known_bodies
            if len(bodies) >= _KNOWN_BODIES:
                del bodies[next(iter(bodies))]  # the oldest: dicts keep insertion order
            bodies[body] = known
        return known
