"""`embedcache analyze` on reranks: request-log lines of the rerank routes counted apart
from embeddings, and rerank bodies keyed as the cache keys their scores, checked against
what a real proxy did for the same bodies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner

from embedcache.cli import main
from embedcache.tokens import estimate_tokens
from tests.cli_helpers import as_json

from .conftest import API_KEY, MakeProxy

V2 = "jina-reranker-v2-base-multilingual"  # pointwise
V3 = "jina-reranker-v3"  # listwise
QUERY = "which fruit is yellow"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(main, ["analyze", *args])


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


# Each (path, body) as a client sends it: Jina's, TEI's (no model: --rerank-model) and
# Cohere's dialects, overlapping lists for a pointwise and a listwise model.
SENT: list[tuple[str, dict[str, Any]]] = [
    ("/v1/rerank", {"model": V2, "query": QUERY, "documents": ["banana", "apple", "kiwi"]}),
    ("/rerank", {"query": QUERY, "texts": ["apple", "lemon"]}),  # apple: cached
    ("/v2/rerank", {"model": V2, "query": QUERY, "documents": ["lemon", "banana"]}),
    ("/v1/rerank", {"model": V3, "query": QUERY, "documents": ["banana", "apple"]}),
    ("/v1/rerank", {"model": V3, "query": QUERY, "documents": ["banana", "apple", "kiwi"]}),
    ("/v1/rerank", {"model": V3, "query": QUERY, "documents": ["banana", "apple"]}),
    ("/v1/embeddings", {"model": "jina-embeddings-v3", "input": ["banana", "apple"]}),
    ("/v1/embeddings", {"model": "jina-embeddings-v3", "input": ["banana"]}),
]


def test_analyze_of_rerank_bodies_counts_the_hits_and_misses_the_proxy_logged_for_them(
    make_proxy: MakeProxy, tmp_path: Path
) -> None:
    log = tmp_path / "requests.jsonl"
    proxy = make_proxy("--request-log", str(log))
    with httpx.Client(base_url=proxy.url, headers=AUTH, timeout=30) as http:
        for path, body in SENT:
            assert http.post(path, json=body).status_code == 200, (path, body)
    proxy.stop()
    bodies = _write(tmp_path / "bodies.jsonl", [body for _, body in SENT])
    from_bodies = as_json(_invoke("--json", str(bodies)))
    from_log = as_json(_invoke("--json", str(log)))
    figures = ("requests", "texts", "hits", "misses")
    for report in (from_bodies, from_log):
        kinds = {row["kind"]: row for row in report["by_kind"]}
        assert list(kinds) == ["embeddings", "rerank"]
        # Pointwise: apple, lemon, banana each fetched once for the query; listwise: a list
        # seen before is a hit, the longer one is a list of its own.
        rerank = {name: kinds["rerank"][name] for name in figures}
        assert rerank == {"requests": 6, "texts": 14, "hits": 5, "misses": 9}
        embeddings = {name: kinds["embeddings"][name] for name in figures}
        assert embeddings == {"requests": 2, "texts": 3, "hits": 1, "misses": 2}
        assert report["hits"] == 6
        assert report["texts"] == 17
    by_model = {row["model"]: row["hits"] for row in from_bodies["by_model"]}
    assert by_model == {V2: 3, V3: 2, "jina-embeddings-v3": 1}


def test_analyze_prices_a_rerank_body_by_its_query_and_documents(tmp_path: Path) -> None:
    body = {"model": V2, "query": QUERY, "documents": ["banana", "apple"]}
    report = as_json(_invoke("--json", str(_write(tmp_path / "b.jsonl", [body, body]))))
    tokens = sum(estimate_tokens(QUERY) + estimate_tokens(doc) for doc in body["documents"])
    assert (report["tokens_spent"], report["tokens_saved"]) == (tokens, tokens)


def test_analyze_keys_a_tei_body_without_a_model_under_the_rerank_model_option(
    tmp_path: Path,
) -> None:
    lines = [
        {"model": V3, "query": QUERY, "documents": ["banana", "apple"]},
        {"query": QUERY, "texts": ["banana", "apple"]},
    ]
    path = str(_write(tmp_path / "b.jsonl", lines))
    assert as_json(_invoke("--json", path))["hits"] == 0  # read as v2: another model
    assert as_json(_invoke("--json", "--rerank-model", V3, path))["hits"] == 2


def test_analyze_shows_a_table_per_kind_only_when_reranks_are_among_the_requests(
    tmp_path: Path,
) -> None:
    embeddings = [{"model": "jina-embeddings-v3", "input": ["banana"]}]
    rerank = [{"model": V2, "query": QUERY, "documents": ["banana"]}]
    alone = _invoke(str(_write(tmp_path / "e.jsonl", embeddings)))
    assert alone.exit_code == 0
    assert "Per kind" not in alone.output
    both = _invoke(str(_write(tmp_path / "both.jsonl", embeddings + rerank)))
    assert both.exit_code == 0, both.output
    assert "Per kind" in both.output
    assert "rerank (documents)" in both.output


def test_a_rerank_body_the_api_would_refuse_is_skipped_naming_its_field(tmp_path: Path) -> None:
    lines = [
        {"model": V2, "query": QUERY, "documents": ["banana"]},
        {"model": V2, "query": QUERY, "documents": []},
    ]
    result = _invoke(str(_write(tmp_path / "b.jsonl", lines)))
    assert result.exit_code == 0
    assert "b.jsonl:2: a rerank body the API would refuse: documents is empty" in result.stderr
