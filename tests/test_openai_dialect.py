"""OpenAI's dialect on ``POST /v1/embeddings``: the real ``openai`` SDK, and the exact bodies
Milvus's ``openai`` provider sends, against ``embedcache serve`` in front of the emulator."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from embedcache.errors import InvalidInputError
from embedcache.proxy.wire import dialect_of, parse_request, render_error
from embedcache.storage.store import Store
from embedcache.testing import JinaEmulator

from .conftest import API_KEY, MakeProxy
from .serving import Served

V3 = "jina-embeddings-v3"
SDK = Callable[[Served], openai.OpenAI]
TEXTS = ["what is milvus?", "a vector database", "late chunking pools late"]


@pytest.fixture
def proxy(make_proxy: MakeProxy) -> Served:
    return make_proxy()


@pytest.fixture
def sdk() -> Iterator[Callable[[Served], openai.OpenAI]]:
    """OpenAI SDK clients pointed at a proxy, without retries; all closed after the test."""
    made: list[openai.OpenAI] = []

    def make(proxy: Served) -> openai.OpenAI:
        made.append(openai.OpenAI(base_url=proxy.url + "/v1", api_key=API_KEY, max_retries=0))
        return made[-1]

    yield make
    for client in made:
        client.close()


def jina_vectors(proxy: Served, body: dict[str, Any]) -> np.ndarray[Any, Any]:
    """The Jina-dialect answer of the proxy for the same settings, as float32 rows."""
    answer = proxy.embed({**body, "embedding_type": "base64"}, API_KEY).json()
    rows = [np.frombuffer(base64.b64decode(item["embedding"]), "<f4") for item in answer["data"]]
    return np.stack(rows)


# The dialect itself


def test_openais_fields_map_to_jinas_and_user_is_neither_keyed_nor_sent() -> None:
    parsed = parse_request(
        {"model": V3, "input": "x", "encoding_format": "base64", "user": "u-1", "dimensions": 64}
    )
    assert parsed is not None
    assert parsed.embedding_type == "base64"
    assert parsed.texts == ["x"]
    assert "user" not in parsed.options.body_fields()
    assert parsed.options.dimensions == 64


def test_a_task_after_the_model_name_is_the_same_request_as_the_task_field() -> None:
    suffixed = parse_request({"model": f"{V3}:retrieval.query", "input": ["x"], "user": "m"})
    plain = parse_request({"model": V3, "task": "retrieval.query", "input": ["x"]})
    assert suffixed is not None
    assert plain is not None
    assert suffixed.options == plain.options
    assert suffixed.model == f"{V3}:retrieval.query"  # answered with the name it was asked by


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": V3, "input": [[1, 2, 3]], "encoding_format": "float"}, "token ids"),
        ({"model": V3, "input": [15339, 1917], "encoding_format": "float"}, "token ids"),
        ({"model": V3, "input": [], "encoding_format": "float"}, "input is empty"),
        ({"model": V3, "input": 5, "encoding_format": "float"}, "a string or a list"),
        ({"model": V3, "input": ["x"], "encoding_format": "int8"}, "encoding_format"),
        ({"model": 3, "input": ["x"], "encoding_format": "float"}, "model must be a string"),
        ({"model": V3, "input": ["x"], "user": "u", "logit_bias": {}}, "logit_bias"),
        ({"model": f"{V3}:retrieval.nope", "input": ["x"], "user": "u"}, "retrieval.nope"),
        ({"model": f"{V3}:retrieval.query", "task": "text-matching", "input": ["x"]}, "but task"),
    ],
)
def test_what_jina_cannot_be_asked_is_refused_before_anything_is_sent(
    body: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InvalidInputError, match=fragment):
        parse_request(body)


def test_errors_come_back_in_the_dialect_the_client_spoke() -> None:
    assert dialect_of({"model": V3, "encoding_format": "float"}) == "openai"
    assert dialect_of({"model": V3, "embedding_type": "float"}) == "jina"
    error = json.loads(render_error(InvalidInputError("input is empty"), "openai", 422))
    assert error == {
        "error": {
            "message": "input is empty",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    assert json.loads(render_error("no key", "openai", 401))["error"]["type"] == (
        "authentication_error"
    )


# The real SDK through the proxy


def test_the_sdks_default_base64_gives_the_jina_answers_vectors_and_a_repeat_is_free(
    emulator: JinaEmulator, proxy: Served, sdk: SDK
) -> None:
    client = sdk(proxy)
    first = client.embeddings.create(model=V3, input=TEXTS)  # numpy installed: base64
    assert emulator.requests[-1].body is not None
    assert emulator.requests[-1].body.keys() <= {"model", "input", "task", "embedding_type"}
    assert first.usage.total_tokens == emulator.requests[-1].tokens
    sent = len(emulator.requests)
    again = client.embeddings.create(model=V3, input=TEXTS)
    assert len(emulator.requests) == sent
    assert again.usage.total_tokens == 0
    got = np.array([item.embedding for item in again.data], dtype=np.float32)
    assert got.tobytes() == jina_vectors(proxy, {"model": V3, "input": TEXTS}).tobytes()
    assert [item.index for item in again.data] == [0, 1, 2]


def test_float_answers_are_the_float64_values_a_direct_call_gives(
    emulator: JinaEmulator, proxy: Served, sdk: SDK
) -> None:
    client = sdk(proxy)
    spent = []
    for _ in range(2):  # a miss, then a hit
        got = client.embeddings.create(model=V3, input=TEXTS, encoding_format="float")
        spent.append(got.usage.total_tokens)
        direct = httpx.post(
            emulator.url + "/v1/embeddings",
            json={"model": V3, "input": TEXTS},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ).json()
        assert [item.embedding for item in got.data] == [d["embedding"] for d in direct["data"]]
    assert spent[0] > 0
    assert spent[1] == 0


def test_the_task_suffix_reaches_the_upstream_and_shares_entries_with_the_plain_form(
    emulator: JinaEmulator, proxy: Served, sdk: SDK
) -> None:
    sdk(proxy).embeddings.create(model=f"{V3}:retrieval.query", input=TEXTS)
    assert emulator.requests[-1].body is not None
    assert emulator.requests[-1].body["task"] == "retrieval.query"
    sent = len(emulator.requests)
    plain = proxy.embed({"model": V3, "task": "retrieval.query", "input": TEXTS}, API_KEY)
    assert plain.headers["X-Embedcache-Cached"] == "3"
    assert len(emulator.requests) == sent


def test_token_ids_are_a_422_in_openais_shape_and_nothing_is_spent_or_kept(
    emulator: JinaEmulator, proxy: Served, sdk: SDK
) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        sdk(proxy).embeddings.create(model=V3, input=[[15339, 1917]])
    assert "token ids" in caught.value.message
    assert emulator.requests == []
    proxy.stop()
    with Store(proxy.cache_dir) as store:
        assert len(store) == 0


def test_a_refused_key_gets_openais_error_shape(
    emulator: JinaEmulator, make_proxy: MakeProxy, sdk: SDK
) -> None:
    proxy = make_proxy("--token", "proxy-token")
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(proxy).embeddings.create(model=V3, input=TEXTS)
    assert "token" in caught.value.message
    assert emulator.requests == []


# Milvus's openai provider, replayed


def milvus_batch(texts: list[str], model: str, dim: int | None) -> dict[str, Any]:
    """A body as Milvus's ``openai`` text-embedding function sends it (clients.md)."""
    body: dict[str, Any] = {"model": model, "input": texts, "encoding_format": "float"}
    if dim is not None:
        body["dimensions"] = dim
    return body


def test_milvus_openai_batches_of_128_carry_the_task_and_dimensions_and_repeat_from_cache(
    emulator: JinaEmulator, proxy: Served, sdk: SDK
) -> None:
    texts = [f"milvus row {i}" for i in range(256)]
    model = f"{V3}:retrieval.passage"
    for start in (0, 128):
        answer = proxy.embed(milvus_batch(texts[start : start + 128], model, 256), API_KEY)
        assert answer.status_code == 200
        data = sorted(answer.json()["data"], key=lambda item: item["index"])  # as Milvus does
        assert [len(item["embedding"]) for item in data] == [256] * 128
    upstream = [r.body for r in emulator.requests]
    assert all(b is not None and b["task"] == "retrieval.passage" for b in upstream)
    assert all(b is not None and b["dimensions"] == 256 for b in upstream)
    assert all(b is not None and "encoding_format" not in b for b in upstream)
    sent = len(emulator.requests)
    repeat = proxy.embed(milvus_batch(texts[:128], model, 256), API_KEY)
    assert repeat.headers["X-Embedcache-Cached"] == "128"
    assert repeat.json()["usage"]["total_tokens"] == 0
    assert len(emulator.requests) == sent
