"""The client-side rate limiter: budgets over a sliding window, concurrency, backoff.

Every limiter here runs on a fake clock whose waits advance it at once, so the tests take
no real time and check exactly when each request is let go (a minute-long window costs
nothing). Only the end-to-end test against the emulator uses real time, and never waits.
"""

from __future__ import annotations

import threading

import pytest

from embedcache import JinaClient, RequestOptions
from embedcache.errors import InvalidInputError
from embedcache.testing import Fault, JinaEmulator
from embedcache.upstream.limiter import (
    _WINDOW_SLACK,
    TIERS,
    Limits,
    RateLimiter,
    resolve_limits,
    shared_limiter,
)

from .conftest import API_KEY, wait_for

WINDOW = 60.0
# A budget is reused only this long after it was spent: the window, and a margin for the
# API counting a request a little after it was sent.
SPAN = WINDOW * (1 + _WINDOW_SLACK)


class FakeClock:
    """A :class:`~embedcache.upstream.limiter.Clock` that jumps ahead by each timed wait
    instead of sleeping; a wait for a notification (no timeout) is a real one."""

    def __init__(self) -> None:
        self.time = 0.0
        #: Every wait the limiter asked for, in order (``None``: until notified).
        self.waits: list[float | None] = []

    def now(self) -> float:
        return self.time

    def wait(self, condition: threading.Condition, timeout: float | None) -> None:
        self.waits.append(timeout)
        if timeout is None:
            condition.wait(10)  # the limiter checks again when this returns, woken or not
        else:
            self.time += timeout


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_requests_beyond_the_rpm_wait_until_the_oldest_leaves_the_window(
    clock: FakeClock,
) -> None:
    limiter = RateLimiter(Limits(rpm=3, window=WINDOW), clock)
    first = limiter.acquire(1)
    clock.time = 10.0
    second, third = limiter.acquire(1), limiter.acquire(1)
    assert clock.waits == []  # the whole budget goes at once
    fourth = limiter.acquire(1)
    assert fourth.sent == pytest.approx(first.sent + SPAN)
    fifth = limiter.acquire(1)
    assert fifth.sent == pytest.approx(second.sent + SPAN)
    assert third.sent == second.sent


def test_tokens_beyond_the_tpm_wait_and_a_request_larger_than_it_goes_alone(
    clock: FakeClock,
) -> None:
    limiter = RateLimiter(Limits(tpm=100, window=WINDOW), clock)
    first = limiter.acquire(60)
    first.done(60)
    second = limiter.acquire(60)  # 60 + 60 > 100: only once the first has left
    assert second.sent == pytest.approx(first.sent + SPAN)
    second.done(60)
    huge = limiter.acquire(500)  # can never fit: sent into an empty window
    assert huge.sent == pytest.approx(second.sent + SPAN)
    assert huge.tokens == 500


def test_no_more_than_the_concurrency_are_in_flight(clock: FakeClock) -> None:
    limiter = RateLimiter(Limits(concurrent_requests=2), clock)
    held = [limiter.acquire(1), limiter.acquire(1)]
    admitted = threading.Event()

    def third() -> None:
        limiter.acquire(1)
        admitted.set()

    thread = threading.Thread(target=third)
    thread.start()
    # It waits for a request to finish, not for any time to pass.
    wait_for(lambda: clock.waits == [None], lambda: f"waits: {clock.waits}")
    assert not admitted.is_set()
    held[0].done(1)
    assert admitted.wait(5)
    thread.join()
    assert clock.time == 0.0


def test_charged_tokens_replace_the_estimate_in_the_window(clock: FakeClock) -> None:
    limiter = RateLimiter(Limits(tpm=1000, window=WINDOW), clock)
    first = limiter.acquire(100)
    first.done(900)  # the API charged far more than estimated
    # 100 + 50 would fit; 900 + 50 (and more, at the learnt ratio) does not.
    second = limiter.acquire(50)
    assert second.sent == pytest.approx(first.sent + SPAN)


def test_charged_tokens_scale_later_estimates(clock: FakeClock) -> None:
    limiter = RateLimiter(Limits(tpm=1_000_000, window=WINDOW), clock)
    for _ in range(10):
        limiter.acquire(100).done(200)  # the API charges twice the estimate
    assert 150 < limiter.acquire(100).tokens <= 200


def test_a_429_pauses_everyone_for_its_retry_after_and_shrinks_budgets(
    clock: FakeClock,
) -> None:
    limiter = RateLimiter(Limits(rpm=100, window=WINDOW), clock)
    limiter.rate_limited_by_server(7.0)
    assert limiter.acquire(1).sent == pytest.approx(7.0)
    assert limiter.rate_limited == 1
    assert limiter.budget_scale < 1.0


def test_without_retry_after_the_pause_doubles_until_a_success(clock: FakeClock) -> None:
    limiter = RateLimiter(Limits(rpm=100, window=WINDOW), clock)

    def pause_after_a_429() -> float:
        limited_at = clock.time
        limiter.rate_limited_by_server(None)
        permit = limiter.acquire(1)
        permit.done(0)  # failed again: charged nothing, and no success
        return permit.sent - limited_at

    pauses = [pause_after_a_429() for _ in range(3)]
    limiter.acquire(1).done(1)
    pauses.append(pause_after_a_429())
    assert pauses == pytest.approx([1.0, 2.0, 4.0, 1.0])


def test_successes_restore_the_budgets_step_by_step(clock: FakeClock) -> None:
    limiter = RateLimiter(Limits(rpm=100, window=WINDOW), clock)
    limiter.rate_limited_by_server(0.0)
    shrunk = limiter.budget_scale
    limiter.acquire(1).done(1)
    assert shrunk < limiter.budget_scale < 1.0
    for _ in range(10):
        limiter.acquire(1).done(1)
    assert limiter.budget_scale == 1.0


def test_a_spent_budget_the_server_reports_pauses_briefly(clock: FakeClock) -> None:
    limiter = RateLimiter(Limits(rpm=100, tpm=10_000, window=WINDOW), clock)
    limiter.acquire(1).done(1)
    limiter.server_remaining(requests=5, tokens=5000)  # budgets left: nothing to do
    assert limiter.acquire(1).sent == 0.0
    # Our own count has room, yet the API says the requests are spent (another process
    # on the key): wait a twelfth of the window rather than run into a 429.
    limiter.server_remaining(requests=0, tokens=None)
    assert limiter.acquire(1).sent == pytest.approx(WINDOW / 12)


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


def test_the_pacing_says_the_window_the_backoff_and_the_time_spent_waiting(
    clock: FakeClock,
) -> None:
    limiter = RateLimiter(Limits(rpm=2, window=WINDOW), clock)
    limiter.acquire(10).done(12)
    limiter.acquire(5)  # in flight, its estimate scaled by what the first was charged
    before = limiter.pacing()
    assert (before.window_requests, before.in_flight) == (2, 1)
    assert before.window_tokens == pytest.approx(12 + 5 * (0.8 + 0.2 * 12 / 10))
    assert (before.waited_seconds, before.paused_seconds, before.scale) == (0.0, 0.0, 1.0)
    limiter.rate_limited_by_server(3.0)
    paused = limiter.pacing()
    assert paused.paused_seconds == pytest.approx(3.0)
    assert (paused.rate_limited, paused.scale) == (1, 0.8)
    limiter.acquire(1)  # waits for the pause, then for the oldest to leave the window
    after = limiter.pacing()
    assert after.waited_seconds == pytest.approx(SPAN)
    assert after.paused_seconds == 0.0
