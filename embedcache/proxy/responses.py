"""What the application's embedding routes share in answering: the parts they are built
from, a JSON response, and the bookkeeping around each answer (counted, timed, the
request's figures for the server's access line, the board published)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from starlette.requests import Request
from starlette.responses import Response

from .gate import refusal_response
from .requestlog import RequestRecord, caller_hash

if TYPE_CHECKING:
    from ..upstream.jina import JinaClient
    from .budgets import Budget, Budgets
    from .filling import Filler
    from .gate import Gate
    from .keys import Upstreams
    from .limits import RequestLimits
    from .metrics import ProxyMetrics
    from .outcomes import Outcomes

__all__ = ["Admitted", "Answer", "RouteParts", "admitted", "counted", "json_response", "new_record"]

_JSON = "application/json"

log = logging.getLogger("embedcache")


@dataclass(frozen=True)
class RouteParts:
    """What an embedding route (Jina's, TEI's) is built from.

    :param gate: access decisions, settled at the headers.
    :param upstreams: each client key's upstream client.
    :param filler: the caching core and its threads.
    :param limits: the request limits.
    :param metrics: where requests are counted and timed.
    :param publish: puts this worker's counters on the board (before each answer).
    :param budgets: the callers' token budgets (``None``: none).
    :param outcomes: where each request's record goes, for the request log and the usage
        figures (``None``: neither is kept).
    """

    gate: Gate
    upstreams: Upstreams
    filler: Filler
    limits: RequestLimits
    metrics: ProxyMetrics
    publish: Callable[[], None]
    budgets: Budgets | None = None
    outcomes: Outcomes | None = None


class Answer(NamedTuple):
    """A route's answer, its outcome for the metrics, and its access-log figures."""

    response: Response
    outcome: str
    texts: int = -1
    hits: int = -1


class Admitted(NamedTuple):
    """A request let in: its body, the client its misses go to (the caller's key), and the
    caller's token budget (``None``: none)."""

    raw: bytes
    upstream: JinaClient
    budget: Budget | None


async def admitted(
    parts: RouteParts, request: Request, bearer: str, on_tei: bool = False
) -> Admitted | Answer:
    """The access decision for a route's request (settled at the headers by
    :meth:`.gate.Gate.admit`), then its body read: or the refusal, ``on_tei`` in TEI's
    shape."""
    decision = await parts.gate.decision(bearer)
    if decision.status:
        return Answer(refusal_response(decision, on_tei=on_tei), "error")
    budgets = parts.budgets
    budget = budgets.budget_of(bearer) if budgets is not None else None
    return Admitted(await request.body(), parts.upstreams.get(decision.key), budget)


async def counted(
    parts: RouteParts,
    request: Request,
    answer: Awaitable[Answer],
    failure: Response,
    record: RequestRecord | None = None,
) -> Response:
    """Await ``answer`` to ``request``: counted and timed, its figures noted for the access
    line and ``record`` handed over (:mod:`.outcomes`), and the board published before it is
    sent (a report asked of any worker after it includes it). An unexpected error is logged
    and answered with ``failure``."""
    started = time.perf_counter()
    parts.metrics.begin()
    result = Answer(failure, "error")
    try:
        result = await answer
    except Exception:
        log.exception("embedcache proxy: unexpected error")
    seconds = time.perf_counter() - started
    parts.metrics.observe(result.outcome, seconds)
    note_access(request, result.texts, result.hits)
    if record is not None and parts.outcomes is not None:
        record.status = result.response.status_code
        record.ms = seconds * 1000
        if record.status >= 400:
            record.cache = None  # refused or failed: whatever was served is not the answer
            record.digest = None
        parts.outcomes.add(record)
    parts.publish()
    return result.response


def new_record(route: str, dialect: str, bearer: str) -> RequestRecord:
    """The record a route starts a request with: what it knows before reading the body."""
    return RequestRecord(route, dialect, caller_hash(bearer))


def json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    """A JSON response of ``body``, already serialized."""
    return Response(body, status, headers, _JSON)


def note_access(request: Request, texts: int, hits: int) -> None:
    """Give the server's access line the request's inputs and hits from the cache (when
    :mod:`.http` runs the application, its request is in the scope)."""
    raw = request.scope.get("embedcache.request")
    if raw is not None:
        raw.texts = texts
        raw.hits = hits
