"""The proxy's own endpoints: ``GET /health`` (open), ``GET /metrics`` (open, or behind the
admin token when one is set), ``GET /admin/stats`` and ``POST /admin/flush`` (only with an
admin token). Nothing here shows a credential: a shared tier's URL is shown redacted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..config import VERSION, redact_url
from ..embedding.embedder import CachedEmbedder
from ..storage.shared import RedisStore
from ..storage.store import Store
from ..upstream.limiter import RateLimiter
from .access import digest, matches
from .budgets import Budgets
from .dashboard import figures
from .filling import Filler
from .gate import bearer_of
from .insights import cache_report, upstream_report
from .metrics import ProxyMetrics
from .rendered import RenderedAnswers
from .responses import json_response
from .usage import Usage
from .wire import render_error

__all__ = ["AdminRoutes"]


class AdminRoutes:
    """The endpoints (:meth:`health`, :meth:`metrics`, :meth:`stats`, :meth:`flush`).

    :param admin_token: the admin token (``None``: no admin endpoints, open metrics).
    :param store: the cache directory's store.
    :param shared: the shared tier, if any.
    :param embedder: the caching core (its counters are flushed).
    :param rendered: the answers' text kept (its budget is reported).
    :param metrics: the server's figures.
    :param filler: the threads slow reports run in.
    :param publish: puts this worker's figures on the board (before each report).
    :param flush: drops what every worker holds in memory.
    :param price: dollars per million tokens, for the dashboard's estimates.
    :param usage: the per-caller and per-model figures (``None``: not kept).
    :param limiter: the upstream's rate limiter (``None``: unpaced).
    :param budgets: the callers' token budgets, if any (their state is reported).
    """

    def __init__(
        self,
        admin_token: str | None,
        *,
        store: Store,
        shared: RedisStore | None,
        embedder: CachedEmbedder,
        rendered: RenderedAnswers,
        metrics: ProxyMetrics,
        filler: Filler,
        publish: Callable[[], None],
        flush: Callable[[], None],
        price: float,
        usage: Usage | None = None,
        limiter: RateLimiter | None = None,
        budgets: Budgets | None = None,
    ) -> None:
        self._admin = digest(admin_token) if admin_token else None
        self._store = store
        self._shared = shared
        self._embedder = embedder
        self._rendered = rendered
        self._metrics = metrics
        self._filler = filler
        self._publish = publish
        self._flush = flush
        self._price = price
        self._usage = usage
        self._limiter = limiter
        self._budgets = budgets

    async def health(self, request: Request) -> Response:
        """Up, and which version."""
        return json_response(200, orjson.dumps({"status": "ok", "version": VERSION}))

    async def metrics(self, request: Request) -> Response:
        """The whole server's figures in Prometheus' text."""
        if self._admin is not None and not self._is_admin(request):
            return json_response(401, render_error("/metrics needs the admin token"))
        self._publish()
        text = self._metrics.render()
        return Response(text, 200, media_type="text/plain; version=0.0.4")

    async def stats(self, request: Request) -> Response:
        """The cache's size and counters, as JSON (admin token only)."""
        if not self._is_admin(request):
            return _admin_refused(self._admin is not None)
        self._publish()
        return json_response(200, orjson.dumps(await self._filler.in_thread(self._gather)))

    async def flush(self, request: Request) -> Response:
        """Drop what every worker holds in memory (vectors, answers' text, remembered key
        verdicts: the other workers follow within a fraction of a second), and record the
        counters."""
        if not self._is_admin(request):
            return _admin_refused(self._admin is not None)
        self._flush()
        await self._filler.in_thread(self._embedder.flush_counters)
        return json_response(200, orjson.dumps({"flushed": True}))

    def _gather(self) -> dict[str, Any]:
        stats, waiting = self._metrics.totals()
        board = self._metrics.board
        shared = self._shared
        return {
            "entries": len(self._store),
            "since_start": asdict(stats),
            "lifetime": self._store.counters(),
            "shared": redact_url(shared.location) if shared else None,
            "requests_waiting": waiting,
            "workers": board.workers,
            "rendered_bytes": board.column("rendered_bytes"),
            "rendered_budget_bytes": self._rendered.max_bytes,
            "resident_bytes": board.column("resident_bytes"),
            **figures(stats, board.history, self._price),
            "cache": cache_report(self._store, shared),
            "upstream": upstream_report(board, self._limiter),
            **self._usage_report(),
            # In this thread: with a shared tier, a SCAN of the budgets in Redis.
            "budgets": self._budgets.report() if self._budgets is not None else None,
        }

    def _usage_report(self) -> dict[str, Any]:
        if self._usage is None:
            return {"usage": None, "callers": [], "models": []}
        return self._usage.report(self._price)

    def _is_admin(self, request: Request) -> bool:
        return matches(bearer_of(request), self._admin)


def _admin_refused(enabled: bool) -> Response:
    if enabled:
        return json_response(401, render_error("this endpoint needs the admin token"))
    message = "admin endpoints are off: start the proxy with --admin-token"
    return json_response(404, render_error(message))
