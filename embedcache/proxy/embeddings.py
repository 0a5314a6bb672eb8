"""``POST /v1/embeddings`` (and the ColBERT models' ``POST /v1/multi-vector``) as the
application answers it: everything the hit path left (misses, errors, requests passed through
uncached, big bodies, multi-vector and packed-bits outputs), in Jina's or OpenAI's dialect
(:mod:`.wire`).

Order of work: the access decision (settled at the headers, :mod:`.gate`), then the body
read, checked against the request limits (:mod:`.limits`) and keyed before anything is
fetched. A small body is read on the event loop and a small all-hit request answered there;
everything else runs in a fill thread, so no request stalls the worker's other clients.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..errors import EmbedcacheError
from ..inputs import estimate_input
from ..upstream.jina import JinaClient
from .budgets import (
    BUDGET_HEADER,
    Budget,
    Over,
    Reservation,
    charged_tokens,
    over_budget_body,
    over_budget_headers,
)
from .filling import INLINE_BODY_BYTES, INLINE_TEXTS
from .gate import bearer_of
from .hits import CACHED_HEADER
from .limits import answer_bytes, refuse_overlong
from .requestlog import RequestRecord, status_headers
from .responses import Answer, RouteParts, admitted, counted, new_record
from .responses import json_response as _json
from .wire import (
    EmbeddingsRequest,
    dialect_of,
    error_status,
    parse_request,
    redact_urls,
    render_body,
    render_error,
)

__all__ = ["EmbeddingsRoute"]

log = logging.getLogger("embedcache")


@dataclass(frozen=True)
class _Read:
    """A request body as read: its dialect, and the request (``None``: pass it through)."""

    dialect: str
    parsed: EmbeddingsRequest | None
    #: The path it was sent to, where a body passed through goes.
    path: str


class EmbeddingsRoute:
    """The ``/v1/embeddings`` and ``/v1/multi-vector`` endpoints (:meth:`handle`), built
    from ``parts``."""

    def __init__(self, parts: RouteParts) -> None:
        self._parts = parts
        self._gate = parts.gate
        self._filler = parts.filler
        self._limits = parts.limits
        self._budgets = parts.budgets
        self._failure = _json(500, render_error("internal error in the embedcache proxy"))

    async def handle(self, request: Request) -> Response:
        """Answer one request: counted, timed, logged and published."""
        bearer = bearer_of(request)
        record = new_record(request.url.path, "jina", bearer)
        answer = self._answer(request, bearer, record)
        return await counted(self._parts, request, answer, self._failure, record)

    async def _answer(self, request: Request, bearer: str, record: RequestRecord) -> Answer:
        let_in = await admitted(self._parts, request, bearer)
        if isinstance(let_in, Answer):
            return let_in
        raw, upstream, budget = let_in
        read: _Read | None = None
        if len(raw) <= INLINE_BODY_BYTES:
            outcome = self._read(raw, record)
            if isinstance(outcome, Answer):
                return outcome
            read = outcome
            parsed = read.parsed
            if (
                parsed is not None
                and len(parsed.texts) <= INLINE_TEXTS
                and not self._filler.needs_fetch(parsed)
            ):
                try:
                    inline = self._embed(parsed, upstream, record, budget, cached_only=True)
                except EmbedcacheError as exc:
                    return _failure(self._gate.in_clients_terms(exc), read.dialect)
                if inline is not None:
                    return inline
        work = partial(self._answer_fully, raw, read, upstream, record, budget)
        return await self._filler.in_thread(work)

    def _answer_fully(
        self,
        raw: bytes,
        read: _Read | None,
        upstream: JinaClient,
        record: RequestRecord,
        budget: Budget | None,
    ) -> Answer:
        """The whole answer, in a fill thread: the body read unless it was, then the
        request passed through, or filled (batched, coalesced, committed per batch)."""
        if read is None:
            outcome = self._read(raw, record)
            if isinstance(outcome, Answer):
                return outcome
            read = outcome
        parsed = read.parsed
        held: Reservation | None = None
        try:
            if parsed is not None:
                parsed = self._filler.by_content(parsed)  # images fetched to key by content
            if budget is not None and self._budgets is not None:
                # Passed through, a request's cost is known once answered: it needs a token left.
                spend = [(parsed.texts, parsed.options)] if parsed is not None else []
                least = 1 if parsed is None else 0
                found = self._budgets.admit(budget, self._filler.embedder, spend, least)
                if isinstance(found, Over):
                    body = over_budget_body(found, read.dialect)
                    return Answer(_json(429, body, over_budget_headers(found)), "error")
                held = found
            if parsed is None:
                return self._passed_through(raw, upstream, record, held)
            answer = self._embed(parsed, upstream, record, budget, held=held)
        except EmbedcacheError as exc:
            return _failure(self._gate.in_clients_terms(exc), read.dialect)
        assert answer is not None  # a fill either returns vectors or raises
        return answer

    def _passed_through(
        self, raw: bytes, upstream: JinaClient, record: RequestRecord, held: Reservation | None
    ) -> Answer:
        """``raw`` forwarded as it is, its ``usage`` charged to ``held``'s budget."""
        try:
            sent = upstream.forward(raw, record.route)
        except BaseException:
            if held is not None and self._budgets is not None:
                self._budgets.settle(held, 0)
            raise
        # Nothing of it from the cache, nor kept: every input a miss.
        record.answered(0, record.texts, 0, 0.0, [raw])
        headers = {CACHED_HEADER: "0", **status_headers(record)}
        if held is not None and self._budgets is not None:
            left = self._budgets.settle(held, charged_tokens(sent.content))
            headers[BUDGET_HEADER] = str(left)
        response = Response(sent.content, sent.status, headers, sent.content_type)
        return Answer(response, "passthrough")

    def _read(self, raw: bytes, record: RequestRecord) -> _Read | Answer:
        """The body parsed and checked against the limits, its texts' lengths included (a
        long one estimated a slice at a time), or the error answer."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return Answer(_json(422, render_error("the request body is not valid JSON")), "error")
        dialect = dialect_of(body)  # errors are answered in the client's own shape
        record.dialect = dialect
        try:
            parsed = parse_request(body, record.route)
        except EmbedcacheError as exc:
            return _failure(exc, dialect)
        if parsed is None:
            count, estimate = _count(body), 0  # passed through: its answer is the upstream's
            model = body.get("model") if isinstance(body, dict) else None
            record.model = model if isinstance(model, str) else None
        else:
            count = len(parsed.texts)
            options = parsed.options
            record.model, record.task, record.dimensions = (
                options.model,
                options.task,
                options.dimensions,
            )
            estimate = _estimate(parsed, self._filler.float_style)
        record.texts = count
        problem = self._limits.inputs_problem(count) or self._limits.answer_problem(estimate)
        if problem:
            return Answer(_json(413, render_error(problem, dialect, 413)), "error", count)
        # Every body, not only big ones: a text over the limit is named by its field here,
        # where the caching core would name a Python list (`texts[3]`).
        if parsed is not None:
            try:
                refuse_overlong(parsed.texts, parsed.options)
            except EmbedcacheError as exc:
                return _failure(exc, dialect)
        return _Read(dialect, parsed, record.route)

    def _embed(
        self,
        parsed: EmbeddingsRequest,
        upstream: JinaClient,
        record: RequestRecord,
        budget: Budget | None,
        cached_only: bool = False,
        held: Reservation | None = None,
    ) -> Answer | None:
        """The answer from the caching core; ``None`` when ``cached_only`` and something
        is missing. ``held``, what was reserved of ``budget``, is settled with what the
        upstream charged (nothing if the fill fails)."""
        try:
            rendered = self._filler.render(parsed, upstream, cached_only)
        except BaseException:
            if held is not None and self._budgets is not None:
                self._budgets.settle(held, 0)
            raise
        if rendered is None:
            return None
        texts, stats, keys = rendered
        multivector = parsed.options.multivector
        body = render_body(parsed.model, texts, stats.tokens_spent, multivector)
        cached = stats.hits + stats.coalesced
        record.answered(cached, stats.misses, stats.tokens_spent, stats.tokens_saved, keys)
        headers = {CACHED_HEADER: str(cached), **status_headers(record)}
        if budget is not None and self._budgets is not None:
            left = self._budgets.settle(held, stats.tokens_spent) if held else None
            headers[BUDGET_HEADER] = str(self._budgets.shown(budget) if left is None else left)
        response = _json(200, body, headers)
        outcome = "fetched" if stats.misses else "cached"
        return Answer(response, outcome, len(parsed.texts), cached)


def _estimate(parsed: EmbeddingsRequest, style: str) -> int:
    """An upper estimate of ``parsed``'s answer body: a multi-vector input as one row per
    estimated token, packed bits as one value per 8 dimensions."""
    options = parsed.options
    count, width = len(parsed.texts), options.row_width
    if options.multivector:
        count = sum(max(1, estimate_input(text)) for text in parsed.texts)
    if options.embedding_type != "base64" and width is not None:
        width = -(-width // 8)
    return answer_bytes(count, width, parsed.embedding_type, style)


def _count(body: Any) -> int:
    """How many inputs a body passed through holds (its ``input`` list's length)."""
    value = body.get("input") if isinstance(body, dict) else None
    return len(value) if isinstance(value, list) else 1


def _failure(exc: EmbedcacheError, dialect: str) -> Answer:
    status = error_status(exc)
    if status >= 500:
        log.warning("embedcache proxy: %s: %s", type(exc).__name__, redact_urls(str(exc)))
    return Answer(_json(status, render_error(exc, dialect, status)), "error")
