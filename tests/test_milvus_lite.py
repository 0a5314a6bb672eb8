"""The Milvus page's JinaEmbeddingFunction flow on a real Milvus Lite database: documents
embedded through the cache, inserted, searched with ``encode_queries``, and rebuilt for free;
and ``embedcache demo --milvus``, which runs it against the bundled emulator."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from embedcache import JinaEmbeddingFunction
from embedcache.cli.demo_milvus import (
    MILVUS_DOCUMENTS,
    MILVUS_QUERIES,
    TOP_K,
    QueryResult,
    build_collection,
    milvus_lite,
    search,
)
from embedcache.testing import JinaEmulator

from .cli_helpers import as_json, invoke, ok, one_line_error

# The page's three documents, and more, so a wrong id or order cannot pass by luck.
DOCUMENTS = [
    *MILVUS_DOCUMENTS,
    "Milvus is an open-source vector database built for similarity search.",
    "Late chunking embeds a whole document first and pools each chunk afterwards.",
    "A content-addressed cache keys every vector by a hash of its request and text.",
    "Matryoshka embeddings can be truncated to fewer dimensions and still work.",
    "Ein Satz auf Deutsch, damit nicht alles Englisch ist.",
]
QUERIES = [*MILVUS_QUERIES, "what is a vector database?", "wie cached man Vektoren?"]


def expected_ranking(queries: Sequence[str], documents: Sequence[str]) -> list[list[int]]:
    """Each query's best ``TOP_K`` document ids by cosine, from the emulator's own vectors
    (not from the cache, nor from Milvus): the ranking a correct index must give."""
    emulator = JinaEmulator()  # expected_embedding needs no running server
    docs = np.stack([emulator.expected_embedding(d, task="retrieval.passage") for d in documents])
    rankings = []
    for query in queries:
        scores = docs @ emulator.expected_embedding(query, task="retrieval.query")
        rankings.append([int(i) for i in np.argsort(-scores)[:TOP_K]])
    return rankings


def index_and_search(
    make_ef: Callable[..., JinaEmbeddingFunction], client: object
) -> tuple[list[QueryResult], JinaEmbeddingFunction]:
    ef = make_ef()  # the cache directory is the test's, so a second call finds the first's
    build_collection(client, DOCUMENTS, ef.encode_documents(DOCUMENTS))
    return search(client, QUERIES, ef.encode_queries(QUERIES)), ef


def ids(results: list[QueryResult]) -> list[list[int]]:
    return [[hit.id for hit in result.hits] for result in results]


def test_a_collection_of_cached_vectors_ranks_each_query_as_its_vectors_do(
    make_ef: Callable[..., JinaEmbeddingFunction], tmp_path: Path
) -> None:
    with milvus_lite(tmp_path / "milvus.db") as client:
        results, _ = index_and_search(make_ef, client)
        assert client.get_collection_stats("embedcache_demo")["row_count"] == len(DOCUMENTS)
    assert [r.query for r in results] == QUERIES
    assert ids(results) == expected_ranking(QUERIES, DOCUMENTS)
    for result in results:
        for hit in result.hits:
            assert hit.text == DOCUMENTS[hit.id]  # stored with its own vector


def test_a_documents_own_vector_finds_that_document_first(
    make_ef: Callable[..., JinaEmbeddingFunction], tmp_path: Path
) -> None:
    ef = make_ef()
    vectors = ef.encode_documents(DOCUMENTS)
    with milvus_lite(tmp_path / "milvus.db") as client:
        build_collection(client, DOCUMENTS, vectors)
        results = search(client, DOCUMENTS, vectors)
    for i, result in enumerate(results):
        assert result.hits[0].id == i
        assert result.hits[0].distance == pytest.approx(1.0, abs=1e-5)


def test_rebuilding_the_collection_from_the_cache_sends_nothing_upstream(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction], tmp_path: Path
) -> None:
    with milvus_lite(tmp_path / "milvus.db") as client:
        first, cold = index_and_search(make_ef, client)
        sent = len(emulator.requests)
        again, warm = index_and_search(make_ef, client)  # a fresh JinaEmbeddingFunction
    assert sent == 2  # documents, then queries
    assert cold.stats.misses == len(DOCUMENTS) + len(QUERIES)
    assert len(emulator.requests) == sent
    assert (warm.stats.requests, warm.stats.tokens_spent, warm.stats.misses) == (0, 0, 0)
    assert warm.stats.hits == len(DOCUMENTS) + len(QUERIES)
    assert again == first  # the same ids, texts and distances


def _held_files(directory: Path) -> list[str]:
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target.startswith(str(directory)):
            held.append(target)
    return held


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")
def test_leaving_milvus_lite_stops_its_server_and_frees_the_database(tmp_path: Path) -> None:
    with milvus_lite(tmp_path / "milvus.db") as client:
        build_collection(client, ["a"], [np.ones(4, np.float32)])
        assert _held_files(tmp_path)  # its lock and its log are open while it serves
    # Closing the client alone leaves Milvus Lite serving the file, and holding its lock,
    # until the process exits. (Its idle worker threads end when the server is collected.)
    assert _held_files(tmp_path) == []


# embedcache demo --milvus


def test_demo_milvus_indexes_searches_and_rebuilds_for_free(tmp_path: Path) -> None:
    output = ok(invoke("demo", "--milvus", "--cache-dir", str(tmp_path / "cache"))).output
    first, _, second = output.partition("Second pass")
    assert "; Milvus Lite at " in first
    assert "2 requests, " in first
    assert "0 hits and 5 misses" in first
    assert "0 requests, 0 tokens upstream; 5 hits and 0 misses" in second
    assert "Second pass served from disk: the same hits, 0 requests, 0 tokens (" in second
    shown = first.partition("Milvus Lite search")[2]
    assert shown
    assert shown == second.partition("Milvus Lite search")[2].partition("\n\n")[0] + "\n\n"
    for query, ranking in zip(
        MILVUS_QUERIES, expected_ranking(MILVUS_QUERIES, MILVUS_DOCUMENTS), strict=True
    ):
        block = shown.partition(repr(query))[2]
        assert f"[{ranking[0]}] {MILVUS_DOCUMENTS[ranking[0]]}" in block.splitlines()[1]


def test_demo_milvus_json_reports_the_counts_and_the_search_results() -> None:
    summary = as_json(invoke("demo", "--milvus", "--json"))
    assert (summary["requests"], summary["hits"]) == (2, 5)
    assert summary["tokens"] == summary["passes"][0]["tokens"] > 0
    second = summary["passes"][1]
    assert second.pop("seconds") >= 0  # measured: the time taken is not asserted
    assert second == {"requests": 0, "tokens": 0, "hits": 5, "misses": 0}
    results = summary["milvus"]["results"]
    assert [r["query"] for r in results] == MILVUS_QUERIES
    ranking = [[hit["id"] for hit in r["hits"]] for r in results]
    assert ranking == expected_ranking(MILVUS_QUERIES, MILVUS_DOCUMENTS)
    assert all(hit["text"] == MILVUS_DOCUMENTS[hit["id"]] for r in results for hit in r["hits"])
    json.dumps(summary)  # nothing but JSON on stdout: as_json parsed all of it


@pytest.mark.parametrize("module", ["pymilvus", "milvus_lite"])
def test_demo_milvus_without_the_extra_is_one_line_naming_it(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    result = invoke("demo", "--milvus")
    assert one_line_error(result) == (
        "Error: MissingDependencyError: embedcache demo --milvus needs the milvus extra "
        f"({module} is missing): pip install 'embedcache[milvus]'"
    )
    assert "emulator" not in result.output  # failed before starting anything
