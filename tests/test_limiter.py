"""The client-side rate limiter: budgets over a sliding window, concurrency, backoff.

Windows are shrunk to a fraction of a second. Assertions are on the order of events and on
lower bounds the limiter guarantees (a request waits at least until budget frees up), never
on how fast anything runs.
"""

from __future__ import annotations

import threading
import time

import pytest

from embedcache import JinaClient, RequestOptions
from embedcache.errors import InvalidInputError
from embedcache.testing import Fault, JinaEmulator
from embedcache.upstream.limiter import TIERS, Limits, RateLimiter, resolve_limits, shared_limiter

from .conftest import API_KEY

WINDOW = 0.3


def test_requests_beyond_the_rpm_wait_until_the_oldest_leaves_the_window() -> None:
    limiter = RateLimiter(Limits(rpm=3, window=WINDOW))
    first, *_ = [limiter.acquire(1) for _ in range(3)]
    fourth = limiter.acquire(1)
    assert fourth.sent - first.sent >= WINDOW


def test_tokens_beyond_the_tpm_wait_and_a_request_larger_than_it_goes_alone() -> None:
    limiter = RateLimiter(Limits(tpm=100, window=WINDOW))
    first = limiter.acquire(60)
    first.done(60)
    second = limiter.acquire(60)
    assert second.sent - first.sent >= WINDOW
    second.done(60)
    huge = limiter.acquire(500)  # can never fit: sent into an empty window
    assert huge.sent - second.sent >= WINDOW


def test_no_more_than_the_concurrency_are_in_flight() -> None:
    limiter = RateLimiter(Limits(concurrent_requests=2))
    held = [limiter.acquire(1), limiter.acquire(1)]
    admitted = threading.Event()
    thread = threading.Thread(target=lambda: (limiter.acquire(1), admitted.set()))
    thread.start()
    assert not admitted.wait(0.2)
    held[0].done(1)
    assert admitted.wait(5)
    thread.join()


def test_charged_tokens_correct_the_window_and_scale_later_estimates() -> None:
    limiter = RateLimiter(Limits(tpm=1_000_000, window=WINDOW))
    for _ in range(10):
        limiter.acquire(100).done(200)  # the API charges twice the estimate
    assert limiter.acquire(100).tokens > 150


def test_a_429_pauses_everyone_shrinks_budgets_and_successes_restore_them() -> None:
    limiter = RateLimiter(Limits(rpm=100, window=WINDOW))
    before = time.monotonic()
    limiter.rate_limited_by_server(0.2)
    assert limiter.acquire(1).sent - before >= 0.2
    assert limiter.rate_limited == 1
    assert limiter.budget_scale < 1.0
    for _ in range(10):
        limiter.acquire(1).done(1)
    assert limiter.budget_scale == 1.0


def test_limits_come_from_a_tier_overridden_by_arguments_and_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert resolve_limits() == Limits()
    assert resolve_limits(tier="free") == TIERS["free"]
    assert resolve_limits(tier="free", tpm=5).tpm == 5
    monkeypatch.setenv("EMBEDCACHE_TIER", "2")
    monkeypatch.setenv("EMBEDCACHE_RPM", "1_000")
    assert resolve_limits() == Limits(rpm=1000, tpm=100_000_000, concurrent_requests=500)
    monkeypatch.setenv("EMBEDCACHE_TPM", "lots")
    with pytest.raises(InvalidInputError, match="EMBEDCACHE_TPM"):
        resolve_limits()
    with pytest.raises(InvalidInputError, match="unknown tier 'gold'"):
        resolve_limits(tier="gold")


def test_one_limiter_per_process_for_the_same_limits() -> None:
    limits = Limits(rpm=7, window=WINDOW)
    assert shared_limiter(limits) is shared_limiter(Limits(rpm=7, window=WINDOW))
    assert shared_limiter(Limits()) is None


def test_the_least_time_a_fill_takes_under_limits() -> None:
    limits = Limits(rpm=100, tpm=1000, window=60)
    assert limits.seconds_for(50, 500) == 0  # fits the first window
    assert limits.seconds_for(50, 3000) == 120  # three windows of tokens
    assert limits.seconds_for(50, 2500) == 120  # the last 500 still need a third window
    assert limits.seconds_for(300, 10) == 120  # three windows of requests


def test_the_client_reports_a_429_to_the_limiter_and_retries_after_the_pause(
    emulator: JinaEmulator,
) -> None:
    limiter = RateLimiter(Limits(rpm=1000, window=WINDOW))
    emulator.inject(Fault(status=429, retry_after="0"))
    client = JinaClient(API_KEY, base_url=emulator.url, limiter=limiter)
    result = client.embed(["paced"], RequestOptions("jina-embeddings-v3"))
    client.close()
    assert result.vectors.shape == (1, 1024)
    assert limiter.rate_limited == 1
    assert [request.status for request in emulator.requests] == [429, 200]
