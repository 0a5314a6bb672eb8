"""Rate limiting for the emulator: per-key request and token budgets, and a concurrency cap.

Semantics (reference §5.2-5.3; what the reference leaves UNCONFIRMED is configurable):

* Budgets are per API key (bearer token) over a sliding window of ``window`` seconds: a
  request is admitted only if the requests admitted in the last ``window`` seconds plus
  this one stay within ``rpm``, the tokens charged in that window plus this request's
  tokens (its response's ``usage.total_tokens``) stay within ``tpm``, and fewer than
  ``concurrency`` requests of that key are in flight. An admitted request is charged when
  admitted; it stays in flight until its answer has been sent (the emulator's ``latency``
  included) or its connection dropped.
* A rejection is a 429 with a Jina-shaped body and code ``RATE_REQUEST_LIMIT_EXCEEDED``,
  ``RATE_TOKEN_LIMIT_EXCEEDED`` or ``RATE_CONCURRENCY_LIMIT_EXCEEDED``. It charges nothing.
  When several limits bind, the code names the first in that order, and the wait covers
  every time-based limit that binds.
* ``Retry-After`` (when enabled) is the wait until enough budget frees up, rounded up to
  whole seconds, at least 1. When a slot frees under the concurrency cap is not known in
  advance, so a concurrency rejection says ``Retry-After: 1``. A request whose own tokens
  exceed ``tpm`` can never be admitted: it gets ``RATE_TOKEN_LIMIT_EXCEEDED`` saying so, and
  no ``Retry-After`` (no wait helps).

The exact wait, which a shrunken window needs below a second, is logged in
:attr:`RecordedRequest.wait <embedcache.testing.RecordedRequest.wait>`. Keys are held only
as SHA-256 digests, so no limiter state can leak one.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .protocol import ApiError

__all__ = [
    "RATE_CONCURRENCY_LIMIT_EXCEEDED",
    "RATE_REQUEST_LIMIT_EXCEEDED",
    "RATE_TOKEN_LIMIT_EXCEEDED",
    "Admission",
    "LimitEnforcer",
    "RateLimited",
    "RateLimits",
]

RATE_REQUEST_LIMIT_EXCEEDED = "RATE_REQUEST_LIMIT_EXCEEDED"
RATE_TOKEN_LIMIT_EXCEEDED = "RATE_TOKEN_LIMIT_EXCEEDED"  # noqa: S105 (an error code)
RATE_CONCURRENCY_LIMIT_EXCEEDED = "RATE_CONCURRENCY_LIMIT_EXCEEDED"


@dataclass(frozen=True)
class RateLimits:
    """The emulator's rate limits; ``None`` leaves that limit off.

    The real API's free tier is ``RateLimits(rpm=500, tpm=1_000_000, concurrent_requests=5)``
    (reference §5.3). Limits apply to ``POST /v1/embeddings`` after the auth check and
    validation, so requests refused for those consume no budget; injected faults that
    replace the answer bypass them.

    :param rpm: requests admitted per key per ``window``.
    :param tpm: usage tokens charged per key per ``window``.
    :param concurrent_requests: requests of one key in flight at once.
    :param window: seconds the per-"minute" budgets cover (tests shrink it).
    :param retry_after: send ``Retry-After`` (whole seconds, at least 1) on 429s; whether the
        API does is UNCONFIRMED, so clients must cope either way.
    :param headers: send ``X-RateLimit-Limit-Requests`` / ``-Remaining-Requests`` (with
        ``rpm``) and ``-Limit-Tokens`` / ``-Remaining-Tokens`` (with ``tpm``) on admitted
        requests and rate-limit 429s; the API's values are UNCONFIRMED.
    """

    rpm: int | None = None
    tpm: int | None = None
    concurrent_requests: int | None = None
    window: float = 60.0
    retry_after: bool = True
    headers: bool = True

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "concurrent_requests"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ValueError(f"RateLimits.{name} must be None or at least 1, got {value!r}")
        if not (math.isfinite(self.window) and self.window > 0):
            raise ValueError(f"RateLimits.window must be a positive number, got {self.window!r}")


class RateLimited(ApiError):
    """A 429 from the limiter, with its headers and the exact wait.

    :param wait: seconds until the request would be admitted, or ``None`` when not known.
    :param headers: response headers to send with it.
    """

    def __init__(
        self, code: str, detail: str, *, wait: float | None, headers: dict[str, str]
    ) -> None:
        super().__init__(429, code, detail)
        self.wait = wait
        self.headers = headers


@dataclass(eq=False)  # identity equality: a refund removes this very charge
class _Charge:
    at: float
    tokens: int


@dataclass(eq=False)
class _KeyState:
    charges: deque[_Charge] = field(default_factory=deque)
    tokens: int = 0  # sum over ``charges``
    in_flight: int = 0

    def expire(self, now: float, window: float) -> None:
        while self.charges and self.charges[0].at + window <= now:
            self.tokens -= self.charges.popleft().tokens


class Admission:
    """An admitted request: its response headers, and the slot to give back when done."""

    def __init__(
        self, limiter: LimitEnforcer, digest: bytes, charge: _Charge, headers: dict[str, str]
    ) -> None:
        self._limiter = limiter
        self._digest = digest
        self._charge = charge
        self._released = False
        #: ``X-RateLimit-*`` headers for the answer (empty when disabled).
        self.headers = headers

    def release(self, *, refund: bool = False) -> None:
        """Leave the in-flight count (idempotent); ``refund`` also uncharges the request,
        for one that failed after admission."""
        self._limiter._release(self, refund=refund)


class LimitEnforcer:
    """Thread-safe per-key bookkeeping: charges within the window, requests in flight.

    :param clock: monotonic seconds; replaceable in tests.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[bytes, _KeyState] = {}

    def admit(self, key: str, tokens: int, limits: RateLimits) -> Admission:
        """Admit and charge a request of ``tokens`` for ``key``, or refuse it.

        :raises RateLimited: when a limit binds; nothing is charged then.
        """
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            now = self._clock()
            state = self._states.setdefault(digest, _KeyState())
            state.expire(now, limits.window)
            refusal = _refusal(state, tokens, limits, now)
            if refusal is not None:
                if not state.charges and not state.in_flight:
                    del self._states[digest]
                raise refusal
            charge = _Charge(now, tokens)
            state.charges.append(charge)
            state.tokens += tokens
            state.in_flight += 1
            return Admission(self, digest, charge, _headers(state, limits))

    def clear(self) -> None:
        """Forget every charge; requests in flight stay counted until released."""
        with self._lock:
            for digest, state in list(self._states.items()):
                state.charges.clear()
                state.tokens = 0
                if not state.in_flight:
                    del self._states[digest]

    def in_flight(self, key: str) -> int:
        """Requests of ``key`` admitted and not yet answered."""
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            state = self._states.get(digest)
            return state.in_flight if state is not None else 0

    def _release(self, admission: Admission, *, refund: bool) -> None:
        with self._lock:
            if admission._released:
                return
            admission._released = True
            state = self._states.get(admission._digest)
            if state is None:  # pragma: no cover (a state with requests in flight is kept)
                return
            state.in_flight -= 1
            if refund and admission._charge in state.charges:
                state.charges.remove(admission._charge)
                state.tokens -= admission._charge.tokens
            if not state.charges and not state.in_flight:
                del self._states[admission._digest]


def _refusal(state: _KeyState, tokens: int, limits: RateLimits, now: float) -> RateLimited | None:
    """The 429 for a request of ``tokens`` now, or ``None`` if it may pass."""
    rpm, tpm, cap = limits.rpm, limits.tpm, limits.concurrent_requests
    # The API's wording says "per minute"; a shrunken window is named as it is.
    per = "per minute" if limits.window == 60 else f"per {limits.window:g} s"
    if tpm is not None and tokens > tpm:
        detail = (
            f"Token rate limit exceeded: the request has {tokens} tokens, more than the "
            f"{tpm} tokens {per} allowed in total; split it into smaller requests"
        )
        return RateLimited(
            RATE_TOKEN_LIMIT_EXCEEDED, detail, wait=None, headers=_headers(state, limits)
        )
    found: list[tuple[str, str]] = []
    waits: list[float] = []
    count = len(state.charges)
    if rpm is not None and count + 1 > rpm:
        found.append(
            (
                RATE_REQUEST_LIMIT_EXCEEDED,
                f"Request rate limit exceeded: {count + 1}/{rpm} requests {per}",
            )
        )
        # The oldest (count - rpm + 1) charges must expire to leave room for one more.
        waits.append(state.charges[count - rpm].at + limits.window - now)
    if tpm is not None and state.tokens + tokens > tpm:
        found.append(
            (
                RATE_TOKEN_LIMIT_EXCEEDED,
                f"Token rate limit exceeded: {state.tokens + tokens}/{tpm} tokens {per}",
            )
        )
        waits.append(_token_wait(state, tokens, tpm, limits.window, now))
    if cap is not None and state.in_flight >= cap:
        found.append(
            (
                RATE_CONCURRENCY_LIMIT_EXCEEDED,
                f"Concurrency limit exceeded: {state.in_flight + 1}/{cap} concurrent requests",
            )
        )
    if not found:
        return None
    code, detail = found[0]
    wait = max(waits) if waits else None
    headers = _headers(state, limits)
    if limits.retry_after:
        # A concurrency-only refusal (wait unknown) gets the least the header can say.
        headers["Retry-After"] = str(max(1, math.ceil(wait or 0.0)))
    return RateLimited(code, detail, wait=wait, headers=headers)


def _token_wait(state: _KeyState, tokens: int, tpm: int, window: float, now: float) -> float:
    """Seconds until enough charges expire for ``tokens`` more to fit within ``tpm``."""
    used = state.tokens
    for charge in state.charges:
        used -= charge.tokens
        if used + tokens <= tpm:
            return charge.at + window - now
    raise AssertionError("unreachable: tokens <= tpm, so an empty window fits them")


def _headers(state: _KeyState, limits: RateLimits) -> dict[str, str]:
    """``X-RateLimit-*`` headers as of now (after the charge, for an admission)."""
    headers: dict[str, str] = {}
    if limits.headers:
        if limits.rpm is not None:
            headers["X-RateLimit-Limit-Requests"] = str(limits.rpm)
            headers["X-RateLimit-Remaining-Requests"] = str(max(limits.rpm - len(state.charges), 0))
        if limits.tpm is not None:
            headers["X-RateLimit-Limit-Tokens"] = str(limits.tpm)
            headers["X-RateLimit-Remaining-Tokens"] = str(max(limits.tpm - state.tokens, 0))
    return headers
