"""The proxy's rerank endpoints over loopback to the emulator: Jina's ``POST /v1/rerank``
(exact answers), the bodies Milvus 2.6's ``tei`` and ``vllm`` Model Rankers send to
``POST /rerank`` (issue 27; Milvus's internal/util/function/models/{tei,vllm}), Cohere's
``POST /v2/rerank``; each cached, refused in its own error shape, and gated like the
embeddings routes."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from click.testing import CliRunner

from embedcache import JinaRerankFunction
from embedcache.cli.main import main
from embedcache.proxy.budgets import BUDGET_HEADER
from embedcache.testing import JinaEmulator
from embedcache.testing.images import png
from embedcache.tokens import estimate_tokens

from .conftest import API_KEY, MakeProxy, MakeServed, wait_for
from .serving import Served
from .test_proxy import metric, upstream_count
from .test_proxy_hits import samples

V2 = "jina-reranker-v2-base-multilingual"
V3 = "jina-reranker-v3"
M0 = "jina-reranker-m0"
QUERY = "which database stores vectors?"
# What a Milvus search hands its ranker: one query, the candidates' text field (32: the
# providers' default max_client_batch_size).
DOCS = [f"Milvus candidate {i}: a passage about vector search and storage." for i in range(32)]
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def proxy(make_proxy: MakeProxy) -> Served:
    return make_proxy()


def post(proxy: Served, path: str, body: Any, headers: dict[str, str] = AUTH) -> httpx.Response:
    return proxy.http.post(path, json=body, headers=headers)


def direct(emulator: JinaEmulator, body: dict[str, Any]) -> httpx.Response:
    """The emulator's own answer to a ``/v1/rerank`` body."""
    return httpx.post(emulator.url + "/v1/rerank", json=body, headers=AUTH, timeout=30)


def score_texts(raw: bytes, name: str) -> list[bytes]:
    """Every score as the body's text writes it (not as parsed): ``name``'s values."""
    return re.findall(rb'"%s":([^,}\]]+)' % name.encode(), raw)


def by_index(results: list[dict[str, Any]], name: str) -> dict[int, float]:
    return {result["index"]: result[name] for result in results}


# Milvus's providers


def test_milvus_tei_rerank_body_is_answered_exactly_sorted_and_a_repeat_sends_nothing(
    emulator: JinaEmulator, proxy: Served
) -> None:
    # What Milvus's tei provider posts: {"query", "texts"} plus its truncate params.
    body = {"query": QUERY, "texts": DOCS, "truncate": True, "truncation_direction": "Right"}
    answer = post(proxy, "/rerank", body)
    assert answer.status_code == 200, answer.text
    ranks = answer.json()
    assert [list(rank) for rank in ranks] == [["index", "score"]] * len(DOCS)
    scores = [rank["score"] for rank in ranks]
    assert scores == sorted(scores, reverse=True)  # TEI answers highest first
    sent = emulator.requests[-1].body
    assert sent is not None
    assert (sent["model"], sent["query"], sent["documents"]) == (V2, QUERY, DOCS)
    # The same scores, to the last digit, as a direct rerank of the list.
    expected = direct(emulator, {"model": V2, "query": QUERY, "documents": DOCS})
    assert by_index(ranks, "score") == by_index(expected.json()["results"], "relevance_score")
    assert sorted(score_texts(answer.content, "score")) == sorted(
        score_texts(expected.content, "relevance_score")
    )
    before = upstream_count(emulator)
    again = post(proxy, "/rerank", body)
    assert again.content == answer.content
    assert again.headers["X-Embedcache-Status"] == "hit"
    assert upstream_count(emulator) == before


def test_milvus_vllm_rerank_body_without_a_model_uses_the_rerank_model_and_is_cached(
    emulator: JinaEmulator, proxy: Served
) -> None:
    body = {"query": QUERY, "documents": DOCS}  # Milvus's vllm provider names no model
    answer = post(proxy, "/rerank", body)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert list(got) == ["id", "model", "usage", "results"]
    assert got["model"] == V2
    assert got["usage"]["total_tokens"] == emulator.requests[-1].tokens > 0
    results = got["results"]
    assert all(r["document"] == {"text": DOCS[r["index"]]} for r in results)
    expected = emulator.expected_scores(QUERY, DOCS)
    assert by_index(results, "relevance_score") == dict(enumerate(expected))
    assert [r["relevance_score"] for r in results] == sorted(expected, reverse=True)
    before = upstream_count(emulator)
    again = post(proxy, "/rerank", body).json()
    assert again["results"] == results
    assert again["usage"]["total_tokens"] == 0  # nothing sent, nothing charged
    assert upstream_count(emulator) == before


# Jina's own dialect


@pytest.mark.parametrize(
    "shape",
    [
        {},
        {"top_n": 3},
        {"return_documents": False},
        {"top_n": 5, "return_documents": False},
        {"top_n": 100},
    ],
)
def test_the_jina_answer_is_the_emulators_own_text_for_top_n_and_return_documents(
    emulator: JinaEmulator, proxy: Served, shape: dict[str, Any]
) -> None:
    body = {"model": V2, "query": QUERY, "documents": DOCS[:8], **shape}
    answer = post(proxy, "/v1/rerank", body)
    assert answer.status_code == 200, answer.text
    # Byte for byte: keys, order, scores as the emulator writes them, the usage it charged.
    assert answer.content == direct(emulator, body).content
    before = upstream_count(emulator)
    repeat = post(proxy, "/v1/rerank", body).json()
    assert repeat["results"] == answer.json()["results"]  # top_n, documents: shaped locally
    assert repeat["usage"] == {"total_tokens": 0}
    assert upstream_count(emulator) == before


def test_another_top_n_or_an_overlapping_list_is_answered_from_the_same_entries(
    emulator: JinaEmulator, proxy: Served
) -> None:
    post(proxy, "/v1/rerank", {"model": V2, "query": QUERY, "documents": DOCS[:6]})
    before = upstream_count(emulator)
    cut = post(proxy, "/v1/rerank", {"model": V2, "query": QUERY, "documents": DOCS[:6],
                                     "top_n": 2})  # fmt: skip
    assert len(cut.json()["results"]) == 2
    assert upstream_count(emulator) == before
    # Two new candidates: only they are sent, and only their tokens are the usage.
    wider = post(proxy, "/v1/rerank", {"model": V2, "query": QUERY, "documents": DOCS[:8]})
    sent = emulator.requests[-1]
    assert sent.body is not None
    assert sent.body["documents"] == DOCS[6:8]
    assert wider.json()["usage"]["total_tokens"] == sent.tokens
    assert wider.headers["X-Embedcache-Status"] == "partial"
    expected = direct(emulator, {"model": V2, "query": QUERY, "documents": DOCS[:8]})
    assert wider.json()["results"] == expected.json()["results"]


def test_image_documents_on_m0_are_parsed_as_the_embeddings_route_parses_them(
    emulator: JinaEmulator, proxy: Served
) -> None:
    image = base64.b64encode(png(8, 8, seed=3)).decode()
    documents: list[Any] = [{"image": image}, "a caption about vectors", {"text": "a text"}]
    body = {"model": M0, "query": QUERY, "documents": documents}
    answer = post(proxy, "/v1/rerank", body)
    assert answer.status_code == 200, answer.text
    assert answer.content == direct(emulator, body).content  # echoed as sent
    before = upstream_count(emulator)
    assert post(proxy, "/v1/rerank", body).json()["results"] == answer.json()["results"]
    assert upstream_count(emulator) == before


# Cohere's dialect, and the model a body names


def test_cohere_v2_rerank_has_cohere_s_shape_with_the_rerank_model(
    emulator: JinaEmulator, proxy: Served
) -> None:
    body = {"model": "rerank-v3.5", "query": QUERY, "documents": DOCS[:5], "top_n": 2}
    answer = post(proxy, "/v2/rerank", body)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert list(got) == ["id", "results", "meta"]
    assert got["meta"]["api_version"] == {"version": "2"}
    assert got["meta"]["billed_units"]["input_tokens"] == emulator.requests[-1].tokens
    expected = emulator.expected_scores(QUERY, DOCS[:5])
    top = sorted(range(5), key=lambda i: -expected[i])[:2]
    assert got["results"] == [{"index": i, "relevance_score": expected[i]} for i in top]
    sent = emulator.requests[-1].body
    assert sent is not None
    assert sent["model"] == V2  # Cohere's model name means nothing to Jina


def test_a_body_naming_a_jina_reranker_is_used_as_is_and_serve_rerank_model_sets_the_rest(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    proxy = make_proxy("--rerank-model", V3)
    post(proxy, "/rerank", {"query": QUERY, "texts": DOCS[:3]})
    post(proxy, "/rerank", {"model": "BAAI/bge-reranker-base", "query": QUERY,
                            "documents": DOCS[:3]})  # fmt: skip
    named = post(proxy, "/rerank", {"model": M0, "query": QUERY, "documents": DOCS[:3]})
    models = [(r.body or {}).get("model") for r in emulator.requests]
    assert models == [V3, M0]  # v3 is listwise: the same list again is one entry set
    assert named.json()["model"] == M0


def test_serve_refuses_an_embedding_model_as_rerank_model(tmp_path: Path) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(main, [*cache, "serve", "--rerank-model", "jina-embeddings-v3"])
    assert result.exit_code == 2
    assert "--rerank-model" in result.output
    assert "not a reranker" in result.output


# Refusals


@pytest.mark.parametrize(
    ("path", "body", "status", "shape", "named"),
    [
        ("/v1/rerank", {"model": V2, "query": QUERY}, 422, "detail", "documents"),
        ("/v1/rerank", {"model": V2, "query": QUERY, "documents": DOCS, "top_n": 0}, 422,
         "detail", "top_n"),
        ("/v1/rerank", {"model": V2, "query": QUERY, "documents": [{"image": "aGk="}]}, 422,
         "detail", "documents[0]"),
        ("/v1/rerank", {"model": "jina-embeddings-v3", "query": QUERY, "documents": DOCS},
         422, "detail", "not a reranker"),
        ("/rerank", {"query": QUERY, "texts": []}, 400, "error", "texts"),
        ("/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": True}, 422, "error",
         "raw_scores"),
        ("/rerank", {"query": "", "texts": DOCS}, 422, "error", "query"),
        ("/rerank", {"query": QUERY, "texts": [1]}, 422, "error", "texts[0]"),
        ("/rerank", {"query": QUERY, "documents": DOCS, "truncate_prompt_tokens": 256}, 400,
         "openai", "truncate_prompt_tokens"),
        ("/rerank", {"query": QUERY, "documents": "one"}, 400, "openai", "documents"),
        ("/v2/rerank", {"query": QUERY, "documents": DOCS, "max_tokens_per_doc": 512}, 400,
         "message", "max_tokens_per_doc"),
        ("/v2/rerank", {"query": QUERY, "documents": DOCS, "rank_fields": ["a"]}, 400,
         "message", "rank_fields"),
    ],
)  # fmt: skip
def test_a_bad_body_is_refused_in_its_dialect_s_shape_before_any_upstream_request(
    emulator: JinaEmulator,
    proxy: Served,
    path: str,
    body: dict[str, Any],
    status: int,
    shape: str,
    named: str,
) -> None:
    answer = post(proxy, path, body)
    assert answer.status_code == status, answer.text
    got = answer.json()
    message = {
        "detail": lambda: got["detail"],
        "error": lambda: got["error"],
        "openai": lambda: got["error"]["message"],
        "message": lambda: got["message"],
    }[shape]()
    assert isinstance(message, str)
    assert named in message
    if shape == "error":
        assert got["error_type"] in ("validation", "empty")
    assert upstream_count(emulator) == 0


def test_more_documents_than_max_inputs_is_a_413_naming_the_field(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    proxy = make_proxy("--max-inputs", "4")
    answer = post(proxy, "/rerank", {"query": QUERY, "texts": DOCS[:5]})
    assert answer.status_code == 413
    assert "5 texts" in answer.json()["error"]
    assert upstream_count(emulator) == 0


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_a_caller_without_the_token_is_refused_before_the_body_is_read(
    emulator: JinaEmulator, make_proxy: MakeProxy, path: str
) -> None:
    proxy = make_proxy("--token", "proxy-token", env={"JINAAI_API_KEY": API_KEY})
    where = urlsplit(proxy.url)
    size = 8 * 1024 * 1024
    with socket.create_connection((where.hostname, where.port), timeout=30) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(head.encode() + b"Content-Length: %d\r\n\r\n" % size)
        answer = sock.recv(65536)  # answered with no byte of the body sent
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert upstream_count(emulator) == 0
    ok = post(proxy, path, _body_for(path), {"Authorization": "Bearer proxy-token"})
    assert ok.status_code == 200, ok.text


def _body_for(path: str) -> dict[str, Any]:
    if path == "/v1/rerank":
        return {"model": V2, "query": QUERY, "documents": DOCS[:2]}
    return {"query": QUERY, "documents": DOCS[:2]}


def test_rerank_requests_are_counted_in_the_request_log(
    emulator: JinaEmulator, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    log = tmp_path / "requests.jsonl"
    proxy = make_proxy("--request-log", str(log))
    post(proxy, "/rerank", {"query": QUERY, "texts": DOCS[:3]})
    post(proxy, "/rerank", {"query": QUERY, "texts": DOCS[:3]})
    proxy.stop()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["route"], x["dialect"], x["model"], x["texts"], x["cache"]) for x in lines] == [
        ("/rerank", "tei", V2, 3, "miss"),
        ("/rerank", "tei", V2, 3, "hit"),
    ]
    assert lines[0]["tokens_spent"] == emulator.requests[-1].tokens
    # A fetch is digested (analyze tells a request fetched again by it); a hit is not.
    assert re.fullmatch(r"r_[0-9a-f]{16}", lines[0]["digest"])
    assert lines[1]["digest"] is None


def test_a_budgeted_caller_pays_for_rerank_misses_in_each_dialect_and_a_cached_one_is_free(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    proxy = make_proxy("--budget-tokens", "200", "--budget-window", "3600")
    small = {"query": QUERY, "texts": DOCS[:2]}
    first = post(proxy, "/rerank", small)
    left = int(first.headers[BUDGET_HEADER])
    assert left == 200 - emulator.requests[-1].tokens
    over = [
        ("/v1/rerank", {"model": V2}, lambda got: got["code"] == "budget_exceeded"),
        ("/rerank", {}, lambda got: got["error"]["type"] == "budget_exceeded"),  # vLLM's
        ("/v2/rerank", {}, lambda got: "budget" in got["message"]),
    ]
    for path, model, refused in over:
        answer = post(proxy, path, {**model, "query": QUERY, "documents": DOCS})
        assert answer.status_code == 429, answer.text
        assert refused(answer.json())
    tei = post(proxy, "/rerank", {"query": QUERY, "texts": DOCS})
    assert tei.status_code == 429
    assert tei.json()["error_type"] == "overloaded"
    repeat = post(proxy, "/rerank", small)
    assert repeat.status_code == 200
    assert int(repeat.headers[BUDGET_HEADER]) == left
    assert upstream_count(emulator) == 1


def test_rerank_entries_are_in_the_metrics_hits_and_tokens(
    emulator: JinaEmulator, proxy: Served
) -> None:
    body = {"query": QUERY, "texts": DOCS[:4]}
    post(proxy, "/rerank", body)
    post(proxy, "/rerank", body)
    assert metric(proxy, "tokens_spent_total") == emulator.requests[-1].tokens
    assert metric(proxy, "upstream_requests_total") == 1


# Scores kept in memory for repeats


def test_scores_are_kept_in_the_answers_budget_and_let_go_when_another_process_clears(
    emulator: JinaEmulator, make_served: MakeServed, cache_dir: Path
) -> None:
    proxy = make_served()
    body = {"query": QUERY, "texts": DOCS[:4]}

    def held() -> list[float]:
        return list(samples(proxy, "rendered_bytes").values())

    def post_anew() -> httpx.Response:
        """On a new connection, so the kernel may give it to either worker."""
        with httpx.Client(base_url=proxy.url, timeout=30) as http:
            return http.post("/rerank", json=body, headers=AUTH)

    def every_worker_keeps_them() -> bool:
        assert post_anew().status_code == 200
        return len(held()) == 2 and min(held()) > 0

    # A repeat is answered from scores each worker keeps, counted in its memory budget.
    wait_for(every_worker_keeps_them, lambda: f"rendered: {held()}", limit=20.0)
    fetched = len(emulator.requests)
    assert post_anew().headers["X-Embedcache-Cached"] == "4"
    assert len(emulator.requests) == fetched
    subprocess.run(
        [sys.executable, "-m", "embedcache", "--cache-dir", str(cache_dir), "clear", "--yes"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    # Every worker lets go of them, unasked: the next request is sent again.
    wait_for(lambda: max(held()) == 0, lambda: f"still held: {held()}", limit=20.0)
    assert post_anew().headers["X-Embedcache-Cached"] == "0"
    assert len(emulator.requests) == fetched + 1


def test_a_budgeted_caller_reserves_only_what_a_partly_cached_list_will_send(
    emulator: JinaEmulator, make_proxy: MakeProxy, cache_dir: Path
) -> None:
    # 31 of the 32 scores cached beforehand (the library, the same cache and upstream).
    with JinaRerankFunction(V2, API_KEY, base_url=emulator.url, cache_dir=cache_dir) as rf:
        rf.rerank_scores(QUERY, DOCS[:-1])
    whole = sum(estimate_tokens(QUERY) + estimate_tokens(doc) for doc in DOCS)
    proxy = make_proxy("--budget-tokens", str(whole // 4), "--budget-window", "3600")
    # The whole list's estimate is over the budget; its one new document's is not.
    answer = post(proxy, "/rerank", {"query": QUERY, "texts": DOCS})
    assert answer.status_code == 200, answer.text
    assert emulator.requests[-1].body["documents"] == DOCS[-1:]  # type: ignore[index]
    assert int(answer.headers[BUDGET_HEADER]) == whole // 4 - emulator.requests[-1].tokens
