"""The emulator's ``POST /v1/rerank``: Jina's answer shape, deterministic scores, pointwise
models scoring a pair the same in any list and a listwise model not, and Jina's 422s."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from embedcache.testing import JinaEmulator

V2 = "jina-reranker-v2-base-multilingual"
V3 = "jina-reranker-v3"
DOCS = ["Milvus is a vector database.", "Redis keeps the shared tier.", "Cats sleep a lot."]


def rerank(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/v1/rerank", json={"model": V2, "query": "what is milvus?", **body})


def test_the_answer_is_sorted_by_score_with_indexes_documents_and_usage(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    answer = rerank(http, documents=DOCS)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert list(body) == ["model", "usage", "results"]
    results = body["results"]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    assert all(r["document"] == {"text": DOCS[r["index"]]} for r in results)
    assert all(0 < score < 1 for score in scores)
    expected = emulator.expected_scores("what is milvus?", DOCS)
    assert {r["index"]: r["relevance_score"] for r in results} == dict(enumerate(expected))
    assert body["usage"]["total_tokens"] == emulator.requests[-1].tokens > 0
    assert emulator.requests[-1].inputs == 3


def test_top_n_cuts_and_return_documents_false_leaves_the_texts_out(http: httpx.Client) -> None:
    full = rerank(http, documents=DOCS).json()["results"]
    cut = rerank(http, documents=DOCS, top_n=2, return_documents=False).json()["results"]
    assert cut == [{"index": r["index"], "relevance_score": r["relevance_score"]} for r in full[:2]]


def test_a_pointwise_model_scores_a_pair_the_same_in_any_list(emulator: JinaEmulator) -> None:
    alone = emulator.expected_scores("q", [DOCS[0]])
    among = emulator.expected_scores("q", [DOCS[2], DOCS[1], DOCS[0]])
    assert alone[0] == among[2]
    assert emulator.expected_scores("another query", [DOCS[0]]) != alone


def test_a_listwise_model_scores_a_pair_by_the_whole_list(emulator: JinaEmulator) -> None:
    first = emulator.expected_scores("q", DOCS, model=V3)
    reordered = emulator.expected_scores("q", [DOCS[1], DOCS[0], DOCS[2]], model=V3)
    assert first == emulator.expected_scores("q", DOCS, model=V3)  # deterministic
    assert first[0] != reordered[1]


def test_listwise_usage_reads_the_query_once(http: httpx.Client) -> None:
    pointwise = rerank(http, documents=DOCS).json()["usage"]["total_tokens"]
    listwise = rerank(http, model=V3, documents=DOCS).json()["usage"]["total_tokens"]
    assert listwise < pointwise


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "jina-embeddings-v3", "documents": DOCS}, "model"),
        ({"documents": []}, "documents"),
        ({"documents": [3]}, "documents.0"),
        ({"documents": DOCS, "top_n": 0}, "top_n"),
        ({"documents": DOCS, "return_documents": "yes"}, "return_documents"),
        ({"documents": DOCS, "truncation": True}, "truncation"),
        ({"documents": [{"image": "https://x.test/a.png"}]}, "documents.0"),
    ],
)
def test_what_jina_refuses_is_a_422_naming_the_field(
    http: httpx.Client, body: dict[str, Any], field: str
) -> None:
    answer = rerank(http, **body)
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith(f"{field}:")


def test_jina_reranker_m0_takes_images(http: httpx.Client) -> None:
    answer = rerank(
        http, model="jina-reranker-m0", documents=[{"image": "https://x.test/a.png"}, "text"]
    )
    assert answer.status_code == 200, answer.text
    images = [r for r in answer.json()["results"] if r["index"] == 0]
    assert images[0]["document"] == {"image": "https://x.test/a.png"}
