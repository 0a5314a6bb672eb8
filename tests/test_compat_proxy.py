"""Real third-party clients pointed at ``embedcache serve`` (tox -e compat).

Each client's URL is pointed at the proxy, exactly as a user would; the vectors must be
the ones the same client gets from the emulator directly, and a second run must be served
without any upstream request. Each runs against an emulator of each float style (reference
§12): these clients parse JSON floats into float64, so "the same vectors" means the same
float64 values, which only the upstream's own float text gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embedcache.testing import JinaEmulator

from .conftest import API_KEY, client_module
from .serving import ProxyProcess, Served

pytestmark = pytest.mark.compat


@pytest.fixture
def proxy(emulator: JinaEmulator, cache_dir: Path, float_style: str) -> Iterator[Served]:
    with ProxyProcess(emulator.url, cache_dir) as served:
        yield served


def test_pymilvus_through_the_proxy_gets_the_emulators_vectors_then_hits(
    emulator: JinaEmulator, proxy: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    jinaai = client_module("pymilvus.model.dense.jinaai")
    docs, queries = ["first document", "second document"], ["a query"]

    def run(url: str) -> list[np.ndarray]:
        monkeypatch.setattr(jinaai, "API_URL", url + "/v1/embeddings")
        ef = jinaai.JinaEmbeddingFunction(api_key=API_KEY, dimensions=256)
        return [*ef.encode_documents(docs), *ef.encode_queries(queries)]

    expected = run(emulator.url)
    before = len(emulator.requests)
    first = run(proxy.url)
    assert len(emulator.requests) == before + 2  # documents, then queries: both misses
    second = run(proxy.url)
    assert len(emulator.requests) == before + 2
    for got in (first, second):
        assert [vector.tobytes() for vector in got] == [vector.tobytes() for vector in expected]


def test_langchain_through_the_proxy_gets_the_emulators_vectors_then_hits(
    emulator: JinaEmulator, proxy: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    jina = client_module("langchain_community.embeddings.jina")
    texts = ["LangChain sends the default v2 model", "and no task"]

    def run(url: str) -> tuple[list[list[float]], list[float]]:
        monkeypatch.setattr(jina, "JINA_API_URL", url + "/v1/embeddings")
        embeddings = jina.JinaEmbeddings(jina_api_key=API_KEY)
        return embeddings.embed_documents(texts), embeddings.embed_query("a query")

    expected = run(emulator.url)
    before = len(emulator.requests)
    assert run(proxy.url) == expected
    assert len(emulator.requests) == before + 2
    assert run(proxy.url) == expected
    assert len(emulator.requests) == before + 2


def test_llamaindex_through_the_proxy_gets_the_emulators_vectors_then_hits(
    emulator: JinaEmulator, proxy: Served
) -> None:
    jinaai = client_module("llama_index.embeddings.jinaai")
    texts = ["LlamaIndex sends encoding_type, not embedding_type", "and the task it is given"]

    def run(url: str) -> tuple[list[list[float]], list[float]]:
        model = jinaai.JinaEmbedding(
            api_key=API_KEY, model="jina-embeddings-v3", task="retrieval.passage", dimensions=64
        )
        # LlamaIndex takes no URL (llama_index#15430): its API caller's URL is a private
        # attribute, set after construction as the README tells users to. Check it after
        # upgrading llama-index-embeddings-jinaai.
        model._api.api_url = url + "/v1/embeddings"
        return model.get_text_embedding_batch(texts), model.get_query_embedding("a query")

    expected = run(emulator.url)
    before = len(emulator.requests)
    assert run(proxy.url) == expected
    assert len(emulator.requests) == before + 2
    assert run(proxy.url) == expected
    assert len(emulator.requests) == before + 2
