"""Every exception httpx can raise reaches a caller as one of ours, retried or not as the
table in ``upstream/failures.py`` says. The faults here (an answer that cannot be decoded, a
request httpx refuses to send) are ones the emulator cannot make: ``httpx.MockTransport``."""

from __future__ import annotations

import threading

import httpx
import pytest

from embedcache import JinaClient
from embedcache.errors import EmbedcacheError, ResponseFormatError, TransportError
from embedcache.models import RequestOptions
from embedcache.upstream.failures import HTTPX_FAILURES, failure_of
from embedcache.upstream.limiter import Limits, RateLimiter

OPTIONS = RequestOptions("jina-embeddings-v3", task="retrieval.passage")
KEY = "jina_failures_test_key_0123456789"


def _httpx_exceptions() -> list[type[Exception]]:
    return [
        value
        for name in httpx.__all__
        if isinstance(value := getattr(httpx, name), type) and issubclass(value, Exception)
    ]


def test_every_exception_httpx_exports_is_mapped_to_one_of_ours() -> None:
    covered = [kind for kind, _ in HTTPX_FAILURES]
    unmapped = [e.__name__ for e in _httpx_exceptions() if not issubclass(e, tuple(covered))]
    assert unmapped == []
    assert all(issubclass(failure.error, EmbedcacheError) for _, failure in HTTPX_FAILURES)


def test_each_httpx_exception_is_decided_by_its_most_specific_entry() -> None:
    # No entry is shadowed by a more general one listed before it.
    kinds = [kind for kind, _ in HTTPX_FAILURES]
    for index, kind in enumerate(kinds):
        assert not any(issubclass(kind, earlier) for earlier in kinds[:index]), kind
    assert failure_of(httpx.ReadTimeout("slow")).retry
    assert not failure_of(httpx.LocalProtocolError("bad header")).retry


def _client(
    handler: httpx.MockTransport, attempts: list[int], limiter: RateLimiter | None = None
) -> JinaClient:
    def counted(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        return handler.handle_request(request)

    return JinaClient(
        KEY,
        base_url="http://upstream.test",
        transport=httpx.MockTransport(counted),
        max_attempts=3,
        sleep=lambda _seconds: None,
        limiter=limiter,
    )


def test_an_answer_that_cannot_be_decoded_is_a_format_error_not_retried() -> None:
    def garbled(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip")

    attempts: list[int] = []
    with pytest.raises(ResponseFormatError, match="cannot decode the answer of http://"):
        _client(httpx.MockTransport(garbled), attempts).embed(["x"], OPTIONS)
    assert len(attempts) == 1


def test_a_request_httpx_refuses_to_send_fails_once_without_the_key() -> None:
    def refuse(_request: httpx.Request) -> httpx.Response:
        raise httpx.LocalProtocolError(f"illegal header value b'Bearer {KEY}'")

    attempts: list[int] = []
    with pytest.raises(TransportError, match=r"cannot send to http://upstream\.test") as caught:
        _client(httpx.MockTransport(refuse), attempts).embed(["x"], OPTIONS)
    assert len(attempts) == 1
    assert KEY not in str(caught.value)


def _drop(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadError("connection reset", request=request)


def test_a_dropped_connection_is_retried_until_the_last_attempt() -> None:
    attempts: list[int] = []
    with pytest.raises(TransportError, match="after 3 attempts"):
        _client(httpx.MockTransport(_drop), attempts).embed(["x"], OPTIONS)
    assert len(attempts) == 3


class _Stopped:
    """A limiter's clock that never moves, and fails where the limiter would wait."""

    def now(self) -> float:
        return 1000.0

    def wait(self, condition: threading.Condition, timeout: float | None) -> None:
        raise AssertionError(f"the limiter waited ({timeout} s): its budget was still spent")


def _refuse(_request: httpx.Request) -> httpx.Response:
    raise httpx.LocalProtocolError("bad header")


def test_a_request_httpx_refuses_to_send_gives_its_tokens_back_to_the_rate_limiter() -> None:
    limiter = RateLimiter(Limits(tpm=100, concurrent_requests=1), clock=_Stopped())
    attempts: list[int] = []
    with pytest.raises(TransportError, match="cannot send to"):
        _client(httpx.MockTransport(_refuse), attempts, limiter).embed(["some words"], OPTIONS)
    assert len(attempts) == 1
    # It never left this process: the whole window's budget is free at once, and so is the
    # one slot for a request in flight.
    limiter.acquire(100).done(100)


def test_a_dropped_request_keeps_its_estimate_in_the_rate_limiters_window() -> None:
    limiter = RateLimiter(Limits(tpm=100), clock=_Stopped())
    attempts: list[int] = []
    with pytest.raises(TransportError, match="after 3 attempts"):
        _client(httpx.MockTransport(_drop), attempts, limiter).embed(["some words"], OPTIONS)
    assert len(attempts) == 3
    # It may have reached the API and been counted there: a full budget must wait.
    with pytest.raises(AssertionError, match="the limiter waited"):
        limiter.acquire(100)
