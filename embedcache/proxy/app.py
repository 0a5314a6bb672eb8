"""``embedcache serve``: a Jina-compatible caching proxy, as a Starlette application.

Every client (pymilvus, LangChain, LlamaIndex, curl, other languages) shares one cache by
pointing its URL here. Text requests go through the same :class:`CachedEmbedder` as the
library: hits are answered on the event loop without a thread hop; misses are filled in a
worker thread (batched, retried, committed per batch, coalesced with other clients' fetches
of the same inputs). Anything the cache cannot answer exactly is forwarded as it is, through
:meth:`JinaClient.forward` (the same retries and pacing as a fill).

:class:`Proxy` puts the parts together, one module per job:

- :mod:`.gate`: who is served, decided from the headers (:meth:`Proxy.admit`), with
  :mod:`.access` (the policy) and :mod:`.keys` (per-key upstream clients, verification);
- :mod:`.hits`: the hit path (:attr:`Proxy.answer_hit`);
- :mod:`.embeddings` and :mod:`.tei_routes`: what the hit path leaves, in the Jina/OpenAI
  and TEI dialects, within :mod:`.limits`, through :mod:`.filling`; :mod:`.rerank_routes`,
  the rerank dialects (Jina, TEI, vLLM, Cohere);
- :mod:`.admin`: health, metrics, admin stats and flush; :mod:`.dashboard`, the page over them;
  :mod:`.insights`, its upstream and cache sections;
- :mod:`.requestlog`: what the cache did, on every answer and in the request log;
  :mod:`.usage`, the same records added up per caller and per model (``usage.db``).

Credentials: each client's ``Authorization`` key is forwarded upstream for its own misses,
or the server's ``JINAAI_API_KEY``/``JINA_API_KEY`` is used. With a proxy token, clients
must present the token and the server's key pays. Keys live only in memory.

What another process removes from the cache directory (``clear``, ``prune``, ``verify
--repair``) stops being served: once a second the proxy compares the store's removal count
with the last one seen and, on a change, drops what it holds in memory.

Float answers are written in the upstream's own style (:mod:`~embedcache.upstream.float_style`):
the client learns it into a :class:`~embedcache.upstream.float_style.FloatStyle` that every
answer reads from memory. The cache directory keeps it per upstream for later servers: in
the same once-a-second look, the proxy records the style this process learned, and reads
the directory's until one is known (another server on the directory may have learned it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..assembly import Assembly, CacheSettings
from ..config import DEFAULT_MODEL, DEFAULT_PRICE_PER_MILLION_TOKENS, EMBEDDINGS_PATH
from ..errors import CacheError
from ..models import MODELS, MULTI_VECTOR_PATH
from ..storage.ledgers import open_ledger
from ..upstream.float_style import FloatStyle, setting_name
from ..upstream.media_fetch import MediaFetcher
from . import tei
from .access import Access
from .admin import AdminRoutes
from .budgets import BudgetPolicy, Budgets
from .dashboard import DashboardRoute
from .embeddings import EmbeddingsRoute
from .filling import Filler
from .gate import Gate, bearer_value
from .hits import HitPath
from .http import Refusal
from .http import Request as HttpRequest
from .keys import Upstreams
from .limits import RequestLimits
from .metrics import Board, ProxyMetrics
from .outcomes import Outcomes
from .rendered import RenderedAnswers
from .requestlog import DEFAULT_BACKUPS, DEFAULT_MAX_BYTES, RequestLog, RequestRecord, caller_hash
from .rerank_routes import DEFAULT_RERANK_MODEL, LOGGED_PATHS, RerankRoutes, with_reranks
from .responses import RouteParts, json_response
from .tei_routes import TeiRoutes
from .usage import Usage
from .wire import render_error

__all__ = ["Proxy", "ProxySettings"]

#: Default memory for served embeddings' text: about 12,000 1024-d float answers.
DEFAULT_RENDERED_BYTES = 256 * 1024 * 1024
_TEI_PATHS = frozenset({tei.TEI_PATH, tei.INFO_PATH})
#: The routes a request log line is written for, by path as the HTTP server reads it.
_LOGGED_PATHS = {
    EMBEDDINGS_PATH.encode(): "jina",
    MULTI_VECTOR_PATH.encode(): "jina",
    tei.TEI_PATH.encode(): "tei",
    **LOGGED_PATHS,
}
#: ``GET /v1/models``: OpenAI's list of the models served (all that embedcache knows).
MODELS_PATH = "/v1/models"
_MODELS_BODY = orjson.dumps(
    {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "jina-ai"} for name in MODELS
        ],
    }
)
_PUBLISH_SECONDS = 0.25  # how stale another worker's cache counters may be in a report
# Every this many publications (once a second), the store is asked whether another process
# removed entries, and the float style is kept or looked for: never on a request.
_DIRECTORY_EVERY = 4

log = logging.getLogger("embedcache")


@dataclass(frozen=True)
class ProxySettings:
    """How ``embedcache serve`` runs.

    :param cache: the cache and its upstream (``base_url`` is where misses go;
        ``max_concurrency`` is shared by all clients; ``offline`` answers misses with 503).
    :param token: when set, clients must send ``Authorization: Bearer <token>``, and misses
        are paid with the server's key.
    :param fill_threads: most client requests filling misses at once.
    :param rendered_bytes: memory for the JSON text of served embeddings, so a repeat hit
        is answered without reading or rendering a vector (0: none).
    :param allowed_keys: client API keys served without asking the upstream; with a list
        (or ``verify_keys``), other keys are refused.
    :param verify_keys: check an unlisted client key against the upstream once (one tiny
        embedding request) and remember the verdict for ``verdict_ttl`` seconds.
    :param admin_token: guards ``/metrics`` and enables ``/admin/stats`` and ``/admin/flush``.
    :param tei_model: the model TEI's ``POST /embed`` is answered with (TEI names none).
    :param tei_task: the task of a TEI text without a ``<task>: `` prefix.
    :param rerank_model: the model of a rerank body naming no Jina reranker (TEI's, vLLM's).
    :param fetch_images_from: hosts whose image and PDF URLs the proxy fetches, to key
        them by content (``serve --fetch-images-from``); others are keyed by URL.
    :param max_inputs: most inputs in one request (the API takes at most 2048).
    :param max_answer_bytes: largest answer body one request may ask for, estimated from
        its inputs, dimensions and encoding before any work.
    :param verify_interval: with ``verify_keys``, a given key is verified at most once per
        this many seconds, whatever the outcome.
    :param verify_rate: with ``verify_keys``, most verifications started per second by one
        worker (0: no bound); over it a new key gets a 429 with ``Retry-After``.
    :param budgets: per-caller token budgets (:mod:`~embedcache.proxy.budgets`); ``None``: none.
    :param price_per_million: dollars per million tokens, for the dashboard's and the
        budgets' dollar figures (``serve --price-per-million``).
    :param request_log: a file to append one JSON line per embedding request to
        (:mod:`.requestlog`; ``None``: none).
    :param request_log_max_bytes: the request log is rotated once this big (0: never).
    :param request_log_backups: rotated request logs kept (``FILE.1`` ... ``FILE.N``).
    """

    cache: CacheSettings = field(default_factory=CacheSettings)
    token: str | None = field(default=None, repr=False)
    fill_threads: int = 64
    rendered_bytes: int = DEFAULT_RENDERED_BYTES
    allowed_keys: tuple[str, ...] = field(default=(), repr=False)
    verify_keys: bool = False
    verdict_ttl: float = 300.0
    admin_token: str | None = field(default=None, repr=False)
    tei_model: str = DEFAULT_MODEL
    tei_task: str | None = "retrieval.passage"
    rerank_model: str = DEFAULT_RERANK_MODEL
    #: Hosts whose image and PDF URLs the proxy fetches, to key them by content.
    fetch_images_from: frozenset[str] = frozenset()
    max_inputs: int = 2048
    max_answer_bytes: int = 96 * 1024 * 1024
    verify_interval: float = 10.0
    verify_rate: float = 10.0
    budgets: BudgetPolicy | None = None
    price_per_million: float = DEFAULT_PRICE_PER_MILLION_TOKENS
    request_log: str | None = None
    request_log_max_bytes: int = DEFAULT_MAX_BYTES
    request_log_backups: int = DEFAULT_BACKUPS


class Proxy:
    """The proxy's state (store, embedder, upstream clients, metrics) and its ASGI app.

    The store is opened here, so a bad cache directory fails before the server starts; the
    app's shutdown finishes in-flight fills (each batch committed) and closes everything.

    :param board: the server's metrics board (default: one of its own).
    :param worker: this worker's row on it.
    :param float_style: what the client learns the upstream's float style into; a server of
        several workers makes one before they fork, so each writes what any learned at once
        (default: one of this process's own).
    """

    def __init__(
        self,
        settings: ProxySettings,
        *,
        board: Board | None = None,
        worker: int = 0,
        float_style: FloatStyle | None = None,
    ) -> None:
        self.settings = settings
        self.parts = Assembly(settings.cache)
        try:
            self.embedder = self.parts.embedder
            self.reranker = self.parts.reranker
        except BaseException:
            self.parts.close()
            raise
        self.store = self.parts.store
        self.shared = self.parts.shared
        self.upstreams = Upstreams(self.parts.client)
        self.access = Access(
            token=settings.token,
            allowed_keys=settings.allowed_keys,
            verify=self.upstreams.verify if settings.verify_keys else None,
            verdict_ttl=settings.verdict_ttl,
            verify_interval=settings.verify_interval,
        )
        self._open = self.access.open
        self.metrics = ProxyMetrics(board, worker)
        self._history = self.metrics.board.history.recorder(worker)
        self._float_style = self.parts.client.learn_float_style(float_style)
        self._float_setting = setting_name(self.parts.upstream_id)
        self._float_style_kept: str | None = None
        self.keep_float_style()
        self._flushes_seen = self.metrics.board.flushes
        self._removals_seen = self._removals()
        #: Every embedding served so far, as JSON text (see :mod:`.rendered`).
        self.rendered = RenderedAnswers(settings.rendered_bytes)
        hosts = settings.fetch_images_from
        fetcher = MediaFetcher(hosts) if hosts else None
        self.filler = Filler(
            self.embedder, self.rendered, self._float_style, settings.fill_threads, fetcher
        )
        limits = RequestLimits(settings.max_inputs, settings.max_answer_bytes)
        self.gate = Gate(self.access, settings.verify_rate, self.filler.in_thread)
        self.budgets: Budgets | None = None
        self.request_log: RequestLog | None = None
        #: Each request's record, on its way to the request log and the per-caller figures
        #: (``None``: nothing keeps them).
        self.outcomes: Outcomes | None = None
        try:
            policy = settings.budgets
            if policy is not None:
                # With a shared tier the ledger is in its Redis: proxies on other cache
                # directories share the budgets too.
                cache = settings.cache
                url = cache.redis_url if self.shared is not None else None
                ledger = open_ledger(self.store.directory, url, cache.redis_prefix)
                self.budgets = Budgets(policy, ledger)
            if settings.request_log is not None:
                self.request_log = RequestLog(
                    settings.request_log,
                    settings.request_log_max_bytes,
                    settings.request_log_backups,
                )
        except BaseException:
            if self.budgets is not None:
                self.budgets.close()
            self.parts.close()
            raise
        self.usage = self._open_usage()
        # Every request's record goes to whatever keeps them, in batches off the loop.
        consumers = [kept.write for kept in (self.request_log,) if kept is not None]
        consumers += [usage.add for usage in (self.usage,) if usage is not None]
        if consumers:
            self.outcomes = Outcomes(consumers)
        self.hits = HitPath(
            self.embedder,
            self.rendered,
            self.access,
            self._float_style,
            self.metrics,
            limits,
            self.budgets,
            self.outcomes,
            self.filler.needs_fetch,
        )
        self._publisher: asyncio.Task[None] | None = None
        self._closed = False
        parts = RouteParts(
            gate=self.gate,
            upstreams=self.upstreams,
            filler=self.filler,
            limits=limits,
            metrics=self.metrics,
            publish=self.publish,
            budgets=self.budgets,
            outcomes=self.outcomes,
        )
        embeddings = EmbeddingsRoute(parts)
        teis = TeiRoutes(settings.tei_model, settings.tei_task, settings.fill_threads, parts)
        reranks = RerankRoutes(settings.rerank_model, self.reranker, parts)
        admin = AdminRoutes(
            settings.admin_token,
            store=self.store,
            shared=self.shared,
            embedder=self.embedder,
            rendered=self.rendered,
            metrics=self.metrics,
            filler=self.filler,
            publish=self.publish,
            flush=self._flush_every_worker,
            price=settings.price_per_million,
            usage=self.usage,
            limiter=self.parts.client.limiter,
            budgets=self.budgets,
        )
        dashboard = DashboardRoute(bool(settings.admin_token))
        self.app = Starlette(
            routes=[
                Route(EMBEDDINGS_PATH, embeddings.handle, methods=["POST"]),
                Route(MULTI_VECTOR_PATH, embeddings.handle, methods=["POST"]),
                Route(tei.TEI_PATH, teis.embed, methods=["POST"]),
                Route(tei.INFO_PATH, teis.info, methods=["GET"]),
                *(Route(p.decode(), reranks.handle, methods=["POST"]) for p in LOGGED_PATHS),
                Route(MODELS_PATH, _models, methods=["GET"]),
                Route("/health", admin.health, methods=["GET"]),
                Route("/metrics", admin.metrics, methods=["GET"]),
                Route("/admin/stats", admin.stats, methods=["GET"]),
                Route("/admin/flush", admin.flush, methods=["POST"]),
                Route("/dashboard", dashboard.page, methods=["GET"]),
            ],
            exception_handlers={HTTPException: _http_error},
        )

    @property
    def float_style(self) -> str:
        """How ``float`` answers are written (see
        :func:`~embedcache.proxy.wire.render_vector`): the upstream's own style, as learned
        by this process or another on the same cache directory
        (:mod:`~embedcache.upstream.float_style`)."""
        return self._float_style.current

    @property
    def answer_hit(self) -> Callable[[HttpRequest], tuple[bytes, list[tuple[bytes, bytes]]] | None]:
        """The hit path (:meth:`.hits.HitPath.answer`, the server's
        :attr:`~embedcache.proxy.http.Handlers.fast`): the body and extra headers of a
        ``POST /v1/embeddings`` whose every input has been answered before, or ``None``."""
        return self.hits.answer

    def admit(self, request: HttpRequest) -> Refusal | Awaitable[Refusal | None] | None:
        """Whether to read ``request``'s body at all, decided from its headers
        (:attr:`~embedcache.proxy.http.Handlers.admit`, :meth:`.gate.Gate.admit`)."""
        if self._open:  # nothing to decide: no cost per request beyond this call
            return None
        refused = self.gate.admit(request)
        if self.outcomes is None or refused is None or request.path not in _LOGGED_PATHS:
            return refused
        if isinstance(refused, Refusal):
            self._log_refusal(request, refused, time.perf_counter())
            return refused
        return self._logged_when_decided(request, refused)

    async def _logged_when_decided(
        self, request: HttpRequest, deciding: Awaitable[Refusal | None]
    ) -> Refusal | None:
        started = time.perf_counter()
        refused = await deciding
        if refused is not None:
            self._log_refusal(request, refused, started)
        return refused

    def _log_refusal(self, request: HttpRequest, refused: Refusal, started: float) -> None:
        """A request refused at its headers, in the request log with what is known (its
        body is never read: no dialect but the route's, no model)."""
        assert self.outcomes is not None
        path = request.path
        record = RequestRecord(
            path.decode(), _LOGGED_PATHS[path], caller_hash(bearer_value(request.authorization))
        )
        record.status = refused.status
        record.ms = (time.perf_counter() - started) * 1000
        self.outcomes.add(record)

    def _open_usage(self) -> Usage | None:
        """The per-caller and per-model figures, in the cache directory's ``usage.db``, kept
        while admin endpoints are on (only ``/admin/stats`` shows them: what no one can read
        costs every hit nothing); a directory where it cannot be made (read-only) serves
        without them."""
        if not self.settings.admin_token:
            return None
        try:
            return Usage(self.store.directory, budgets_on=self.budgets is not None)
        except CacheError as exc:
            log.warning("embedcache proxy: no per-caller figures: %s", exc)
            return None

    def close(self) -> None:
        """Finish in-flight fills, record counters, and release every resource (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._publisher is not None:
            self._publisher.cancel()
        self.filler.close()
        self.keep_float_style()  # a style learned in the last second is not lost
        if self.budgets is not None:
            self.budgets.close()
        self.parts.close()
        if self.outcomes is not None:
            self.outcomes.close()  # what came in last reaches the log before it closes
        if self.usage is not None:
            self.usage.close()
        if self.request_log is not None:
            self.request_log.close()

    def start(self) -> None:
        """Start the background work of a serving proxy (call on its event loop)."""
        loop = asyncio.get_running_loop()
        self._publisher = loop.create_task(self._publish_now_and_then())
        if self.outcomes is not None:
            self.outcomes.start()

    def publish(self) -> None:
        """Put this worker's cache counters and memory on the server's board, and follow a
        flush asked of another worker."""
        flushes = self.metrics.board.flushes
        if flushes != self._flushes_seen:
            self._flushes_seen = flushes
            self._forget()
        stats = with_reranks(self.embedder.stats, self.reranker)
        self.metrics.publish(stats, self.embedder.waiting, self.rendered.bytes_held)
        client = self.parts.client
        limiter = client.limiter
        self.metrics.publish_upstream(client.health, limiter.pacing() if limiter else None)
        self._history.record(self.metrics.own_totals())

    def follow_removals(self) -> None:
        """Drop what this worker holds in memory if another process removed entries from
        the directory since the last look (:meth:`~embedcache.storage.store.Store.removals`)."""
        removals = self._removals()
        if removals is not None and removals != self._removals_seen:
            self._removals_seen = removals
            self._forget()

    def keep_float_style(self) -> None:
        """Record the float style this process learned in the cache directory (once), or,
        until any is known, read the directory's (another server on it may have learned it):
        never on a request, so no answer waits for the disk."""
        learned = self._float_style.learned_here
        try:
            if learned is not None and learned != self._float_style_kept:
                self.store.set_setting(self._float_setting, learned)
                self._float_style_kept = learned
            elif not self._float_style.known:
                self._float_style.adopt(self.store.setting(self._float_setting))
        except CacheError as exc:  # tried again next second; answers keep the current style
            log.warning("embedcache proxy: cannot keep the upstream's float style: %s", exc)

    async def _publish_now_and_then(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(_PUBLISH_SECONDS)
            self.publish()
            ticks += 1
            if ticks % _DIRECTORY_EVERY == 0:
                self.follow_removals()
                self.keep_float_style()
                if self.usage is not None and self.usage.pending:
                    # A quiet worker's last figures reach usage.db too (never on the loop).
                    await asyncio.to_thread(self.usage.flush_if_due)

    def _removals(self) -> int | None:
        try:
            return self.store.removals()
        except CacheError as exc:  # asked again next second
            log.warning("embedcache proxy: cannot read the cache's removals: %s", exc)
            return None

    def _flush_every_worker(self) -> None:
        """``/admin/flush``: this worker forgets now, the others at their next publish."""
        self.metrics.board.count_flush()
        self._flushes_seen = self.metrics.board.flushes
        self._forget()

    def _forget(self) -> None:
        """Drop what this worker holds in memory: answers' text, remembered request bodies,
        key verdicts."""
        self.rendered.clear()
        self.hits.forget()
        self.access.forget()


async def _models(request: Request) -> Response:
    """``GET /v1/models``: the models served, in OpenAI's list shape (some OpenAI-compatible
    clients ask before embedding)."""
    return json_response(200, _MODELS_BODY)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing errors (404, 405) in Jina's ``{"detail": …}`` shape too, and in TEI's on
    TEI's paths (a ``GET /embed``), where TEI clients read the error."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if request.url.path in _TEI_PATHS:
        return json_response(exc.status_code, tei.render_error(exc.detail), headers)
    return json_response(exc.status_code, render_error(exc.detail), headers)
