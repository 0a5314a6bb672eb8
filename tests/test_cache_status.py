"""What the cache did, on every embedding answer (``X-Embedcache-Status``, hits, misses,
tokens saved) in each dialect and on each path (from rendered memory, from disk, filled),
and ``GET /v1/models``."""

from __future__ import annotations

from typing import Any

import httpx

from embedcache.models import MODELS

from .conftest import API_KEY, MakeProxy
from .serving import Served

V3 = "jina-embeddings-v3"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def status(answer: httpx.Response) -> tuple[str, int, int, int]:
    """The answer's status headers: status, hits, misses, tokens saved."""
    assert answer.status_code == 200, answer.text
    headers = answer.headers
    return (
        headers["X-Embedcache-Status"],
        int(headers["X-Embedcache-Hits"]),
        int(headers["X-Embedcache-Misses"]),
        int(headers["X-Embedcache-Tokens-Saved"]),
    )


def post(proxy: Served, body: dict[str, Any]) -> httpx.Response:
    return proxy.http.post("/v1/embeddings", json=body, headers=AUTH)


def test_jina_answers_say_miss_then_hit_from_memory_then_partial(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    first = status(post(proxy, {"model": V3, "input": ["alpha text", "beta text", "alpha text"]}))
    assert first[:3] == ("miss", 0, 2)
    assert first[3] == 0
    # Answered by the hit path: every text's answer was rendered by the first request.
    again = status(post(proxy, {"model": V3, "input": ["alpha text", "beta text"]}))
    assert again[:3] == ("hit", 2, 0)
    assert again[3] > 0
    mixed = status(post(proxy, {"model": V3, "input": ["alpha text", "gamma text"]}))
    assert mixed[:3] == ("partial", 1, 1)
    assert 0 < mixed[3] < again[3]


def test_a_hit_read_from_disk_says_hit_too(make_proxy: MakeProxy) -> None:
    proxy = make_proxy("--rendered-memory", "0")
    body = {"model": V3, "input": ["read from disk"]}
    assert status(post(proxy, body))[0] == "miss"
    state, hits, misses, saved = status(post(proxy, body))
    assert (state, hits, misses) == ("hit", 1, 0)
    assert saved > 0


def test_openai_answers_carry_the_status_headers(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    body = {"model": V3, "input": ["an openai text"], "encoding_format": "float"}
    assert status(post(proxy, body))[:3] == ("miss", 0, 1)
    assert status(post(proxy, body))[:3] == ("hit", 1, 0)


def test_tei_answers_carry_the_status_headers(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    body = {"inputs": ["tei one", "tei two"]}
    assert status(proxy.http.post("/embed", json=body, headers=AUTH))[:3] == ("miss", 0, 2)
    body = {"inputs": ["tei one", "tei three"]}
    assert status(proxy.http.post("/embed", json=body, headers=AUTH))[:3] == ("partial", 1, 1)


def test_models_are_listed_in_openais_shape(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    answer = proxy.http.get("/v1/models", headers=AUTH)
    assert answer.status_code == 200
    listed = answer.json()
    assert listed["object"] == "list"
    assert [model["id"] for model in listed["data"]] == list(MODELS)
    assert listed["data"][0] == {
        "id": next(iter(MODELS)),
        "object": "model",
        "created": 0,
        "owned_by": "jina-ai",
    }
