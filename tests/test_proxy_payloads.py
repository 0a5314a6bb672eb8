"""Binary and multi-vector outputs through ``embedcache serve`` (Jina's dialect): the same
JSON as a direct call, cached (a second pass sends nothing), ColBERT at ``/v1/multi-vector``;
a list of types forwarded uncached; what the API would refuse answered locally."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from embedcache.testing import JinaEmulator, png

from .conftest import API_KEY, MakeProxy
from .serving import Served

V3, V4, COLBERT = "jina-embeddings-v3", "jina-embeddings-v4", "jina-colbert-v2"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
TEXTS = ["a cat sat on the mat", "dogs bark at night"]


def direct(emulator: JinaEmulator, body: dict[str, Any], path: str = "/v1/embeddings") -> Any:
    """The upstream's own answer's ``data``, asked directly."""
    answer = httpx.post(emulator.url + path, json=body, headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def post(proxy: Served, body: dict[str, Any], path: str = "/v1/embeddings") -> httpx.Response:
    answer = proxy.http.post(path, json=body, headers=AUTH)
    assert answer.status_code == 200, answer.text
    return answer


@pytest.fixture
def proxy(make_proxy: MakeProxy) -> Served:
    return make_proxy()


@pytest.mark.parametrize("kind", ["binary", "ubinary"])
def test_binary_answers_are_the_upstreams_json_and_cached(
    kind: str, emulator: JinaEmulator, proxy: Served
) -> None:
    body = {"model": V3, "input": TEXTS, "embedding_type": kind}
    first = post(proxy, body)
    sent = len(emulator.requests)
    assert emulator.requests[-1].body["embedding_type"] == kind  # type: ignore[index]
    again = post(proxy, body)
    assert len(emulator.requests) == sent
    assert again.headers["X-Embedcache-Status"] == "hit"
    expected = direct(emulator, body)
    assert first.json()["data"] == again.json()["data"] == expected
    # ints have one text form: the bytes are the upstream's too
    assert b'"embedding":[' in again.content


@pytest.mark.parametrize("embedding_type", ["float", "base64"])
def test_v4_multivector_of_texts_and_an_image_is_the_upstreams_and_cached(
    embedding_type: str, emulator: JinaEmulator, proxy: Served
) -> None:
    image = base64.b64encode(png(24, 24, 3)).decode()
    body = {
        "model": V4,
        "input": [TEXTS[0], {"image": image}],
        "return_multivector": True,
        "embedding_type": embedding_type,
    }
    first = post(proxy, body)
    sent = len(emulator.requests)
    assert post(proxy, body).json()["data"] == first.json()["data"]
    assert len(emulator.requests) == sent
    expected = direct(emulator, body)
    assert first.json()["data"] == expected
    assert first.json()["data"][0]["object"] == "embeddings"
    assert {"embeddings", "index", "object"} == set(first.json()["data"][1])


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"input_type": "query", "dimensions": 96}, "/v1/multi-vector"),
        ({"input_type": "document"}, "/v1/multi-vector"),
        ({"input_type": "query", "embedding_type": "ubinary"}, "/v1/multi-vector"),
        ({"dimensions": 64}, "/v1/embeddings"),
    ],
)
def test_colbert_multivector_is_the_upstreams_and_cached(
    fields: dict[str, Any], path: str, emulator: JinaEmulator, proxy: Served
) -> None:
    body = {"model": COLBERT, "input": TEXTS, **fields}
    first = post(proxy, body, path)
    assert emulator.requests[-1].path == "/v1/multi-vector"
    sent = len(emulator.requests)
    assert post(proxy, body, path).json()["data"] == first.json()["data"]
    assert len(emulator.requests) == sent
    assert first.json()["data"] == direct(emulator, body, "/v1/multi-vector")


def test_float_and_base64_multivector_share_one_entry_in_the_upstreams_float_style(
    float_style: str, emulator: JinaEmulator, proxy: Served
) -> None:
    body = {"model": COLBERT, "input": TEXTS, "embedding_type": "base64"}
    post(proxy, body, "/v1/multi-vector")
    sent = len(emulator.requests)
    answer = post(proxy, body | {"embedding_type": "float"}, "/v1/multi-vector")
    assert len(emulator.requests) == sent
    assert answer.json()["data"] == direct(emulator, body | {"embedding_type": "float"})


def test_a_list_of_embedding_types_is_forwarded_uncached(
    emulator: JinaEmulator, proxy: Served
) -> None:
    body = {"model": V3, "input": TEXTS[:1], "embedding_type": ["float", "binary"]}
    first = post(proxy, body)
    post(proxy, body)
    assert len(emulator.requests) == 2
    assert first.headers["X-Embedcache-Status"] != "hit"
    assert set(first.json()["data"][0]["embedding"]) == {"float", "binary"}


def test_a_non_colbert_model_at_the_multi_vector_path_gets_the_upstreams_answer(
    emulator: JinaEmulator, proxy: Served
) -> None:
    answer = proxy.http.post("/v1/multi-vector", json={"model": V3, "input": TEXTS}, headers=AUTH)
    direct_answer = httpx.post(
        emulator.url + "/v1/multi-vector", json={"model": V3, "input": TEXTS}, headers=AUTH
    )
    assert answer.status_code == direct_answer.status_code == 400
    assert [r.path for r in emulator.requests] == ["/v1/multi-vector"] * 2


@pytest.mark.parametrize(
    ("body", "path", "word"),
    [
        ({"model": V4, "return_multivector": True, "dimensions": 128}, "/v1/embeddings", "dim"),
        ({"model": V3, "return_multivector": True}, "/v1/embeddings", "multi-vector"),
        ({"model": COLBERT, "dimensions": 100}, "/v1/multi-vector", "not offered"),
        ({"model": COLBERT, "input_type": "passage"}, "/v1/multi-vector", "input_type"),
        ({"model": V4, "return_multivector": "yes"}, "/v1/embeddings", "true or false"),
        ({"model": V3, "input_type": "query"}, "/v1/embeddings", "input_type"),
    ],
)
def test_output_options_the_api_would_refuse_are_answered_422_before_sending(
    body: dict[str, Any], path: str, word: str, emulator: JinaEmulator, proxy: Served
) -> None:
    answer = proxy.http.post(path, json={"input": TEXTS, **body}, headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert word in answer.json()["detail"]
    assert emulator.requests == []


def test_an_image_for_colbert_is_answered_422_before_sending(
    emulator: JinaEmulator, proxy: Served
) -> None:
    image = base64.b64encode(png(4, 4, 1)).decode()
    body = {"model": COLBERT, "input": [{"image": image}]}
    answer = proxy.http.post("/v1/multi-vector", json=body, headers=AUTH)
    assert answer.status_code == 422
    assert emulator.requests == []


def test_multivector_fields_in_openais_dialect_are_refused(
    emulator: JinaEmulator, proxy: Served
) -> None:
    body = {"model": V4, "input": TEXTS, "encoding_format": "float", "return_multivector": True}
    answer = proxy.http.post("/v1/embeddings", json=body, headers=AUTH)
    assert answer.status_code == 422
    assert "OpenAI" in answer.json()["error"]["message"]
    assert emulator.requests == []
