"""embedcache.langchain.JinaRerank: the real langchain-core, over the rerank cache and the
emulator; and (marked compat) langchain-community's JinaRerank giving the same answers."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import SecretStr

from embedcache import CacheMissError, InvalidInputError
from embedcache.langchain import JinaRerank
from embedcache.testing import JinaEmulator

from .conftest import API_KEY, client_module
from .rerank_samples import QUERY, TEXTS

MakeRR = Callable[..., JinaRerank]
DOCS = [Document(text, metadata={"source": f"doc-{i}"}) for i, text in enumerate(TEXTS)]
V3 = "jina-reranker-v3"


@pytest.fixture
def make_rr(emulator: JinaEmulator, cache_dir: Path) -> Iterator[MakeRR]:
    made: list[JinaRerank] = []

    def make(**kwargs: Any) -> JinaRerank:
        kwargs.setdefault("jina_api_key", API_KEY)
        kwargs.setdefault("base_url", emulator.url)
        kwargs.setdefault("cache_dir", cache_dir)
        reranker = JinaRerank(**kwargs)
        made.append(reranker)
        return reranker

    yield make
    for reranker in made:
        reranker.close()


def reranks(emulator: JinaEmulator) -> list[list[str]]:
    """The documents of every /v1/rerank request the emulator received, in order."""
    return [
        list(r.body["documents"])
        for r in emulator.requests
        if r.path == "/v1/rerank" and isinstance(r.body, dict)
    ]


def direct(
    http: httpx.Client, query: str, texts: list[str], top_n: int | None, model: str
) -> list[dict[str, Any]]:
    """The emulator's own answer, asked directly: ``[{"index", "relevance_score"}]``."""
    body: dict[str, Any] = {"model": model, "query": query, "documents": texts}
    if top_n is not None:
        body["top_n"] = top_n
    answer = http.post("/v1/rerank", json=body)
    answer.raise_for_status()
    return [
        {"index": r["index"], "relevance_score": r["relevance_score"]}
        for r in answer.json()["results"]
    ]


def test_is_a_document_compressor_with_langchain_communitys_fields() -> None:
    assert issubclass(JinaRerank, BaseDocumentCompressor)
    assert {"model", "top_n"} <= set(JinaRerank.model_fields)
    params = inspect.signature(JinaRerank.__init__).parameters
    assert {"model", "top_n", "jina_api_key"} <= set(params)
    assert params["top_n"].default == 3  # langchain-community's


@pytest.mark.parametrize("model", ["jina-reranker-v2-base-multilingual", V3])
def test_compressed_documents_carry_the_apis_order_and_scores_and_a_second_pass_sends_nothing(
    make_rr: MakeRR, emulator: JinaEmulator, http: httpx.Client, model: str
) -> None:
    expected = direct(http, QUERY, TEXTS, 3, model)
    asked = len(emulator.requests)
    first = make_rr(model=model).compress_documents(DOCS, QUERY)
    assert [d.page_content for d in first] == [TEXTS[r["index"]] for r in expected]
    assert [d.metadata for d in first] == [
        {"source": f"doc-{r['index']}", "relevance_score": r["relevance_score"]} for r in expected
    ]
    assert all("relevance_score" not in d.metadata for d in DOCS)  # copies, not the originals
    assert len(emulator.requests) == asked + 1
    again = make_rr(model=model)  # a new object: the answer comes from disk
    assert again.compress_documents(DOCS, QUERY) == first
    assert len(emulator.requests) == asked + 1
    assert again.stats.requests == 0
    assert again.stats.hits == len(TEXTS)


def test_rerank_gives_langchain_communitys_index_and_score_dicts(
    make_rr: MakeRR, http: httpx.Client
) -> None:
    reranker = make_rr(model="jina-reranker-v2-base-multilingual", top_n=2)
    every = direct(http, QUERY, TEXTS, None, "jina-reranker-v2-base-multilingual")
    assert reranker.rerank(DOCS, QUERY) == every[:2]  # the top_n field
    assert reranker.rerank(TEXTS, QUERY, top_n=None) == every
    assert reranker.rerank([{"text": t} for t in TEXTS], QUERY, top_n=4) == every[:4]
    assert reranker.rerank(TEXTS, QUERY, top_n=0) == every[:2]  # below 1: the field
    assert reranker.rerank([], QUERY) == []
    with pytest.raises(InvalidInputError, match="document 1: a str, a Document"):
        reranker.rerank([TEXTS[0], {"image": "https://example.com/a.png"}], QUERY)


def test_top_n_none_keeps_every_document_reordered(make_rr: MakeRR) -> None:
    kept = make_rr(top_n=None).compress_documents(DOCS, QUERY)
    assert sorted(d.page_content for d in kept) == sorted(TEXTS)
    scores = [d.metadata["relevance_score"] for d in kept]
    assert scores == sorted(scores, reverse=True)


def test_an_overlapping_candidate_list_sends_only_the_new_documents(
    make_rr: MakeRR, emulator: JinaEmulator, http: httpx.Client
) -> None:
    reranker = make_rr(top_n=None)
    reranker.compress_documents(DOCS[:3], QUERY)
    wider = reranker.compress_documents(DOCS, QUERY)
    assert reranks(emulator) == [TEXTS[:3], TEXTS[3:]]
    expected = direct(http, QUERY, TEXTS, None, "jina-reranker-v2-base-multilingual")
    assert [d.metadata["relevance_score"] for d in wider] == [
        r["relevance_score"] for r in expected
    ]


def test_async_compression_matches_the_sync_one_from_the_same_entries(
    make_rr: MakeRR, emulator: JinaEmulator
) -> None:
    reranker = make_rr()

    async def run() -> tuple[list[Document], list[dict[str, Any]]]:
        documents = await reranker.acompress_documents(DOCS, QUERY)
        return list(documents), await reranker.arerank(TEXTS, QUERY, top_n=None)

    documents, every = asyncio.run(run())
    assert len(reranks(emulator)) == 1
    assert documents == list(reranker.compress_documents(DOCS, QUERY))
    assert every == reranker.rerank(TEXTS, QUERY, top_n=None)
    assert len(reranks(emulator)) == 1


def test_offline_a_miss_raises_and_sends_nothing(make_rr: MakeRR, emulator: JinaEmulator) -> None:
    with pytest.raises(CacheMissError):
        make_rr(offline=True).compress_documents(DOCS, QUERY)
    assert emulator.requests == []


def test_the_key_may_be_a_secret_str_and_is_in_no_repr_or_dump(
    make_rr: MakeRR, emulator: JinaEmulator
) -> None:
    reranker = make_rr(jina_api_key=SecretStr(API_KEY))
    reranker.compress_documents(DOCS, QUERY)
    assert all(r.authorized for r in emulator.requests)
    for shown in (repr(reranker), str(reranker.model_dump()), reranker.model_dump_json()):
        assert API_KEY not in shown


def test_an_unknown_option_or_an_embedding_model_fails_at_construction_before_any_request(
    make_rr: MakeRR, emulator: JinaEmulator
) -> None:
    with pytest.raises(TypeError, match=r"JinaRerank\(\) got .*'session'"):
        make_rr(session=object())
    with pytest.raises(InvalidInputError, match="jina-embeddings-v3 is an embedding model"):
        make_rr(model="jina-embeddings-v3")
    assert emulator.requests == []


# -- compat: langchain-community's own JinaRerank, pointed at the emulator ------------------


@pytest.mark.compat
def test_langchain_communitys_jina_rerank_gives_the_same_documents_and_scores(
    make_rr: MakeRR, emulator: JinaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    jina = client_module("langchain_community.document_compressors.jina_rerank")
    # It posts to a module constant, read at each call: pointed at the emulator here.
    monkeypatch.setattr(jina, "JINA_API_URL", emulator.url + "/v1/rerank")
    model = "jina-reranker-v2-base-multilingual"  # theirs defaults to v1, not served
    theirs = jina.JinaRerank(jina_api_key=API_KEY, model=model, top_n=3)
    ours = make_rr(model=model, top_n=3)
    assert ours.compress_documents(DOCS, QUERY) == theirs.compress_documents(DOCS, QUERY)
    assert ours.rerank(TEXTS, QUERY, top_n=None) == theirs.rerank(TEXTS, QUERY, top_n=None)
    asked = len(emulator.requests)
    assert make_rr(model=model).compress_documents(DOCS, QUERY) == theirs.compress_documents(
        DOCS, QUERY
    )
    assert len(emulator.requests) == asked + 1  # theirs asked again; ours did not
