"""The emulator's rate limits (RPM, TPM, concurrency), over real loopback HTTP with httpx.

The emulator here measures its windows by a clock the tests move (:class:`_Clock`): a test
steps past a window instead of sleeping through it, and every wait is exact.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from embedcache.testing import Fault, JinaEmulator, RateLimits, RecordedRequest
from embedcache.testing.limits import LimitEnforcer, RateLimited
from embedcache.tokens import estimate_tokens

from .conftest import API_KEY, wait_for

V3 = "jina-embeddings-v3"
PATH = "/v1/embeddings"
FOUR = "alpha beta gamma delta"  # 4 tokens by the emulator's count
TWO = "alpha beta"
_HEADERS = (
    "X-RateLimit-Limit-Requests",
    "X-RateLimit-Remaining-Requests",
    "X-RateLimit-Limit-Tokens",
    "X-RateLimit-Remaining-Tokens",
)


class _Clock:
    """Monotonic seconds that move only when a test moves them."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> _Clock:
    return _Clock()


@pytest.fixture
def emulator(clock: _Clock) -> Iterator[JinaEmulator]:
    """The emulator, its rate limits on :func:`clock`."""
    with JinaEmulator(api_key=API_KEY, clock=clock) as emu:
        yield emu


def embed(http: httpx.Client, text: str = TWO) -> httpx.Response:
    return http.post(PATH, json={"model": V3, "input": [text]})


def assert_429(response: httpx.Response, code: str) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert isinstance(body["detail"], str)
    assert response.headers["x-request-id"] == body["request_id"]
    return body


def last(emulator: JinaEmulator) -> RecordedRequest:
    return emulator.requests[-1]


def statuses(emulator: JinaEmulator) -> list[int | None]:
    return [entry.status for entry in emulator.requests]


def test_token_counts_used_here() -> None:
    assert estimate_tokens(FOUR) == 4
    assert estimate_tokens(TWO) == 2


# --- requests per window ---------------------------------------------------------------


def test_rpm_binds_with_retry_after_then_frees_after_the_window(
    emulator: JinaEmulator, http: httpx.Client, clock: _Clock
) -> None:
    emulator.rate_limits = RateLimits(rpm=3, window=0.5)
    assert [embed(http).status_code for _ in range(3)] == [200, 200, 200]
    refused = embed(http)
    body = assert_429(refused, "RATE_REQUEST_LIMIT_EXCEEDED")
    assert body["detail"] == "Request rate limit exceeded: 4/3 requests per 0.5 s"
    wait = last(emulator).wait
    assert wait is not None
    assert wait == 0.5  # all three were admitted at this instant
    # Whole seconds rounded up, at least 1: a sub-second wait says 1.
    assert refused.headers["Retry-After"] == "1"
    assert last(emulator).tokens == 0
    clock.now += wait
    assert embed(http).status_code == 200
    assert statuses(emulator) == [200, 200, 200, 429, 200]


def test_the_default_window_is_a_minute_and_named_so(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    emulator.rate_limits = RateLimits(rpm=1)
    assert embed(http).status_code == 200
    refused = embed(http)
    body = assert_429(refused, "RATE_REQUEST_LIMIT_EXCEEDED")
    assert body["detail"] == "Request rate limit exceeded: 2/1 requests per minute"
    wait = last(emulator).wait
    assert wait is not None
    assert wait == 60
    assert refused.headers["Retry-After"] == str(math.ceil(wait))


# --- tokens per window -----------------------------------------------------------------


def test_tpm_binds_on_this_requests_tokens_and_refusals_charge_nothing(
    emulator: JinaEmulator, http: httpx.Client, clock: _Clock
) -> None:
    emulator.rate_limits = RateLimits(tpm=10, window=0.5)
    assert embed(http, FOUR).status_code == 200
    clock.now += 0.125
    assert embed(http, FOUR).status_code == 200  # 8 of 10 used
    refused = embed(http, FOUR)
    body = assert_429(refused, "RATE_TOKEN_LIMIT_EXCEEDED")
    assert body["detail"] == "Token rate limit exceeded: 12/10 tokens per 0.5 s"
    assert refused.headers["Retry-After"] == "1"
    wait = last(emulator).wait
    assert wait is not None
    assert wait == 0.375  # until the first charge leaves the window
    # The refusal took nothing: exactly the 2 tokens left still fit.
    fits = embed(http, TWO)
    assert fits.status_code == 200
    assert fits.headers["X-RateLimit-Remaining-Tokens"] == "0"
    clock.now += wait  # the first charge (4 tokens) has expired, the second not
    assert embed(http, FOUR).status_code == 200
    assert [entry.tokens for entry in emulator.requests] == [4, 4, 0, 2, 4]


def test_a_request_over_tpm_on_its_own_never_passes(
    emulator: JinaEmulator, http: httpx.Client, clock: _Clock
) -> None:
    emulator.rate_limits = RateLimits(tpm=10, window=0.5)
    text = " ".join(["alpha"] * 11)
    refused = embed(http, text)
    body = assert_429(refused, "RATE_TOKEN_LIMIT_EXCEEDED")
    assert "11 tokens" in body["detail"]
    assert "split" in body["detail"]
    assert "Retry-After" not in refused.headers  # no wait would help
    assert last(emulator).wait is None
    clock.now += 0.5  # a whole window later
    assert embed(http, text).status_code == 429
    small = embed(http, TWO)
    assert small.status_code == 200
    assert small.headers["X-RateLimit-Remaining-Tokens"] == "8"


# --- concurrency -----------------------------------------------------------------------


def slots_in_use(emulator: JinaEmulator) -> int:
    # A slot is given back just after the answer is sent, so a client can hold its answer
    # a moment before the slot is free: tests wait for this count, not for the answer.
    return emulator._limiter.in_flight(API_KEY)


def test_concurrency_binds_while_requests_are_held_in_flight(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    emulator.rate_limits = RateLimits(concurrent_requests=2)
    with ThreadPoolExecutor(2) as pool:
        with emulator.hold(times=2) as gate:
            held = [pool.submit(embed, http) for _ in range(2)]
            assert gate.arrived(2)
            assert slots_in_use(emulator) == 2
            refused = embed(http)
        assert [answer.result(timeout=10).status_code for answer in held] == [200, 200]
    body = assert_429(refused, "RATE_CONCURRENCY_LIMIT_EXCEEDED")
    assert body["detail"] == "Concurrency limit exceeded: 3/2 concurrent requests"
    assert refused.headers["Retry-After"] == "1"  # when a slot frees is not known
    assert statuses(emulator) == [429, 200, 200]  # refused while the other two were held
    assert [e.wait for e in emulator.requests if e.status == 429] == [None]
    # Both slots are given back once the answers have been sent.
    wait_for(lambda: slots_in_use(emulator) == 0, lambda: f"{slots_in_use(emulator)} in use")
    with ThreadPoolExecutor(2) as pool, emulator.hold(times=2) as gate:
        again = [pool.submit(embed, http) for _ in range(2)]
        assert gate.arrived(2)
    assert [answer.result(timeout=10).status_code for answer in again] == [200, 200]


def test_an_abandoned_request_holds_its_slot_until_its_answer_is_done(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    emulator.rate_limits = RateLimits(concurrent_requests=1)
    gate = emulator.hold()
    hasty = httpx.Client(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=0.1)
    with hasty, pytest.raises(httpx.ReadTimeout):
        hasty.post(emulator.url + PATH, json={"model": V3, "input": "x"})
    assert gate.arrived(1)  # the client gave up; its request is still held, in flight
    assert_429(embed(http), "RATE_CONCURRENCY_LIMIT_EXCEEDED")
    gate.release()
    wait_for(lambda: slots_in_use(emulator) == 0, lambda: f"{slots_in_use(emulator)} in use")
    assert embed(http).status_code == 200
    # The refusal was answered while the abandoned request was held; that one was then
    # answered (into a closed connection) and logged, which freed its slot.
    assert statuses(emulator) == [429, 200, 200]


def test_limits_hold_under_concurrent_load(emulator: JinaEmulator) -> None:
    emulator.rate_limits = RateLimits(rpm=10, tpm=1000)
    with httpx.Client(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10) as client:

        def worker() -> None:
            client.post(emulator.url + PATH, json={"model": V3, "input": "x"})

        threads = [threading.Thread(target=worker) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert Counter(statuses(emulator)) == {200: 10, 429: 6}


# --- headers ---------------------------------------------------------------------------


def test_rate_limit_headers_on_admitted_and_refused_answers(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    emulator.rate_limits = RateLimits(rpm=2, tpm=100)
    first = embed(http, FOUR)
    assert {name: first.headers[name] for name in _HEADERS} == {
        "X-RateLimit-Limit-Requests": "2",
        "X-RateLimit-Remaining-Requests": "1",
        "X-RateLimit-Limit-Tokens": "100",
        "X-RateLimit-Remaining-Tokens": "96",
    }
    assert "Retry-After" not in first.headers
    assert embed(http, FOUR).headers["X-RateLimit-Remaining-Requests"] == "0"
    refused = embed(http, FOUR)
    assert refused.status_code == 429
    assert refused.headers["X-RateLimit-Remaining-Requests"] == "0"
    assert refused.headers["X-RateLimit-Remaining-Tokens"] == "92"


def test_headers_only_for_the_limits_set(emulator: JinaEmulator, http: httpx.Client) -> None:
    emulator.rate_limits = RateLimits(rpm=5)
    response = embed(http)
    assert response.headers["X-RateLimit-Remaining-Requests"] == "4"
    assert "X-RateLimit-Remaining-Tokens" not in response.headers
    emulator.rate_limits = None
    assert not any(name in embed(http).headers for name in _HEADERS)


def test_headers_and_retry_after_can_be_turned_off(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    emulator.rate_limits = RateLimits(rpm=1, tpm=100, headers=False, retry_after=False)
    admitted = embed(http)
    refused = embed(http)
    assert refused.status_code == 429
    for response in (admitted, refused):
        assert not any(name in response.headers for name in (*_HEADERS, "Retry-After"))
    assert last(emulator).wait is not None  # the exact wait is still in the log


# --- what is and is not charged --------------------------------------------------------


def test_auth_and_validation_failures_use_no_budget(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    emulator.rate_limits = RateLimits(rpm=2, tpm=100, concurrent_requests=1)
    with httpx.Client(headers={"Authorization": "Bearer jina_wrong"}) as wrong:
        for _ in range(3):
            response = wrong.post(emulator.url + PATH, json={"model": V3, "input": "x"})
            assert response.status_code == 401
    for _ in range(3):
        assert http.post(PATH, json={"model": V3, "input": []}).status_code == 422
    assert embed(http).status_code == 200
    second = embed(http)
    assert second.status_code == 200
    assert second.headers["X-RateLimit-Remaining-Requests"] == "0"
    assert_429(embed(http), "RATE_REQUEST_LIMIT_EXCEEDED")


def test_rate_limit_refusals_use_no_budget(
    emulator: JinaEmulator, http: httpx.Client, clock: _Clock
) -> None:
    emulator.rate_limits = RateLimits(rpm=2, window=0.5)
    assert embed(http).status_code == 200
    clock.now += 0.125
    assert embed(http).status_code == 200
    for _ in range(5):
        assert embed(http).status_code == 429
    wait = last(emulator).wait
    assert wait is not None
    clock.now += wait  # only the oldest admitted request has left the window
    assert embed(http).status_code == 200


def test_injected_faults_bypass_the_limits(emulator: JinaEmulator, http: httpx.Client) -> None:
    emulator.rate_limits = RateLimits(rpm=1)
    emulator.inject(Fault(status=429, retry_after="7"), Fault(status=500))
    injected = embed(http)
    assert injected.headers["Retry-After"] == "7"
    assert injected.json()["code"] == "RATE_REQUEST_LIMIT_EXCEEDED"
    assert embed(http).status_code == 500
    assert embed(http).status_code == 200  # the budget is still whole


# --- keys and configuration ------------------------------------------------------------


def test_budgets_are_per_key() -> None:
    with JinaEmulator(rate_limits=RateLimits(rpm=1, tpm=5)) as emu:

        def send(key: str, text: str = TWO) -> int:
            with httpx.Client(headers={"Authorization": f"Bearer {key}"}) as client:
                return client.post(emu.url + PATH, json={"model": V3, "input": text}).status_code

        assert send("jina_a") == 200
        assert send("jina_a") == 429
        assert send("jina_b", FOUR) == 200
        assert send("jina_c", FOUR) == 200
        assert send("jina_b", TWO) == 429
    assert "jina_" not in repr(emu.requests)


def test_limits_can_be_set_changed_and_reset_while_running(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    for _ in range(3):
        assert embed(http).status_code == 200  # no limits: nothing tracked
    emulator.rate_limits = RateLimits(rpm=1)
    assert embed(http).status_code == 200
    assert embed(http).status_code == 429
    emulator.rate_limits = RateLimits(rpm=2)  # the history is kept across changes
    assert embed(http).status_code == 200
    assert embed(http).status_code == 429
    emulator.reset()  # forgets the budgets used
    assert embed(http).status_code == 200
    assert statuses(emulator) == [200]
    emulator.rate_limits = None
    assert all(embed(http).status_code == 200 for _ in range(3))


def test_constructor_argument() -> None:
    with (
        JinaEmulator(api_key=API_KEY, rate_limits=RateLimits(rpm=1)) as emu,
        httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {API_KEY}"}) as http,
    ):
        assert emu.rate_limits == RateLimits(rpm=1)
        assert [embed(http).status_code for _ in range(2)] == [200, 429]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rpm": 0},
        {"tpm": -1},
        {"concurrent_requests": 0},
        {"rpm": True},
        {"window": 0},
        {"window": float("inf")},
        {"window": float("nan")},
    ],
)
def test_rate_limits_arguments_are_checked(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="RateLimits"):
        RateLimits(**kwargs)


# --- the limiter on a fake clock: exact waits ------------------------------------------


def test_token_wait_is_until_enough_charges_expire() -> None:
    clock = _Clock()
    limiter = LimitEnforcer(clock)
    limits = RateLimits(tpm=12, window=10)
    for _ in range(3):  # 4 tokens at t = 100, 101, 102
        limiter.admit("k", 4, limits).release()
        clock.now += 1
    with pytest.raises(RateLimited) as refused:
        limiter.admit("k", 5, limits)  # at t = 103: the first two must go, at 111
    assert refused.value.code == "RATE_TOKEN_LIMIT_EXCEEDED"
    assert refused.value.wait == pytest.approx(8.0)
    assert refused.value.headers["Retry-After"] == "8"
    clock.now = 111.0
    limiter.admit("k", 5, limits).release()


def test_request_wait_and_the_first_binding_limit_names_the_code() -> None:
    clock = _Clock()
    limiter = LimitEnforcer(clock)
    limits = RateLimits(rpm=2, tpm=8, window=10)
    limiter.admit("k", 4, limits).release()
    clock.now += 2
    limiter.admit("k", 4, limits).release()
    clock.now += 0.5
    with pytest.raises(RateLimited) as refused:
        limiter.admit("k", 4, limits)
    # Both bind: the request limit is named, the wait covers both (here the same charge).
    assert refused.value.code == "RATE_REQUEST_LIMIT_EXCEEDED"
    assert refused.value.wait == pytest.approx(7.5)
    assert refused.value.headers["Retry-After"] == "8"


def test_release_is_idempotent_and_refund_uncharges() -> None:
    limiter = LimitEnforcer(_Clock())
    limits = RateLimits(rpm=1, concurrent_requests=1)
    admission = limiter.admit("k", 3, limits)
    assert limiter.in_flight("k") == 1
    admission.release(refund=True)
    admission.release()
    assert limiter.in_flight("k") == 0
    limiter.admit("k", 3, limits)  # the refunded request left room for this one
    with pytest.raises(RateLimited):
        limiter.admit("k", 3, RateLimits(concurrent_requests=1))
