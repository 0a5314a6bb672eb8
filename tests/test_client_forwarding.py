"""JinaClient.forward (the proxy's passthrough) and JinaClient.for_key (its per-caller
clients), over real loopback HTTP to the emulator."""

from __future__ import annotations

import json

import pytest

from embedcache import JinaClient, Limits, RateLimiter
from embedcache.errors import AuthenticationError
from embedcache.models import RequestOptions
from embedcache.testing import Fault, JinaEmulator

from .conftest import API_KEY

V3 = RequestOptions("jina-embeddings-v3", task="retrieval.passage")
IMAGE = json.dumps({"model": "jina-clip-v2", "input": [{"image": "https://example.com/a.png"}]})


def test_a_forwarded_request_comes_back_as_the_upstream_wrote_it(
    client: JinaClient, emulator: JinaEmulator
) -> None:
    sent = client.forward(IMAGE.encode())
    assert sent.status == 200
    assert sent.content_type.startswith("application/json")
    assert json.loads(sent.content)["data"][0]["object"] == "embedding"
    assert emulator.requests[0].body == json.loads(IMAGE)


@pytest.mark.parametrize("status", [429, 503])
def test_a_forwarded_request_is_retried_like_an_embedding(
    client: JinaClient, emulator: JinaEmulator, status: int
) -> None:
    emulator.inject(Fault(status=status, retry_after="0", times=2))
    assert client.forward(IMAGE.encode()).status == 200
    assert [r.status for r in emulator.requests] == [status, status, 200]


@pytest.mark.parametrize("status", [400, 401, 402, 403, 422])
def test_a_forwarded_client_error_is_passed_on_once_and_unchanged(
    client: JinaClient, emulator: JinaEmulator, status: int
) -> None:
    emulator.inject(Fault(status=status))
    sent = client.forward(IMAGE.encode())
    assert sent.status == status
    assert "detail" in json.loads(sent.content)
    assert len(emulator.requests) == 1


def test_the_last_retryable_answer_is_passed_on_when_attempts_run_out(
    client: JinaClient, emulator: JinaEmulator
) -> None:
    emulator.inject(Fault(status=503, retry_after="0", times=10))
    assert client.forward(IMAGE.encode()).status == 503
    assert len(emulator.requests) == client.max_attempts


def test_a_forwarded_429_goes_to_the_shared_limiter_like_an_embeddings_429(
    emulator: JinaEmulator,
) -> None:
    limiter = RateLimiter(Limits(tpm=1_000_000))
    jina = JinaClient(API_KEY, base_url=emulator.url, limiter=limiter)
    emulator.inject(Fault(status=429, retry_after="0"))
    try:
        assert jina.forward(IMAGE.encode()).status == 200
    finally:
        jina.close()
    assert limiter.rate_limited == 1


def test_a_client_for_another_key_sends_that_key_and_shares_the_pool(
    client: JinaClient, emulator: JinaEmulator
) -> None:
    wrong = client.for_key("jina_" + "W" * 60)
    with pytest.raises(AuthenticationError):
        wrong.embed(["x"], V3)
    right = client.for_key(API_KEY, max_attempts=1)
    assert right.max_attempts == 1
    assert right.limiter is client.limiter
    assert right.embed(["x"], V3).vectors.shape == (1, 1024)
    right.close()  # the pool is the parent's: closing a child leaves it usable
    assert client.embed(["y"], V3).vectors.shape == (1, 1024)
    assert [r.status for r in emulator.requests] == [401, 200, 200]
