"""TEI's ``POST /embed`` and ``GET /info`` (the format is :mod:`.tei`), answered through the
same access decisions, limits, caching core and fill threads as ``/v1/embeddings``: one
call of the caching core per task of the request, errors in TEI's shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from starlette.requests import Request
from starlette.responses import Response

from ..errors import EmbedcacheError
from ..upstream.jina import JinaClient
from . import tei
from .budgets import (
    BUDGET_HEADER,
    Budget,
    Over,
    Reservation,
    over_budget_body,
    over_budget_headers,
)
from .filling import INLINE_BODY_BYTES, INLINE_TEXTS, Rendered
from .gate import bearer_of
from .hits import CACHED_HEADER
from .limits import answer_bytes, refuse_overlong
from .requestlog import RequestRecord, status_headers
from .responses import Answer, RouteParts, admitted, counted, json_response, new_record
from .wire import EmbeddingsRequest, redact_urls

__all__ = ["TeiRoutes"]

log = logging.getLogger("embedcache")


@dataclass
class _Work:
    """A parsed ``POST /embed``: one request of the caching core per group (task), and
    each group's answer once it has one."""

    parsed: tei.TeiRequest
    groups: list[EmbeddingsRequest]
    done: list[Rendered | None] = field(default_factory=list)


class TeiRoutes:
    """The TEI endpoints (:meth:`embed`, :meth:`info`).

    :param model: the model TEI requests are answered with (they name none).
    :param task: the task of a text without a ``<task>: `` prefix.
    :param concurrency: what ``/info`` reports as the most concurrent requests.
    :param parts: what the route is built from, as ``/v1/embeddings``.
    """

    def __init__(self, model: str, task: str | None, concurrency: int, parts: RouteParts) -> None:
        self._model = model
        self._task = task
        self._concurrency = concurrency
        self._parts = parts
        self._gate = parts.gate
        self._filler = parts.filler
        self._limits = parts.limits
        self._budgets = parts.budgets
        message = "internal error in the embedcache proxy"
        self._failure = json_response(500, tei.render_error(message, "backend"))

    async def embed(self, request: Request) -> Response:
        """TEI's ``POST /embed``: counted, timed, logged and published like a Jina request."""
        bearer = bearer_of(request)
        record = new_record(request.url.path, "tei", bearer)
        record.model = self._model
        answer = self._answer(request, bearer, record)
        return await counted(self._parts, request, answer, self._failure, record)

    async def info(self, request: Request) -> Response:
        """TEI's ``GET /info``: the model served (settings only, nothing from the cache, so
        open like ``/health``)."""
        return json_response(200, tei.render_info(self._model, self._task, self._concurrency))

    async def _answer(self, request: Request, bearer: str, record: RequestRecord) -> Answer:
        let_in = await admitted(self._parts, request, bearer, on_tei=True)
        if isinstance(let_in, Answer):
            return let_in
        raw, upstream, budget = let_in
        work: _Work | None = None
        if len(raw) <= INLINE_BODY_BYTES:
            read = self._read(raw, record)
            if isinstance(read, Answer):
                return read
            work = read
            if work.parsed.count <= INLINE_TEXTS:
                try:
                    self._fill(work, upstream, cached_only=True)
                except EmbedcacheError as exc:
                    return _failure(self._gate.in_clients_terms(exc))
                if None not in work.done:
                    return self._assembled(work, record, budget)
        job = partial(self._answer_fully, raw, work, upstream, record, budget)
        return await self._filler.in_thread(job)

    def _answer_fully(
        self,
        raw: bytes,
        work: _Work | None,
        upstream: JinaClient,
        record: RequestRecord,
        budget: Budget | None,
    ) -> Answer:
        """The whole answer, in a fill thread: the body read unless it was, then the
        groups not answered yet filled."""
        if work is None:
            read = self._read(raw, record)
            if isinstance(read, Answer):
                return read
            work = read
        held: Reservation | None = None
        try:
            if budget is not None and self._budgets is not None:
                pairs = zip(work.groups, work.done, strict=True)
                left = [(group.texts, group.options) for group, done in pairs if not done]
                found = self._budgets.admit(budget, self._filler.embedder, left)
                if isinstance(found, Over):
                    body = over_budget_body(found, "tei")
                    return Answer(json_response(429, body, over_budget_headers(found)), "error")
                held = found
            # Only the groups not answered inline: each group's hits are counted once.
            self._fill(work, upstream)
        except EmbedcacheError as exc:
            if held is not None and self._budgets is not None:
                self._budgets.settle(held, 0)  # a failed request costs nothing
            return _failure(self._gate.in_clients_terms(exc))
        return self._assembled(work, record, budget, held)

    def _read(self, raw: bytes, record: RequestRecord) -> _Work | Answer:
        """The body parsed and checked against the limits, its texts' lengths included (a
        long one estimated a slice at a time), or the error answer."""
        try:
            parsed = tei.parse_embed(raw, self._model, self._task)
        except tei.TeiInputError as exc:
            return _failure(exc)
        record.texts = parsed.count
        tasks = {group.options.task for group in parsed.groups}
        dimensions = {group.options.dimensions for group in parsed.groups}
        # One task (or dimensions) for the whole request, else none to name.
        record.task = tasks.pop() if len(tasks) == 1 else None
        record.dimensions = dimensions.pop() if len(dimensions) == 1 else None
        problem = self._limits.inputs_problem(parsed.count)
        if problem is None:
            style = self._filler.float_style
            estimate = sum(
                answer_bytes(len(group.texts), group.options.expected_dim, "float", style)
                for group in parsed.groups
            )
            problem = self._limits.answer_problem(estimate)
        if problem:
            body = tei.render_error(problem, "validation")
            return Answer(json_response(413, body), "error", parsed.count)
        try:
            # Every body: a text over the limit is named by its place in `inputs` here.
            for group in parsed.groups:
                refuse_overlong(group.texts, group.options, _inputs_field(group.positions))
        except EmbedcacheError as exc:
            return _failure(exc)
        groups = [
            EmbeddingsRequest(group.options.model, group.texts, group.options, "float")
            for group in parsed.groups
        ]
        return _Work(parsed, groups, [None] * len(groups))

    def _fill(self, work: _Work, upstream: JinaClient, cached_only: bool = False) -> None:
        """Answer each group not answered yet, one after another (each group is one
        task, so one call of the caching core: batched, coalesced, committed per batch)."""
        for index, group in enumerate(work.groups):
            if work.done[index] is None:
                work.done[index] = self._filler.render(group, upstream, cached_only)

    def _assembled(
        self,
        work: _Work,
        record: RequestRecord,
        budget: Budget | None,
        held: Reservation | None = None,
    ) -> Answer:
        """The answer of a request whose every group is answered, in input order; what
        was ``held`` of ``budget`` settled with what the upstream charged."""
        answer = _assembled(work, record)
        budgets = self._budgets
        if budget is None or budgets is None:
            return answer
        spent = sum(done.stats.tokens_spent for done in filter(None, work.done))
        left = budgets.settle(held, spent) if held else budgets.shown(budget)
        answer.response.headers[BUDGET_HEADER] = str(left)
        return answer


def _assembled(work: _Work, record: RequestRecord) -> Answer:
    """The answer of a request whose every group is answered: in input order."""
    answers: list[bytes] = [b""] * work.parsed.count
    cached, misses, spent, saved = 0, 0, 0, 0.0
    asked: list[bytes] = []
    for group, rendered in zip(work.parsed.groups, work.done, strict=True):
        assert rendered is not None  # a fill either returns vectors or raises
        texts, stats, keys = rendered
        asked += keys
        for position, text in zip(group.positions, texts, strict=True):
            answers[position] = text
        cached += stats.hits + stats.coalesced
        misses += stats.misses
        spent += stats.tokens_spent
        saved += stats.tokens_saved
    record.answered(cached, misses, spent, saved, asked)
    headers = {CACHED_HEADER: str(cached), **status_headers(record)}
    response = json_response(200, tei.render_embed(answers), headers)
    return Answer(response, "fetched" if misses else "cached", work.parsed.count, cached)


def _failure(exc: EmbedcacheError | tei.TeiInputError) -> Answer:
    status, body = tei.render_failure(exc)
    if status >= 500:
        log.warning("embedcache proxy: %s: %s", type(exc).__name__, redact_urls(str(exc)))
    return Answer(json_response(status, body), "error")


def _inputs_field(positions: list[int]) -> Callable[[int], str]:
    """How a group's ``i``-th text is named to the client: by its place in ``inputs``."""
    return lambda index: f"inputs[{positions[index]}]"
