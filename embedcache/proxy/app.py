"""``embedcache serve``: a Jina-compatible caching proxy, as a Starlette application.

Every client (pymilvus, LangChain, LlamaIndex, curl, other languages) shares one cache by
pointing its URL here. Text requests go through the same :class:`CachedEmbedder` as the
library: hits are answered on the event loop without a thread hop; misses are filled in a
worker thread (batched, retried, committed per batch, coalesced with other clients' fetches
of the same inputs). Anything the cache cannot answer exactly is forwarded as it is, through
:meth:`JinaClient.forward` (the same retries and pacing as a fill).

TEI's ``POST /embed`` (:mod:`.tei`, what Milvus's ``tei`` provider sends) runs through the
same access check, embedder and worker threads, one caching-core call per task.

Credentials: each client's ``Authorization`` key is forwarded upstream for its own misses,
or the server's ``JINAAI_API_KEY``/``JINA_API_KEY`` is used. With a proxy token, clients
must present the token and the server's key pays. Keys live only in memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TypeVar

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..assembly import Assembly, CacheSettings
from ..config import (
    DEFAULT_MODEL,
    EMBEDDINGS_PATH,
    VERSION,
)
from ..embedding.counters import Stats
from ..errors import APIError, EmbedcacheError, InvalidInputError
from ..models import resolve_options
from ..upstream.jina import JinaClient
from . import tei
from .access import Access, Decision, KeyRefused, KeyUnverifiable, digest, matches
from .floats import UpstreamFloatStyle
from .http import Refusal
from .http import Request as HttpRequest
from .metrics import Board, ProxyMetrics
from .rendered import RenderedAnswers, variant
from .wire import (
    EmbeddingsRequest,
    dialect_of,
    error_status,
    parse_request,
    render_body,
    render_error,
    render_vector,
)

__all__ = ["CACHED_HEADER", "DEFAULT_RENDERED_BYTES", "Proxy", "ProxySettings"]

#: Response header: how many of the request's distinct inputs came from the cache
#: (stored, or fetched by a concurrent request) rather than from this request's upstream calls.
CACHED_HEADER = "X-Embedcache-Cached"
#: Default memory for served embeddings' text: about 12,000 1024-d float answers.
DEFAULT_RENDERED_BYTES = 256 * 1024 * 1024
_CACHED_HEADER = CACHED_HEADER.lower().encode()
_EMBEDDINGS_PATH = EMBEDDINGS_PATH.encode()
_JSON = "application/json"
_TEI_PATHS = frozenset({tei.TEI_PATH, tei.INFO_PATH})
_MAX_CLIENTS = 1024
# Request bodies whose parse the hit path remembers: at most this many, of at most this
# size (so at most 16 MiB); parsing is a pure function of the bytes, so a remembered body
# reads exactly as it would again.
_KNOWN_BODIES, _KNOWN_BODY_BYTES = 2048, 8192
_PUBLISH_SECONDS = 0.25  # how stale another worker's cache counters may be in a report
# Small all-hit requests are answered on the event loop (a thread hop would cost more than
# the work); larger ones are read and written in a worker, so one big answer never stalls
# the other clients.
_INLINE_TEXTS = 32
# Verifying a client key: the cheapest request the API answers, and the statuses that mean
# "this key is refused" (missing/invalid key, no balance) rather than "ask again later".
_PROBE = resolve_options(DEFAULT_MODEL, None, None)
_REFUSING = frozenset({401, 402, 403})
_T = TypeVar("_T")

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
    :param max_inputs: most inputs in one request (the API takes at most 2048).
    :param max_answer_bytes: largest answer body one request may ask for, estimated from
        its inputs, dimensions and encoding before any work.
    :param verify_interval: with ``verify_keys``, a given key is verified at most once per
        this many seconds, whatever the outcome.
    :param verify_rate: with ``verify_keys``, most verifications started per second by one
        worker; over it a new key gets a 429.
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
    max_inputs: int = 2048
    max_answer_bytes: int = 64 * 1024 * 1024
    verify_interval: float = 10.0
    verify_rate: float = 10.0


class _Upstreams:
    """One :class:`JinaClient` per client key, sharing the server client's connection pool
    and rate limiter; found by the key's hash so the map holds no key in the clear beyond
    the clients themselves."""

    def __init__(self, server: JinaClient) -> None:
        self.server = server
        self._by_key: OrderedDict[bytes, JinaClient] = OrderedDict()

    def get(self, key: str | None) -> JinaClient:
        if key is None:
            return self.server
        hashed = digest(key)
        client = self._by_key.get(hashed)
        if client is None:
            client = self._by_key[hashed] = self.server.for_key(key)
            if len(self._by_key) > _MAX_CLIENTS:
                self._by_key.popitem(last=False)
        else:
            self._by_key.move_to_end(hashed)
        return client

    def probe(self, key: str) -> JinaClient:
        """A client for checking ``key`` once: two attempts, not the fill's six."""
        return self.server.for_key(key, max_attempts=2)


class Proxy:
    """The proxy's state (store, embedder, upstream clients, metrics) and its ASGI app.

    The store is opened here, so a bad cache directory fails before the server starts; the
    app's shutdown finishes in-flight fills (each batch committed) and closes everything.
    """

    def __init__(
        self, settings: ProxySettings, *, board: Board | None = None, worker: int = 0
    ) -> None:
        self.settings = settings
        self.parts = Assembly(settings.cache)
        try:
            self.embedder = self.parts.embedder
        except BaseException:
            self.parts.close()
            raise
        self.store = self.parts.store
        self.shared = self.parts.shared
        self.upstream_url = self.parts.client.base_url
        self._upstreams = _Upstreams(self.parts.client)
        self.access = Access(
            token=settings.token,
            allowed_keys=settings.allowed_keys,
            verify=self._verify_key if settings.verify_keys else None,
            verdict_ttl=settings.verdict_ttl,
        )
        self._admin = digest(settings.admin_token) if settings.admin_token else None
        self.metrics = ProxyMetrics(board, worker)
        self._float_style = UpstreamFloatStyle(self.store, self.parts.client, self.metrics.board)
        self._flushes_seen = self.metrics.board.flushes
        #: Every embedding served so far, as JSON text (see :mod:`.rendered`).
        self.rendered = RenderedAnswers(settings.rendered_bytes)
        self._known_bodies: dict[bytes, tuple[str, str, list[bytes]]] = {}
        self._publisher: asyncio.Task[None] | None = None
        self._fills = ThreadPoolExecutor(settings.fill_threads, "embedcache-fill")
        self._closed = False
        self.app = Starlette(
            routes=[
                Route(EMBEDDINGS_PATH, self._embeddings, methods=["POST"]),
                Route(tei.TEI_PATH, self._tei_embed, methods=["POST"]),
                Route(tei.INFO_PATH, self._tei_info, methods=["GET"]),
                Route("/health", self._health, methods=["GET"]),
                Route("/metrics", self._metrics, methods=["GET"]),
                Route("/admin/stats", self._admin_stats, methods=["GET"]),
                Route("/admin/flush", self._admin_flush, methods=["POST"]),
            ],
            exception_handlers={HTTPException: _http_error},
        )

    @property
    def float_style(self) -> str:
        """How ``float`` answers are written (see
        :func:`~embedcache.proxy.wire.render_vector`): the upstream's own style, as learned
        by this process or another on the same cache directory (:mod:`.floats`)."""
        return self._float_style.style

    def close(self) -> None:
        """Finish in-flight fills, record counters, and release every resource (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._publisher is not None:
            self._publisher.cancel()
        self._fills.shutdown(wait=True)
        self.parts.close()

    def start(self) -> None:
        """Start the background work of a serving proxy (call on its event loop)."""
        loop = asyncio.get_running_loop()
        self._publisher = loop.create_task(self._publish_now_and_then())

    def admit(self, request: HttpRequest) -> Refusal | Awaitable[Refusal | None] | None:
        """Whether to read ``request``'s body at all, decided from its headers
        (:attr:`~embedcache.proxy.http.Handlers.admit`)."""
        return None

    def answer_hit(self, request: HttpRequest) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
        """The body and extra headers of a ``POST /v1/embeddings`` whose every input has
        been answered before, from the texts already written; ``None`` for anything else,
        which the application then answers in full. Runs on the event loop, so it only
        ever looks at memory."""
        if request.method != b"POST" or request.path != _EMBEDDINGS_PATH:
            return None
        started = time.perf_counter()
        if not self.access.open:
            decision = self.access.decide(_bearer_value(request.authorization), verify=False)
            if decision is None or decision.status:
                return None
        known = self._known_bodies.get(request.body) or self._read_body(request.body)
        if known is None:
            return None
        model, embedding_type, keys = known
        found = self.rendered.get_all(keys, variant(embedding_type, self.float_style))
        if found is None:
            return None
        if len(keys) == 1:
            distinct, saved = 1, found[0][1]
        else:
            costs = {key: cost for key, (_, cost) in zip(keys, found, strict=True)}
            distinct, saved = len(costs), sum(costs.values())
        self.embedder.count_hits(distinct, saved)
        body = render_body(model, [text for text, _ in found], 0)
        self.metrics.observe_hits(distinct, saved, time.perf_counter() - started)
        return body, [(_CACHED_HEADER, b"%d" % distinct)]

    def _read_body(self, body: bytes) -> tuple[str, str, list[bytes]] | None:
        """The model, encoding and entry keys of a request body the hit path can answer,
        remembered for small bodies: the same query text comes back again and again."""
        try:
            parsed = parse_request(orjson.loads(body))
        except (orjson.JSONDecodeError, EmbedcacheError):
            return None  # the application answers with the error
        if parsed is None or parsed.options.late_chunking:
            return None
        try:
            keys = self.embedder.keys(parsed.texts, parsed.options)
        except InvalidInputError:
            return None  # a text that cannot be keyed: the application says why
        known = (parsed.model, parsed.embedding_type, keys)
        if len(body) <= _KNOWN_BODY_BYTES:
            bodies = self._known_bodies
            if len(bodies) >= _KNOWN_BODIES:
                del bodies[next(iter(bodies))]  # the oldest: dicts keep insertion order
            bodies[body] = known
        return known

    def publish(self) -> None:
        """Put this worker's cache counters and memory on the server's board, and follow a
        flush asked of another worker."""
        flushes = self.metrics.board.flushes
        if flushes != self._flushes_seen:
            self._flushes_seen = flushes
            self._forget()
        stats = self.embedder.stats
        self.metrics.publish(stats, self.embedder.waiting, self.rendered.bytes_held)

    async def _publish_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(_PUBLISH_SECONDS)
            self.publish()

    def _forget(self) -> None:
        """Drop what this worker holds in memory: vectors, answers' text, key verdicts."""
        self.embedder.forget_memory()
        self.rendered.clear()
        self.access.forget()

    async def _embeddings(self, request: Request) -> Response:
        started = time.perf_counter()
        self.metrics.begin()
        outcome = "error"
        try:
            response, outcome = await self._answer(request)
        except Exception:
            log.exception("embedcache proxy: unexpected error")
            response = _json(500, render_error("internal error in the embedcache proxy"))
        self.metrics.observe(outcome, time.perf_counter() - started)
        self.publish()  # before the answer: a report asked of any worker after it includes it
        return response

    async def _decide(self, request: Request) -> Decision:
        """Whether to serve the request, and whose key pays (:mod:`.access`)."""
        bearer = _bearer(request)
        decision = self.access.decide(bearer, verify=False)
        if decision is None:  # an unknown key: ask the upstream, off the event loop
            decision = await self._in_thread(partial(self.access.decide, bearer))
        assert decision is not None
        return decision

    async def _answer(self, request: Request) -> tuple[Response, str]:
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _json(422, render_error("the request body is not valid JSON")), "error"
        dialect = dialect_of(body)  # errors are answered in the client's own shape
        decision = await self._decide(request)
        if decision.status:
            refusal = render_error(decision.detail, dialect, decision.status)
            return _json(decision.status, refusal), "error"
        try:
            parsed = parse_request(body)
            upstream = self._upstreams.get(decision.key)
            if parsed is None:
                sent = await self._in_thread(partial(upstream.forward, raw))
                headers = {CACHED_HEADER: "0"}
                return Response(
                    sent.content, sent.status, headers, sent.content_type
                ), "passthrough"
            answer = None
            if len(parsed.texts) <= _INLINE_TEXTS:
                answer = self._embed(parsed, upstream, cached_only=True)
            if answer is None:
                answer = await self._in_thread(partial(self._embed, parsed, upstream))
        except EmbedcacheError as exc:
            status = error_status(exc)
            if status >= 500:
                log.warning("embedcache proxy: %s: %s", type(exc).__name__, exc)
            return _json(status, render_error(exc, dialect, status)), "error"
        assert answer is not None  # a fill either returns vectors or raises
        body, cached, outcome = answer
        return _json(200, body, {CACHED_HEADER: str(cached)}), outcome

    def _embed(
        self, parsed: EmbeddingsRequest, upstream: JinaClient, cached_only: bool = False
    ) -> tuple[bytes, int, str] | None:
        """The response body, how many distinct inputs were not fetched for this request,
        and the outcome; ``None`` when ``cached_only`` and something is missing."""
        rendered = self._rendered(parsed, upstream, cached_only)
        if rendered is None:
            return None
        texts, stats = rendered
        body = render_body(parsed.model, texts, stats.tokens_spent)
        return body, stats.hits + stats.coalesced, "fetched" if stats.misses else "cached"

    def _rendered(
        self, parsed: EmbeddingsRequest, upstream: JinaClient, cached_only: bool = False
    ) -> tuple[list[bytes], Stats] | None:
        """Each text's embedding as JSON text, in the upstream's float style and kept for
        the hit path, and what the caching core found and spent; ``None`` when
        ``cached_only`` and something is missing."""
        result = self.embedder.embed_detailed(
            parsed.texts, parsed.options, upstream=upstream, cached_only=cached_only
        )
        if result is None:
            return None
        style = self.float_style
        kind = variant(parsed.embedding_type, style)
        texts = [render_vector(row, parsed.embedding_type, style) for row in result.vectors]
        if not parsed.options.late_chunking:  # the hit path answers single texts only
            self.rendered.put(result.keys, kind, texts, result.tokens.tolist())
        return texts, result.stats

    async def _tei_embed(self, request: Request) -> Response:
        """TEI's ``POST /embed`` (:mod:`.tei`): counted, timed and published like a Jina
        request."""
        started = time.perf_counter()
        self.metrics.begin()
        outcome = "error"
        try:
            response, outcome = await self._tei_answer(request)
        except Exception:
            log.exception("embedcache proxy: unexpected error")
            message = "internal error in the embedcache proxy"
            response = _json(500, tei.render_error(message, "backend"))
        self.metrics.observe(outcome, time.perf_counter() - started)
        self.publish()
        return response

    async def _tei_answer(self, request: Request) -> tuple[Response, str]:
        decision = await self._decide(request)
        if decision.status:
            body = tei.render_error(decision.detail, tei.error_type(decision.status))
            return _json(decision.status, body), "error"
        settings = self.settings
        raw = await request.body()
        try:
            parsed = tei.parse_embed(raw, settings.tei_model, settings.tei_task)
            upstream = self._upstreams.get(decision.key)
            groups = [
                EmbeddingsRequest(group.options.model, group.texts, group.options, "float")
                for group in parsed.groups
            ]
            done: list[tuple[list[bytes], Stats] | None] = [None] * len(groups)
            if parsed.count <= _INLINE_TEXTS:
                self._fill_groups(groups, upstream, done, cached_only=True)
            if None in done:
                # Only the groups not answered inline: each group's hits are counted once.
                await self._in_thread(partial(self._fill_groups, groups, upstream, done))
        except (EmbedcacheError, tei.TeiInputError) as exc:
            status, body = tei.render_failure(exc)
            if status >= 500:
                log.warning("embedcache proxy: %s: %s", type(exc).__name__, exc)
            return _json(status, body), "error"
        answers: list[bytes] = [b""] * parsed.count
        cached, fetched = 0, False
        for group, rendered in zip(parsed.groups, done, strict=True):
            assert rendered is not None  # a fill either returns vectors or raises
            texts, stats = rendered
            for position, text in zip(group.positions, texts, strict=True):
                answers[position] = text
            cached += stats.hits + stats.coalesced
            fetched = fetched or bool(stats.misses)
        headers = {CACHED_HEADER: str(cached)}
        return _json(200, tei.render_embed(answers), headers), "fetched" if fetched else "cached"

    def _fill_groups(
        self,
        groups: list[EmbeddingsRequest],
        upstream: JinaClient,
        done: list[tuple[list[bytes], Stats] | None],
        cached_only: bool = False,
    ) -> None:
        """Answer each group not yet in ``done``, one after another (each group is one
        task, so one call of the caching core: batched, coalesced, committed per batch)."""
        for index, group in enumerate(groups):
            if done[index] is None:
                done[index] = self._rendered(group, upstream, cached_only)

    async def _tei_info(self, request: Request) -> Response:
        """TEI's ``GET /info``: the model served (settings only, nothing from the cache, so
        open like ``/health``)."""
        settings = self.settings
        body = tei.render_info(settings.tei_model, settings.tei_task, settings.fill_threads)
        return _json(200, body)

    def _verify_key(self, key: str) -> None:
        """Ask the upstream whether it takes ``key``: one embedding of a one-letter text
        (about one token), so a key is never trusted on the proxy's word alone."""
        try:
            self._upstreams.probe(key).embed(["a"], _PROBE)
        except APIError as exc:
            if exc.status in _REFUSING:
                raise KeyRefused(exc.detail or str(exc)) from None
            raise KeyUnverifiable(f"status {exc.status}") from None
        except EmbedcacheError as exc:
            raise KeyUnverifiable(type(exc).__name__) from None

    async def _in_thread(self, work: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._fills, work)

    async def _health(self, request: Request) -> Response:
        return _json(200, orjson.dumps({"status": "ok", "version": VERSION}))

    async def _metrics(self, request: Request) -> Response:
        if self._admin is not None and not self._is_admin(request):
            return _json(401, render_error("/metrics needs the admin token"))
        self.publish()
        text = self.metrics.render()
        return Response(text, 200, media_type="text/plain; version=0.0.4")

    def _is_admin(self, request: Request) -> bool:
        return matches(_bearer(request), self._admin)

    async def _admin_stats(self, request: Request) -> Response:
        """The cache's size and counters, as JSON (admin token only)."""
        if not self._is_admin(request):
            return _admin_refused(self._admin is not None)

        self.publish()

        def gather() -> dict[str, object]:
            stats, waiting = self.metrics.totals()
            board = self.metrics.board
            return {
                "entries": len(self.store),
                "since_start": asdict(stats),
                "lifetime": self.store.counters(),
                "shared": self.shared.location if self.shared else None,
                "requests_waiting": waiting,
                "workers": board.workers,
                "rendered_bytes": board.column("rendered_bytes"),
                "rendered_budget_bytes": self.rendered.max_bytes,
                "resident_bytes": board.column("resident_bytes"),
            }

        return _json(200, orjson.dumps(await self._in_thread(gather)))

    async def _admin_flush(self, request: Request) -> Response:
        """Drop what every worker holds in memory (vectors, answers' text, remembered key
        verdicts: the other workers follow within a fraction of a second), and record the
        counters."""
        if not self._is_admin(request):
            return _admin_refused(self._admin is not None)
        self.metrics.board.count_flush()
        self._flushes_seen = self.metrics.board.flushes
        self._forget()
        await self._in_thread(self.embedder.flush_counters)
        return _json(200, orjson.dumps({"flushed": True}))


def _bearer(request: Request) -> str:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _bearer_value(authorization: bytes) -> str:
    """:func:`_bearer` of a raw ``Authorization`` header value."""
    scheme, _, value = authorization.partition(b" ")
    return value.strip().decode("latin-1") if scheme.lower() == b"bearer" else ""


def _admin_refused(enabled: bool) -> Response:
    if enabled:
        return _json(401, render_error("this endpoint needs the admin token"))
    return _json(404, render_error("admin endpoints are off: start the proxy with --admin-token"))


def _json(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status, headers, _JSON)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing errors (404, 405) in Jina's ``{"detail": …}`` shape too, and in TEI's on
    TEI's paths (a ``GET /embed``), where TEI clients read the error."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if request.url.path in _TEI_PATHS:
        return _json(exc.status_code, tei.render_error(exc.detail), headers)
    return _json(exc.status_code, render_error(exc.detail), headers)
