"""Pacing requests to an account's rate limits, so fills never provoke a storm of 429s.

Jina limits each account per minute, in requests and in tokens, and in concurrent requests
(reference §5.3). One :class:`RateLimiter` per process is shared by every batch in flight
(library, CLI and proxy alike). Before a request it waits until the request fits the budgets
of the last ``window`` seconds, a sliding window: the strictest reading of "per minute", so
pacing to it never exceeds a server that counts per calendar minute either. Token counts
are estimated before sending (the same estimate a dry run reports) and corrected from the
response's ``usage``; the ratio between the two then scales later estimates.

A 429 despite pacing (another process sharing the key, limits lower than configured) backs
the whole limiter off, honouring ``Retry-After`` when the API sends one, and shrinks its
budgets; successes restore them step by step.

All of it reads the time and waits for it to pass through one :class:`Clock`, real
monotonic time unless a test passes a fake one that advances instantly.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Protocol

from ..config import CONCURRENT_REQUESTS_ENV, RPM_ENV, TIER_ENV, TPM_ENV
from ..config import OLD_CONCURRENT_REQUESTS_ENV as _OLD_CONCURRENT_REQUESTS_ENV
from ..errors import InvalidInputError

__all__ = ["TIERS", "Clock", "Limits", "Pacing", "RateLimiter", "resolve_limits", "shared_limiter"]

log = logging.getLogger("embedcache")

_MIN_SCALE = 0.25  # budgets never shrink below a quarter of the configured limits
_RECOVERY_STEP = 0.05  # each success gives back this fraction of the limits
_FIRST_BACKOFF_SECONDS = 1.0
# A request is counted by the API when it arrives, a little after we send it: treat each
# window as this much longer, so a budget is never reused before the API has freed it.
_WINDOW_SLACK = 0.02


@dataclass(frozen=True)
class Limits:
    """An account's limits; ``None`` means unlimited.

    :param rpm: requests per window.
    :param tpm: tokens per window.
    :param concurrent_requests: requests in flight at once.
    :param window: seconds the per-minute budgets cover (60; tests shrink it).
    """

    rpm: int | None = None
    tpm: int | None = None
    concurrent_requests: int | None = None
    window: float = 60.0

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "concurrent_requests"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidInputError(f"{name} must be at least 1, got {value}")
        if self.window <= 0:
            raise InvalidInputError(f"window must be positive, got {self.window}")

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None and self.concurrent_requests is None

    def seconds_for(self, requests: int, tokens: int) -> float:
        """The least time ``requests`` requests carrying ``tokens`` tokens take under these
        limits (not counting the API's own latency): each window's budget goes at once, so
        the last request leaves at the start of the last window needed."""
        windows = 0
        if self.rpm:
            windows = max(windows, math.ceil(requests / self.rpm) - 1)
        if self.tpm:
            windows = max(windows, math.ceil(tokens / self.tpm) - 1)
        return windows * self.window

    def pace_seconds(self, requests: float, tokens: float) -> float:
        """Time ``requests`` requests carrying ``tokens`` tokens take at the budgets'
        steady pace, once a fill's first window is spent (for ETAs)."""
        windows = 0.0
        if self.rpm:
            windows = max(windows, requests / self.rpm)
        if self.tpm:
            windows = max(windows, tokens / self.tpm)
        return windows * self.window


#: The API's tiers (reference §5.3, 2026 spec): requests and tokens per minute, concurrency.
TIERS = {
    "free": Limits(rpm=500, tpm=1_000_000, concurrent_requests=5),
    "1": Limits(rpm=500, tpm=10_000_000, concurrent_requests=50),
    "2": Limits(rpm=5_000, tpm=100_000_000, concurrent_requests=500),
}


def resolve_limits(
    *,
    tier: str | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    concurrent_requests: int | None = None,
) -> Limits:
    """Limits from a tier preset, overridden field by field by explicit values, each from
    its argument, else its environment variable (``EMBEDCACHE_TIER``, ``EMBEDCACHE_RPM``,
    ``EMBEDCACHE_TPM``, ``EMBEDCACHE_CONCURRENT_REQUESTS``; the old name of the last,
    ``EMBEDCACHE_MAX_CONCURRENCY``, is still read, with a warning: it was mistaken for
    ``--max-concurrency``)."""
    tier = tier or os.environ.get(TIER_ENV) or None
    if tier is not None and tier not in TIERS:
        raise InvalidInputError(f"unknown tier {tier!r}; known: {', '.join(TIERS)}")
    base = TIERS[tier] if tier else Limits()
    return replace(
        base,
        rpm=rpm or _env_int(RPM_ENV) or base.rpm,
        tpm=tpm or _env_int(TPM_ENV) or base.tpm,
        concurrent_requests=concurrent_requests
        or _env_int(CONCURRENT_REQUESTS_ENV)
        or _env_int(_OLD_CONCURRENT_REQUESTS_ENV)
        or base.concurrent_requests,
    )


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if name == _OLD_CONCURRENT_REQUESTS_ENV:
        log.warning("%s is now %s; please rename it", name, CONCURRENT_REQUESTS_ENV)
    try:
        return int(raw.replace("_", ""))
    except ValueError:
        raise InvalidInputError(f"{name} must be a whole number, got {raw!r}") from None


class Clock(Protocol):
    """The time a :class:`RateLimiter` paces by, and its way of waiting for it to pass."""

    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def wait(self, condition: threading.Condition, timeout: float | None) -> None:
        """Wait on ``condition``, which the caller holds, until it is notified or
        ``timeout`` seconds of this clock have passed (``None``: until notified). Returning
        early is allowed: the caller checks the time again."""
        ...


class MonotonicClock:
    """Real time: :func:`time.monotonic`, and a plain condition wait."""

    def now(self) -> float:
        return time.monotonic()

    def wait(self, condition: threading.Condition, timeout: float | None) -> None:
        condition.wait(timeout)


#: The clock every limiter uses unless given another.
MONOTONIC = MonotonicClock()


class Permit:
    """One admitted request; :meth:`done` it with the tokens the response charged."""

    __slots__ = ("_limiter", "_open", "estimate", "in_window", "sent", "tokens")

    def __init__(self, limiter: RateLimiter, sent: float, tokens: float, estimate: int) -> None:
        self._limiter = limiter
        self.sent = sent
        self.tokens = tokens
        self.estimate = estimate
        self._open = True
        #: Whether it still counts against the window's budgets.
        self.in_window = True

    def done(self, charged: int | None) -> None:
        """The request is over: ``charged`` tokens (``None``: not known, keep the estimate;
        0 for a failed request, which costs nothing)."""
        if self._open:
            self._open = False
            self._limiter._finish(self, charged)


@dataclass(frozen=True)
class Pacing:
    """A limiter's state: :attr:`RateLimiter.budget_scale`, the requests and (estimated)
    tokens admitted in the current window, requests in flight, how long everyone is paused
    for after a 429, the 429s seen and the seconds requests spent waiting, in all."""

    scale: float
    window_requests: int
    window_tokens: float
    in_flight: int
    paused_seconds: float
    rate_limited: int
    waited_seconds: float


class RateLimiter:
    """Shared pacing for every request of a process (see the module docstring).

    :param limits: the account's limits.
    :param clock: what it reads the time from and waits with; tests pass a fake one so
        that waits take no real time.
    """

    def __init__(self, limits: Limits, clock: Clock = MONOTONIC) -> None:
        self.limits = limits
        self._clock = clock
        self._cond = threading.Condition()
        self._log: deque[Permit] = deque()  # admitted in the current window, oldest first
        self._window_tokens = 0.0
        self._in_flight = 0
        self._paused_until = 0.0
        self._scale = 1.0
        self._backoff = _FIRST_BACKOFF_SECONDS
        self._ratio = 1.0  # charged / estimated tokens, learnt from responses
        #: 429s seen despite pacing (for reports and tests).
        self.rate_limited = 0
        #: Seconds requests spent waiting to be admitted, in all (for the dashboard).
        self.waited_seconds = 0.0

    def __repr__(self) -> str:
        return f"RateLimiter({self.limits!r})"

    @property
    def budget_scale(self) -> float:
        """The fraction of the configured budgets in use: below 1 after 429s."""
        return self._scale

    def acquire(self, estimated_tokens: int) -> Permit:
        """Wait until a request of ``estimated_tokens`` fits every budget, and admit it."""
        with self._cond:
            arrived = None
            while True:
                now = self._clock.now()
                self._expire(now)
                tokens = estimated_tokens * self._ratio
                wait = self._wait_for(now, tokens)
                if wait == 0.0:
                    if arrived is not None:
                        self.waited_seconds += now - arrived
                    permit = Permit(self, now, tokens, estimated_tokens)
                    self._log.append(permit)
                    self._window_tokens += tokens
                    self._in_flight += 1
                    return permit
                arrived = now if arrived is None else arrived
                self._clock.wait(self._cond, wait)

    def pacing(self) -> Pacing:
        """What the limiter is doing now (for the proxy's dashboard)."""
        with self._cond:
            now = self._clock.now()
            self._expire(now)
            return Pacing(
                scale=self._scale,
                window_requests=len(self._log),
                window_tokens=self._window_tokens,
                in_flight=self._in_flight,
                paused_seconds=max(0.0, self._paused_until - now),
                rate_limited=self.rate_limited,
                waited_seconds=self.waited_seconds,
            )

    def rate_limited_by_server(self, retry_after: float | None) -> None:
        """A 429 came back anyway: pause everyone and shrink the budgets."""
        with self._cond:
            self.rate_limited += 1
            pause = retry_after if retry_after is not None else self._backoff
            self._backoff = min(self._backoff * 2, self.limits.window)
            self._paused_until = max(self._paused_until, self._clock.now() + pause)
            self._scale = max(_MIN_SCALE, self._scale * 0.8)
            log.warning(
                "rate limited despite pacing: pausing all requests %.1fs, budgets at %d%%",
                pause, round(self._scale * 100),
            )  # fmt: skip
            self._cond.notify_all()

    def server_remaining(self, requests: int | None, tokens: int | None) -> None:
        """The API's ``X-RateLimit-Remaining-*`` after a response. When it says a budget is
        spent while our own count says otherwise (another process on the key, a limit set
        too high), pause briefly rather than wait for the 429. The headers' exact semantics
        are unconfirmed, so this only ever slows down."""
        if requests != 0 and tokens != 0:
            return
        with self._cond:
            now = self._clock.now()
            self._expire(now)
            limits = self.limits
            room_requests = limits.rpm is None or len(self._log) < limits.rpm * self._scale
            room_tokens = limits.tpm is None or self._window_tokens < limits.tpm * self._scale
            if (requests == 0 and room_requests) or (tokens == 0 and room_tokens):
                self._paused_until = max(self._paused_until, now + limits.window / 12)

    def _wait_for(self, now: float, tokens: float) -> float | None:
        """Seconds to wait before admitting (``None``: until a request finishes), or 0."""
        limits = self.limits
        if self._paused_until > now:
            return self._paused_until - now
        if limits.concurrent_requests is not None and self._in_flight >= limits.concurrent_requests:
            return None
        span = self._span
        if limits.rpm is not None:
            allowed = max(1, math.floor(limits.rpm * self._scale))
            if len(self._log) >= allowed:
                return self._log[len(self._log) - allowed].sent + span - now
        if limits.tpm is not None and self._log:
            budget = limits.tpm * self._scale
            # A request bigger than the whole budget goes alone, into an empty window.
            need = self._window_tokens + min(tokens, budget) - budget
            if need > 0:
                for permit in self._log:
                    need -= permit.tokens
                    if need <= 0:
                        return permit.sent + span - now
        return 0.0

    @property
    def _span(self) -> float:
        return self.limits.window * (1 + _WINDOW_SLACK)

    def _expire(self, now: float) -> None:
        horizon = now - self._span
        while self._log and self._log[0].sent <= horizon:
            expired = self._log.popleft()
            expired.in_window = False
            self._window_tokens -= expired.tokens

    def _finish(self, permit: Permit, charged: int | None) -> None:
        with self._cond:
            self._in_flight -= 1
            if charged is not None:
                if charged and permit.estimate:
                    self._ratio = 0.8 * self._ratio + 0.2 * max(charged / permit.estimate, 0.5)
                if permit.in_window:
                    self._window_tokens += charged - permit.tokens
                permit.tokens = charged
                if charged:  # a success: give budgets back
                    self._scale = min(1.0, self._scale + _RECOVERY_STEP)
                    self._backoff = _FIRST_BACKOFF_SECONDS
            self._cond.notify_all()


_SHARED: dict[Limits, RateLimiter] = {}
_SHARED_LOCK = threading.Lock()


def shared_limiter(limits: Limits) -> RateLimiter | None:
    """The process's limiter for ``limits`` (one per distinct limits, so every client
    configured alike paces together); ``None`` when nothing is limited."""
    if limits.unlimited:
        return None
    with _SHARED_LOCK:
        limiter = _SHARED.get(limits)
        if limiter is None:
            limiter = _SHARED[limits] = RateLimiter(limits)
        return limiter
