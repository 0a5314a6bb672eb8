"""JinaClient over real loopback HTTP: retries, error mapping and response validation."""

from __future__ import annotations

import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from embedcache import JinaClient
from embedcache.errors import (
    APIError,
    AuthenticationError,
    EmbedcacheError,
    RateLimitError,
    ResponseFormatError,
    TransportError,
)
from embedcache.models import RequestOptions
from embedcache.testing import Fault, JinaEmulator

from .conftest import API_KEY

V3 = RequestOptions("jina-embeddings-v3", task="retrieval.passage")


def test_success_decodes_base64_into_rows_in_input_order(
    client: JinaClient, emulator: JinaEmulator
) -> None:
    result = client.embed(["alpha", "beta"], V3)
    assert result.vectors.dtype == np.float32
    assert result.vectors.shape == (2, 1024)
    expected = emulator.expected_embedding("beta", task="retrieval.passage")
    assert result.vectors[1].tobytes() == expected.tobytes()
    assert result.total_tokens == emulator.requests[0].tokens
    assert emulator.requests[0].body is not None
    assert emulator.requests[0].body["embedding_type"] == "base64"


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_retryable_status_is_retried_then_succeeds(
    client: JinaClient, emulator: JinaEmulator, status: int
) -> None:
    emulator.inject(Fault(status=status, times=2))
    assert client.embed(["x"], V3).vectors.shape == (1, 1024)
    assert [r.status for r in emulator.requests] == [status, status, 200]


def test_retry_after_is_honoured(emulator: JinaEmulator) -> None:
    waits: list[float] = []
    jina = JinaClient(API_KEY, base_url=emulator.url, backoff_base=0.001, sleep=waits.append)
    emulator.inject(Fault(status=429, retry_after="7"), Fault(status=503))
    jina.embed(["x"], V3)
    jina.close()
    assert waits[0] == 7.0
    assert waits[1] < 1.0  # no Retry-After: exponential backoff from a tiny base


@pytest.mark.parametrize(
    "fault",
    [Fault(drop=True), Fault(cut_body=True)],
    ids=["connection-dropped", "reset-mid-body"],
)
def test_broken_connections_are_retried(
    client: JinaClient, emulator: JinaEmulator, fault: Fault
) -> None:
    emulator.inject(fault)
    assert client.embed(["x"], V3).vectors.shape == (1, 1024)
    assert len(emulator.requests) == 2


def test_read_timeout_is_retried(emulator: JinaEmulator, caplog: pytest.LogCaptureFixture) -> None:
    jina = JinaClient(API_KEY, base_url=emulator.url, timeout=0.2, backoff_base=0.001)
    with (
        ThreadPoolExecutor(1) as pool,
        emulator.hold() as gate,
        caplog.at_level(logging.WARNING, logger="embedcache"),
    ):
        # The first request is held past the end of the call: only its read timeout can
        # end that attempt. Without one the call would wait here until the deadline.
        call = pool.submit(jina.embed, ["x"], V3)
        result = call.result(timeout=30)
        assert gate.held == 1  # still held: the answer came from another attempt
    jina.close()
    assert result.vectors.shape == (1, 1024)
    (retry,) = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert re.search(r"ReadTimeout.*attempt 1 of \d+ failed", retry), retry


def test_retries_stop_at_the_bound_with_rate_limit_error(
    client: JinaClient, emulator: JinaEmulator
) -> None:
    emulator.inject(Fault(status=429, retry_after="0", times=10))
    with pytest.raises(RateLimitError, match="gave up after 4 attempts") as info:
        client.embed(["x"], V3)
    assert info.value.status == 429
    assert len(emulator.requests) == 4


def test_transport_errors_stop_at_the_bound(client: JinaClient, emulator: JinaEmulator) -> None:
    emulator.inject(Fault(drop=True, times=10))
    with pytest.raises(TransportError, match="after 4 attempts"):
        client.embed(["x"], V3)
    assert len(emulator.requests) == 4


@pytest.mark.parametrize("status", [400, 401, 402, 403, 422])
def test_client_errors_are_not_retried(
    client: JinaClient, emulator: JinaEmulator, status: int
) -> None:
    emulator.inject(Fault(status=status))
    with pytest.raises(APIError) as info:
        client.embed(["x"], V3)
    assert info.value.status == status
    assert len(emulator.requests) == 1


def test_api_error_carries_status_code_detail_and_request_id(
    client: JinaClient, emulator: JinaEmulator
) -> None:
    with pytest.raises(APIError) as info:
        client.embed(["x"] * 2049, V3)
    error = info.value
    assert error.status == 400
    assert error.detail == '"input" length 2049 is larger than the largest allowed size 2048'
    assert error.request_id
    assert error.request_id in str(error)
    assert "\n" not in str(error)


def test_wrong_key_is_an_authentication_error_without_the_key(emulator: JinaEmulator) -> None:
    wrong = "jina_" + "W" * 60
    jina = JinaClient(wrong, base_url=emulator.url, backoff_base=0.001)
    with pytest.raises(AuthenticationError) as info:
        jina.embed(["x"], V3)
    jina.close()
    assert info.value.status == 401
    assert wrong not in str(info.value)
    assert wrong not in repr(info.value)
    assert len(emulator.requests) == 1


def test_missing_key_names_both_env_vars_and_sends_nothing(emulator: JinaEmulator) -> None:
    jina = JinaClient(base_url=emulator.url)
    with pytest.raises(AuthenticationError, match="JINAAI_API_KEY or JINA_API_KEY"):
        jina.embed(["x"], V3)
    assert emulator.requests == []


def test_key_is_read_from_either_env_var(
    emulator: JinaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("JINAAI_API_KEY", "JINA_API_KEY"):
        monkeypatch.setenv(name, API_KEY)
        jina = JinaClient(base_url=emulator.url)
        assert jina.embed(["x"], V3).vectors.shape == (1, 1024)
        jina.close()
        monkeypatch.delenv(name)


def test_html_error_page_is_reported_as_non_json(
    client: JinaClient, emulator: JinaEmulator
) -> None:
    emulator.inject(Fault(status=403, body=b"<html>Forbidden</html>", content_type="text/html"))
    with pytest.raises(APIError, match=r"HTTP 403 with a non-JSON body \(text/html\)"):
        client.embed(["x"], V3)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault(body=b'{"data": [{"index": 0, "embe'), "not valid JSON"),
        (Fault(body=b"<html>oops</html>", content_type="text/html"), "not valid JSON"),
        (Fault(count_delta=-1), "received 1 embeddings"),
        (Fault(count_delta=1), "received 3 embeddings"),
        (Fault(duplicate_index=True), "indexes do not cover"),
        (Fault(missing_index=True), "indexes do not cover"),
        (Fault(bad_base64=True), "not a whole number of float32"),
    ],
)
def test_malformed_success_responses_raise_without_retry(
    client: JinaClient, emulator: JinaEmulator, fault: Fault, message: str
) -> None:
    emulator.inject(fault)
    with pytest.raises(ResponseFormatError, match=message):
        client.embed(["x", "y"], V3)
    assert len(emulator.requests) == 1


def test_unreachable_host_is_a_transport_error() -> None:
    with JinaEmulator() as emu:
        url = emu.url
    jina = JinaClient(API_KEY, base_url=url, backoff_base=0.001, max_attempts=2)
    with pytest.raises(TransportError, match="no response"):
        jina.embed(["x"], V3)
    jina.close()


def test_repr_hides_the_key() -> None:
    jina = JinaClient(API_KEY)
    assert API_KEY not in repr(jina)
    assert "***" in repr(jina)


def test_every_error_shares_one_root() -> None:
    for cls in (APIError, RateLimitError, TransportError, ResponseFormatError):
        assert issubclass(cls, EmbedcacheError)


def test_a_key_echoed_at_the_cut_of_a_long_detail_is_still_hidden(emulator: JinaEmulator) -> None:
    # The detail is cut to 500 characters; here the cut falls inside the echoed key.
    detail = "x" * 470 + f" {API_KEY} was refused"
    emulator.inject(Fault(status=400, body=json.dumps({"detail": detail}).encode()))
    jina = JinaClient(API_KEY, base_url=emulator.url)
    with pytest.raises(APIError) as caught:
        jina.embed(["x"], V3)
    jina.close()
    assert API_KEY[:20] not in str(caught.value)
    assert API_KEY[:20] not in (caught.value.detail or "")
