"""The proxy's wire format: which requests are cached, and how answers are written."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from embedcache.errors import (
    APIError,
    CacheError,
    CacheMissError,
    EmbedcacheError,
    InvalidInputError,
    ResponseFormatError,
)
from embedcache.models import resolve_options
from embedcache.proxy.wire import error_status, parse_request, render_embeddings, render_error

V3 = "jina-embeddings-v3"


def test_a_plain_text_request_becomes_texts_and_the_options_the_core_keys_on() -> None:
    parsed = parse_request(
        {"model": V3, "input": ["a", {"text": "b"}], "task": "text-matching", "dimensions": 64}
    )
    assert parsed is not None
    assert parsed.texts == ["a", "b"]
    assert parsed.options == resolve_options(V3, "text-matching", 64)
    assert parsed.embedding_type == "float"


@pytest.mark.parametrize(
    "body",
    [
        {"model": V3, "input": "one string"},
        {"model": V3, "input": {"text": "one object"}},
        {"model": V3, "input": ["x"], "encoding_type": "base64"},
        {"model": V3, "input": ["x"], "embedding_type": "base64", "encoding_type": "base64"},
        {"model": V3, "input": ["x"], "embedding_type": "float", "normalized": None},
        {"model": "jina-clip-v2", "input": [{"image": "https://example.com/a.png"}]},
        {"model": "jina-clip-v2", "input": [{"url": "https://example.com/a.png"}, "a text"]},
        {"model": "jina-embeddings-v4", "input": {"pdf": "https://example.com/a.pdf"}},
        {"model": V3, "input": ["x"], "embedding_type": "ubinary"},
        {"model": V3, "input": ["x"], "embedding_type": "binary"},
    ],
)
def test_these_requests_are_answered_from_the_cache(body: dict[str, Any]) -> None:
    assert parse_request(body) is not None


@pytest.mark.parametrize(
    "body",
    [
        {"model": V3, "input": ["x"], "unknown": 1},
        {"input": ["x"]},
        {"model": 3, "input": ["x"]},
        {"model": V3, "input": []},
        {"model": V3, "input": [{"text": "x", "extra": 1}]},
        {"model": V3, "input": ["x"], "embedding_type": ["float"]},
        {"model": V3, "input": ["x"], "embedding_type": "float", "encoding_type": "base64"},
    ],
)
def test_these_requests_are_forwarded_uncached(body: dict[str, Any]) -> None:
    assert parse_request(body) is None


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([], "JSON object"),
        ({"model": V3, "input": ["x"], "task": "clustering.v2"}, "clustering.v2"),
        ({"model": V3, "input": ["x"], "late_chunking": "yes"}, "late_chunking"),
        ({"model": V3, "input": ["x"], "dimensions": 0}, "dimensions"),
        # Token ids in Jina's dialect too: no Jina model takes them, so none is forwarded.
        ({"model": V3, "input": [3]}, "token ids"),
        ({"model": V3, "input": [[1, 2, 3]]}, "token ids"),
    ],
)
def test_requests_the_api_would_refuse_raise_before_anything_is_spent(
    body: object, fragment: str
) -> None:
    with pytest.raises(InvalidInputError, match=fragment):
        parse_request(body)


def test_float_answers_read_back_as_the_same_float32_bits() -> None:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((3, 1024)).astype(np.float32)
    parsed = parse_request({"model": V3, "input": ["a", "b", "c"]})
    assert parsed is not None
    body = json.loads(render_embeddings(parsed, vectors, tokens_spent=5))
    assert body["usage"] == {"total_tokens": 5, "prompt_tokens": 5}
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    got = np.asarray([item["embedding"] for item in body["data"]], dtype=np.float32)
    assert got.tobytes() == vectors.tobytes()


def test_base64_answers_are_little_endian_float32() -> None:
    vectors = np.arange(8, dtype=np.float32).reshape(2, 4)
    parsed = parse_request({"model": V3, "input": ["a", "b"], "embedding_type": "base64"})
    assert parsed is not None
    body = json.loads(render_embeddings(parsed, vectors, tokens_spent=0))
    decoded = [np.frombuffer(base64.b64decode(item["embedding"]), "<f4") for item in body["data"]]
    assert np.array_equal(np.stack(decoded), vectors)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (APIError("rate limited", status=429), 429),
        (APIError("no key"), 401),
        (InvalidInputError("bad"), 422),
        (CacheMissError("offline", misses=1), 503),
        (CacheError("disk"), 500),
        (ResponseFormatError("nan"), 502),
    ],
)
def test_error_statuses_keep_the_upstreams_and_map_ours(
    error: EmbedcacheError, status: int
) -> None:
    assert error_status(error) == status


def test_error_bodies_have_jinas_detail_code_and_request_id() -> None:
    error = APIError("x", status=402, detail="balance", code="PAYMENT", request_id="r1")
    assert json.loads(render_error(error)) == {
        "detail": "balance",
        "code": "PAYMENT",
        "request_id": "r1",
    }
    assert json.loads(render_error("plain")) == {"detail": "plain"}
