"""HTTP client for ``POST {base_url}/v1/embeddings`` (and ``/v1/rerank``): retries, error
mapping, response parsing.

This is the one boundary where httpx exceptions and HTTP statuses become
:class:`~embedcache.errors.EmbedcacheError`, for embedding requests and for the proxy's
passthrough (:meth:`JinaClient.forward`) alike; success answers are decoded by
:mod:`~embedcache.upstream.answers`. Batching and caching live in the embedder.

Vectors are asked for as base64 (the float32 bytes themselves), except while the client is
learning how the upstream writes float text (:meth:`JinaClient.learn_float_style`, for the
proxy's float answers; see :mod:`~embedcache.upstream.float_style`).
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ..config import (
    DEFAULT_BACKOFF_BASE_SECONDS,
    DEFAULT_BACKOFF_CAP_SECONDS,
    DEFAULT_CONNECT_TIMEOUT_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TIMEOUT_SECONDS,
    EMBEDDINGS_PATH,
    MAX_RETRY_AFTER_SECONDS,
    RERANK_PATH,
    VERSION,
    redact_text,
    redact_url,
    resolve_api_key,
    resolve_base_url,
    without_userinfo,
)
from ..errors import (
    APIError,
    AuthenticationError,
    InvalidInputError,
    RateLimitError,
)
from ..inputs import Input, Media, estimate_input
from ..models import RequestOptions, is_listwise
from .answers import learn_from, no_usage, parse, usage
from .failures import HTTPX_EXCEPTIONS, failure_of
from .float_style import FloatStyle
from .health import UpstreamHealth
from .limiter import RateLimiter
from .protocol import RerankInput, UpstreamResult, UpstreamScores
from .rerank_answers import parse_scores

__all__ = ["JinaClient"]

#: Statuses worth another attempt; 400/401/402/403/422 and the rest are final.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_DETAIL_CHARS = 500

log = logging.getLogger("embedcache")


@dataclass(frozen=True)
class Forwarded:
    """The upstream's final answer to a forwarded request, to be passed on as it is."""

    status: int
    content: bytes
    content_type: str


class JinaClient:
    """Sends one batch per call to the Jina embeddings endpoint.

    The API key is resolved on the first request (argument, ``JINAAI_API_KEY``,
    ``JINA_API_KEY``), so a client whose every text is cached never needs one.

    :param api_key: Jina API key; never logged, stored on disk or shown in ``repr``.
    :param base_url: API root; default ``EMBEDCACHE_BASE_URL`` or ``https://api.jina.ai``.
        Credentials in it (``user:password@``) are neither sent nor shown: every request
        carries its API key as a Bearer token, which HTTP Basic auth from the URL would
        replace (httpx's way), and :attr:`base_url` holds it redacted.
    :param timeout: seconds to wait for a response.
    :param max_attempts: attempts per batch, the first included, for 429, 5xx, timeouts and
        broken connections.
    :param backoff_base: first backoff in seconds; doubled per attempt, with jitter, capped
        at ``backoff_cap``. A ``Retry-After`` header overrides it.
    :raises InvalidInputError: ``max_attempts`` below 1, a timeout that is not positive, a
        negative backoff.
    :param http_client: an ``httpx.Client`` to use (not closed by :meth:`close`).
    :param transport: an httpx transport for the client built here (tests).
    :param sleep: how to wait between attempts (tests).
    :param limiter: paces every attempt to the account's rate limits; share one per
        process (see :func:`~embedcache.upstream.limiter.shared_limiter`). ``None``: no pacing.
    :param pool_owner: send through that client's connection pool (which it closes, not
        this one) and learn into its float style, as :meth:`for_key` does.
    :param health: what every attempt is counted in (shared by the clients of
        :meth:`for_key`); default: one of its own, :attr:`health`.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_base: float = DEFAULT_BACKOFF_BASE_SECONDS,
        backoff_cap: float = DEFAULT_BACKOFF_CAP_SECONDS,
        http_client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        limiter: RateLimiter | None = None,
        pool_owner: JinaClient | None = None,
        health: UpstreamHealth | None = None,
    ) -> None:
        if max_attempts < 1:
            raise InvalidInputError(f"max_attempts must be at least 1, got {max_attempts}")
        if not timeout > 0:
            raise InvalidInputError(f"timeout must be a positive number of seconds, got {timeout}")
        for name, seconds in (("backoff_base", backoff_base), ("backoff_cap", backoff_cap)):
            if not seconds >= 0:
                raise InvalidInputError(f"{name} must not be negative, got {seconds}")
        self._api_key = api_key
        #: As given, for the clients of :meth:`for_key` and to scrub messages with; never shown.
        self._given = resolve_base_url(base_url)
        self._root = without_userinfo(self._given)
        #: The API root as it may be shown: any credentials in it replaced by ``***``.
        self.base_url = redact_url(self._given)
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._sleep = sleep
        self._timeout = timeout
        self._transport = transport
        self._owns_http = http_client is None and pool_owner is None
        self._http = http_client
        self._http_lock = threading.Lock()
        self._pool_owner = pool_owner
        self.limiter = limiter
        #: Attempts, retries, failures and answer times (for the proxy's dashboard).
        self.health = health if health is not None else UpstreamHealth()
        self._float_style: FloatStyle | None = None  # learning nothing

    def __repr__(self) -> str:
        key = "'***'" if self._api_key else "None"
        return f"JinaClient(base_url={self.base_url!r}, api_key={key})"

    def close(self) -> None:
        """Close the connection pool if this client created it."""
        if self._owns_http and self._http is not None:
            self._http.close()
            self._http = None

    def _client(self) -> httpx.Client:
        if self._pool_owner is not None:
            return self._pool_owner._client()
        # Built on first use: a run served entirely from cache never pays for TLS setup.
        with self._http_lock:
            if self._http is None:
                self._http = httpx.Client(
                    timeout=httpx.Timeout(self._timeout, connect=DEFAULT_CONNECT_TIMEOUT_SECONDS),
                    transport=self._transport,
                    headers={"User-Agent": f"embedcache/{VERSION}"},
                )
            return self._http

    def for_key(self, api_key: str | None, *, max_attempts: int | None = None) -> JinaClient:
        """A client that sends with ``api_key`` (``None``: the environment's) through this
        client's connection pool and rate limiter (the proxy's one client per caller key).

        Closing it leaves the pool open: the pool belongs to this client.
        """
        return JinaClient(
            api_key,
            base_url=self._given,
            timeout=self._timeout,
            max_attempts=self.max_attempts if max_attempts is None else max_attempts,
            backoff_base=self.backoff_base,
            backoff_cap=self.backoff_cap,
            sleep=self._sleep,
            limiter=self.limiter,
            pool_owner=self,
            health=self.health,
        )

    @property
    def float_style(self) -> FloatStyle | None:
        """What this client learns the upstream's float text style into (shared with the
        clients of :meth:`for_key`, made before or after): ``None`` until
        :meth:`learn_float_style`."""
        root = self._pool_owner if self._pool_owner is not None else self
        return root._float_style

    def learn_float_style(self, into: FloatStyle | None = None) -> FloatStyle:
        """Ask for ``float`` text instead of base64 until an answer shows how the upstream
        writes floats, then go back to base64; passthrough answers with float embeddings
        (:meth:`forward`) teach it too, and so do the answers of every client
        :meth:`for_key` made. Returns the object it is learned into.

        The vectors are the same float32 values either way (each value is checked to be
        one as it is read), so what is stored under a key that says base64 is unchanged.

        :param into: where to keep it (the proxy's, made before its workers fork, so each
            reads what any learned); default: a new :class:`FloatStyle`.
        """
        root = self._pool_owner if self._pool_owner is not None else self
        style = root._float_style = into if into is not None else FloatStyle()
        style.start()
        return style

    def embed(self, texts: Sequence[Input], options: RequestOptions) -> UpstreamResult:
        """Embed one batch, retrying transient failures.

        :raises AuthenticationError: no key, or the API refused it.
        :raises RateLimitError: still 429 after the last attempt.
        :raises APIError: any other error status.
        :raises TransportError: no HTTP response after the last attempt.
        :raises ResponseFormatError: a 2xx response that cannot be parsed.
        """
        key = resolve_api_key(self._api_key)
        body = options.body_fields()
        body["input"] = wire_inputs(texts)
        floats = self._learning() if body["embedding_type"] == "base64" else None
        if floats is not None:
            body["embedding_type"] = "float"  # the same values, as text in the upstream's style
        estimate = sum(map(estimate_input, texts)) if self.limiter is not None else 0
        parsed: list[UpstreamResult] = []
        kind = None if options.plain else options  # rows or packed bits: decoded as payloads

        def charge(response: httpx.Response) -> int:
            parsed.append(parse(response, len(texts), floats, kind))
            return parsed[0].total_tokens

        request = {"json": body, "path": options.path}
        response, attempts = self._post(key, request, estimate, charge)
        if response.is_success:
            return parsed[0]
        raise _final_error(response, attempts, key)

    def rerank(
        self, query: RerankInput, documents: Sequence[RerankInput], model: str
    ) -> UpstreamScores:
        """Score every document of ``documents`` for ``query`` with ``model`` (one
        ``POST /v1/rerank``, ``return_documents`` false, no ``top_n``: all of them), with the
        same retries, pacing and errors as :meth:`embed`.

        :raises ResponseFormatError: an answer that does not score each document once with
            a finite number; nothing of it is to be cached.
        """
        key = resolve_api_key(self._api_key)
        body = {
            "model": model,
            "query": query if isinstance(query, str) else query.wire(),
            "documents": wire_inputs(documents),
            "return_documents": False,
        }
        estimate = 0
        if self.limiter is not None:
            # A pointwise model reads the query with each document (as the API charges).
            reads = 1 if is_listwise(model) else len(documents)
            estimate = estimate_input(query) * reads + sum(map(estimate_input, documents))
        parsed: list[UpstreamScores] = []

        def charge(response: httpx.Response) -> int:
            parsed.append(parse_scores(response, len(documents)))
            return parsed[0].total_tokens

        request = {"json": body, "path": RERANK_PATH}
        response, attempts = self._post(key, request, estimate, charge)
        if response.is_success:
            return parsed[0]
        raise _final_error(response, attempts, key)

    def forward(self, content: bytes, path: str = EMBEDDINGS_PATH) -> Forwarded:
        """Send a request body the cache cannot answer (images, options it does not cover)
        as it is, with the same retries and pacing as :meth:`embed`; the final answer comes
        back as it is too, error statuses included.

        :param path: the API path it was sent to (``/v1/multi-vector`` for ColBERT).

        :raises AuthenticationError: no key to send.
        :raises TransportError: no HTTP response after the last attempt.
        """
        key = resolve_api_key(self._api_key)
        headers = {"Content-Type": "application/json"}
        # Only the limiter needs a forwarded answer's usage: without one, it is not parsed.
        charge = usage if self.limiter is not None else no_usage
        request = {"content": content, "headers": headers, "path": path}
        response, _ = self._post(key, request, 0, charge)
        floats = self._learning()
        if floats is not None and response.is_success:
            learn_from(response, floats)
        kind = response.headers.get("content-type", "application/json")
        return Forwarded(response.status_code, response.content, kind)

    def _learning(self) -> FloatStyle | None:
        """The float style to learn from the next answer, if one is being learned."""
        style = self.float_style
        return style if style is not None and style.active else None

    def _post(
        self,
        key: str,
        request: dict[str, Any],
        estimate: int,
        charge: Callable[[httpx.Response], int],
    ) -> tuple[httpx.Response, int]:
        """``POST`` to the embeddings endpoint until an answer is final: a success (whose
        tokens ``charge`` tells the limiter, and may raise for a bad body), a status not
        worth retrying, or the last attempt's answer. Returns it and the attempts made.

        :raises TransportError: no HTTP response after the last attempt.
        """
        path = request.pop("path", EMBEDDINGS_PATH)
        url, shown = self._root + path, self.base_url + path
        headers = {"Authorization": f"Bearer {key}", **request.pop("headers", {})}
        http = self._client()
        for attempt in range(1, self.max_attempts + 1):
            last = attempt == self.max_attempts
            permit = self.limiter.acquire(estimate) if self.limiter is not None else None
            charged: int | None = 0  # a failed attempt costs nothing
            started = time.perf_counter()
            try:
                try:
                    response = http.post(url, headers=headers, **request)
                except HTTPX_EXCEPTIONS as exc:  # every one httpx has: see failures.py
                    failure = failure_of(exc)
                    # httpx's text may hold the URL: shown, like ours, without credentials.
                    reason = type(exc).__name__ + (f": {exc}" if str(exc) else "")
                    reason = self._clean(reason, key)
                    self.health.attempted(attempt, time.perf_counter() - started, None)
                    self.health.failed(None, f"{failure.doing} {shown}: {reason}")
                    if not failure.retry:
                        raise failure.error(f"{failure.doing} {shown}: {reason}") from None
                    charged = None  # it may have reached the API: keep the estimate
                    if last:
                        raise failure.error(
                            f"no response from {shown} after {attempt} attempts ({reason})"
                        ) from None
                    self._wait(attempt, None, reason)
                    continue
                self._observe(response)
                self.health.attempted(attempt, time.perf_counter() - started, response.status_code)
                if not response.is_success:  # rare: its body is read for the message
                    status = response.status_code
                    self.health.failed(status, self._clean(str(_api_error(response, key)), key))
                if response.is_success:
                    charged = charge(response)
                    return response, attempt
            finally:
                if permit is not None:
                    permit.done(charged)
            if response.status_code not in RETRYABLE_STATUSES or last:
                return response, attempt
            retry_after = response.headers.get("Retry-After")
            if response.status_code == 429 and self.limiter is not None:
                # Everyone waits, not just this batch: the limiter's next acquire does.
                self.limiter.rate_limited_by_server(_parse_retry_after(retry_after))
                continue
            self._wait(attempt, retry_after, f"HTTP {response.status_code}")
        raise AssertionError("unreachable")  # pragma: no cover

    def _observe(self, response: httpx.Response) -> None:
        """Pass the API's remaining-budget headers to the limiter."""
        if self.limiter is not None:
            self.limiter.server_remaining(
                _header_int(response, "X-RateLimit-Remaining-Requests"),
                _header_int(response, "X-RateLimit-Remaining-Tokens"),
            )

    def _wait(self, attempt: int, retry_after: str | None, reason: str) -> None:
        delay = _parse_retry_after(retry_after)
        if delay is None:
            ceiling = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
            # Half fixed, half random: spreads concurrent retries without ever retrying at once.
            delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        log.warning(
            "Jina API: %s; attempt %d of %d failed, retrying in %.2fs",
            reason, attempt, self.max_attempts, delay,
        )  # fmt: skip
        self._sleep(delay)

    @staticmethod
    def _scrub(text: str, key: str) -> str:
        return text.replace(key, "***") if key else text

    def _clean(self, text: str, key: str) -> str:
        """``text`` without the API key or the base URL's credentials."""
        return redact_text(self._scrub(text, key), self._given)


def wire_inputs(texts: Sequence[Input]) -> list[object] | dict[str, str]:
    """A batch's ``input`` as the API takes it: texts as they are, images and PDFs as their
    items (:meth:`~embedcache.inputs.Media.wire`); a PDF, which goes alone, as the object
    itself, not in a list."""
    if set(map(type, texts)) <= {str}:
        return list(texts)
    if len(texts) == 1 and isinstance(texts[0], Media) and texts[0].kind == "pdf":
        return texts[0].wire()
    return [text if isinstance(text, str) else text.wire() for text in texts]


def _header_int(response: httpx.Response, name: str) -> int | None:
    raw = response.headers.get(name)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL_CHARS else text[: _MAX_DETAIL_CHARS - 1] + "…"


def _final_error(response: httpx.Response, attempts: int, key: str) -> APIError:
    """The error of a request's final answer (a 429 says how many attempts were made)."""
    error = _api_error(response, key)
    if response.status_code != 429:
        return error
    return RateLimitError(
        f"{error} (gave up after {attempts} attempts)",
        status=error.status,
        code=error.code,
        detail=error.detail,
        request_id=error.request_id,
    )


def _api_error(response: httpx.Response, key: str) -> APIError:
    """Map an error response to an exception carrying Jina's code, detail and request id."""
    status = response.status_code
    code = detail = None
    request_id = response.headers.get("x-request-id")
    try:
        payload: Any = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        code = payload.get("code") if isinstance(payload.get("code"), str) else None
        raw = payload.get("detail")
        if isinstance(raw, list):  # FastAPI-style validation errors
            raw = "; ".join(str(item.get("msg", item)) for item in raw if isinstance(item, dict))
        # Scrubbed before shortening: a key cut in two by the cut would no longer match.
        detail = _one_line(JinaClient._scrub(str(raw), key)) if raw else None
        request_id = payload.get("request_id") or request_id
    message = f"Jina API returned HTTP {status}"
    if code:
        message += f" {code}"
    if detail:
        message += f": {detail}"
    elif payload is None:
        kind = response.headers.get("content-type", "unknown type").split(";")[0]
        message += f" with a non-JSON body ({kind})"
    if request_id:
        message += f" (request id {request_id})"
    auth = status == 401 or (status == 403 and (code or "").startswith("AUTH_"))
    cls = AuthenticationError if auth else APIError
    return cls(message, status=status, code=code, detail=detail, request_id=request_id)
