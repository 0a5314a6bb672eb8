"""embedcache.llama_index.JinaRerank: the real llama-index-core, over the rerank cache and the
emulator (a query engine on LlamaIndex's MockLLM: nothing reaches the internet); and (marked
compat) llama-index-postprocessor-jinaai-rerank's JinaRerank giving the same nodes."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from embedcache import InvalidInputError
from embedcache.llama_index import JinaEmbedding, JinaRerank
from embedcache.testing import JinaEmulator

from .conftest import API_KEY, client_module
from .rerank_samples import QUERY, TEXTS

MakeRR = Callable[..., JinaRerank]
V2 = "jina-reranker-v2-base-multilingual"


def nodes() -> list[NodeWithScore]:
    """Retrieved nodes, with metadata (sent with the text, as LlamaIndex embeds it)."""
    return [
        NodeWithScore(node=TextNode(text=t, id_=f"n{i}", metadata={"n": i}), score=0.5)
        for i, t in enumerate(TEXTS)
    ]


def sent_texts() -> list[str]:
    return [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes()]


@pytest.fixture
def make_rr(emulator: JinaEmulator, cache_dir: Path) -> Iterator[MakeRR]:
    made: list[JinaRerank] = []

    def make(*args: Any, **kwargs: Any) -> JinaRerank:
        kwargs.setdefault("api_key", API_KEY)
        kwargs.setdefault("base_url", emulator.url)
        kwargs.setdefault("cache_dir", cache_dir)
        reranker = JinaRerank(*args, **kwargs)
        made.append(reranker)
        return reranker

    yield make
    for reranker in made:
        reranker.close()


def direct(http: httpx.Client, texts: list[str], top_n: int, model: str) -> list[tuple[int, float]]:
    """The emulator's own answer, asked directly: (index, relevance_score), best first."""
    body = {"model": model, "query": QUERY, "documents": texts, "top_n": top_n}
    answer = http.post("/v1/rerank", json=body)
    answer.raise_for_status()
    return [(r["index"], r["relevance_score"]) for r in answer.json()["results"]]


def found(kept: list[NodeWithScore]) -> list[tuple[int, float | None]]:
    return [(int(k.node.node_id[1:]), k.score) for k in kept]


def test_is_a_node_postprocessor_with_the_jinaai_packages_arguments_in_order() -> None:
    assert issubclass(JinaRerank, BaseNodePostprocessor)
    params = inspect.signature(JinaRerank.__init__).parameters
    assert list(params)[1:5] == ["top_n", "model", "base_url", "api_key"]
    assert params["top_n"].default == 2  # the jinaai package's


@pytest.mark.parametrize("model", [V2, "jina-reranker-v3"])
def test_nodes_get_the_apis_order_and_scores_and_a_second_pass_sends_nothing(
    make_rr: MakeRR, emulator: JinaEmulator, http: httpx.Client, model: str
) -> None:
    expected = direct(http, sent_texts(), 3, model)
    asked = len(emulator.requests)
    kept = make_rr(3, model).postprocess_nodes(nodes(), query_str=QUERY)
    assert found(kept) == expected
    assert emulator.requests[-1].body["documents"] == sent_texts()  # type: ignore[index]
    again = make_rr(3, model)  # a new object: the scores come from disk
    assert found(again.postprocess_nodes(nodes(), QueryBundle(QUERY))) == expected
    assert len(emulator.requests) == asked + 1
    assert again.stats.requests == 0


def test_top_n_none_keeps_every_node_reordered(make_rr: MakeRR, http: httpx.Client) -> None:
    kept = make_rr(None).postprocess_nodes(nodes(), query_str=QUERY)
    assert found(kept) == direct(http, sent_texts(), len(TEXTS), V2)


def test_async_postprocessing_matches_the_sync_one_from_the_same_entries(
    make_rr: MakeRR, emulator: JinaEmulator
) -> None:
    reranker = make_rr()
    kept = asyncio.run(reranker.apostprocess_nodes(nodes(), query_str=QUERY))
    assert len(kept) == 2
    assert found(reranker.postprocess_nodes(nodes(), query_str=QUERY)) == found(kept)
    assert len(emulator.requests) == 1


def test_a_query_engine_reranks_its_retrieved_nodes_through_the_cache(
    make_rr: MakeRR, emulator: JinaEmulator, cache_dir: Path
) -> None:
    def answer() -> list[str]:
        with JinaEmbedding(api_key=API_KEY, base_url=emulator.url, cache_dir=cache_dir) as em:
            index = VectorStoreIndex.from_documents(
                [Document(text=t) for t in TEXTS], embed_model=em
            )
            engine = index.as_query_engine(
                llm=MockLLM(), similarity_top_k=4, node_postprocessors=[make_rr(top_n=2)]
            )
            response = engine.query(QUERY)
        return [n.node.get_content() for n in response.source_nodes]

    first = answer()
    (retrieved,) = [r.body["documents"] for r in emulator.requests if r.path == "/v1/rerank"]  # type: ignore[index]
    assert len(retrieved) == 4
    scores = emulator.expected_scores(QUERY, retrieved)
    best = sorted(range(4), key=lambda i: (-scores[i], i))[:2]
    assert first == [retrieved[i] for i in best]
    asked = len(emulator.requests)
    assert answer() == first
    assert len(emulator.requests) == asked  # embeddings and scores all from disk


def test_the_jinaai_packages_base_url_with_v1_is_taken(
    make_rr: MakeRR, emulator: JinaEmulator
) -> None:
    kept = make_rr(base_url=emulator.url + "/v1/").postprocess_nodes(nodes(), query_str=QUERY)
    assert len(kept) == 2
    assert [r.path for r in emulator.requests] == ["/v1/rerank"]


def test_an_unknown_option_or_an_embedding_model_fails_at_construction_before_any_request(
    make_rr: MakeRR, emulator: JinaEmulator
) -> None:
    with pytest.raises(TypeError, match=r"JinaRerank\(\) got .*'api_url'"):
        make_rr(api_url="http://typo")
    with pytest.raises(InvalidInputError, match="jina-embeddings-v3 is an embedding model"):
        make_rr(2, "jina-embeddings-v3")
    assert emulator.requests == []


def test_no_query_is_refused_and_no_nodes_send_nothing(
    make_rr: MakeRR, emulator: JinaEmulator
) -> None:
    reranker = make_rr()
    with pytest.raises(ValueError, match="Missing query bundle"):
        reranker.postprocess_nodes(nodes())
    assert reranker.postprocess_nodes([], query_str=QUERY) == []
    assert emulator.requests == []


def test_the_key_is_in_no_repr_dump_or_dict_and_from_dict_gives_the_same_reranker(
    make_rr: MakeRR, emulator: JinaEmulator, cache_dir: Path
) -> None:
    reranker = make_rr(3, "jina-reranker-v3")
    saved = reranker.to_dict()
    for shown in (repr(reranker), str(reranker.model_dump()), str(saved)):
        assert API_KEY not in shown
    again = JinaRerank.from_dict(
        {**saved, "api_key": API_KEY, "base_url": emulator.url, "cache_dir": cache_dir}
    )
    try:
        assert (again.model, again.top_n) == ("jina-reranker-v3", 3)
        assert found(again.postprocess_nodes(nodes(), query_str=QUERY)) == found(
            reranker.postprocess_nodes(nodes(), query_str=QUERY)
        )
        assert len(emulator.requests) == 1
    finally:
        again.close()


# -- compat: llama-index-postprocessor-jinaai-rerank's own JinaRerank on the emulator -------


@pytest.mark.compat
def test_the_jinaai_packages_jina_rerank_gives_the_same_nodes_and_scores(
    make_rr: MakeRR, emulator: JinaEmulator
) -> None:
    jinaai = client_module("llama_index.postprocessor.jinaai_rerank")
    # It takes the API root as base_url (with /v1, appending /rerank): no patch needed.
    theirs = jinaai.JinaRerank(top_n=3, model=V2, base_url=emulator.url + "/v1", api_key=API_KEY)
    expected = found(theirs.postprocess_nodes(nodes(), query_str=QUERY))
    assert found(make_rr(3, V2).postprocess_nodes(nodes(), query_str=QUERY)) == expected
    asked = len(emulator.requests)
    assert found(make_rr(3, V2).postprocess_nodes(nodes(), query_str=QUERY)) == expected
    assert len(emulator.requests) == asked
