"""``embedcache rerank``: documents ranked through the cache with the API's exact scores, a
second run sending nothing, documents from arguments, files and standard input, and its
refusals in the user's terms; and the demo's reranking step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import Result

from embedcache.testing import JinaEmulator

from .cli_helpers import Invoke, as_json, invoke, ok, one_line_error
from .conftest import API_KEY

QUERY = "what is milvus?"
DOCUMENTS = ["Milvus is a vector database.", "Paris is in France.", "Zilliz builds Milvus."]
V3 = "jina-reranker-v3"


@pytest.fixture
def run(emulator: JinaEmulator, cache_dir: Path) -> Invoke:
    """``embedcache --cache-dir … --base-url <emulator> ARGS`` with the key set."""

    def bound(*args: str, stdin: str | None = None) -> Result:
        return invoke(*args, cache_dir=cache_dir, base_url=emulator.url, key=API_KEY, stdin=stdin)

    return bound


def best_first(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def test_rerank_json_lists_every_document_best_first_with_the_apis_exact_scores(
    run: Invoke, emulator: JinaEmulator
) -> None:
    result = run("rerank", QUERY, *DOCUMENTS, "--json")
    answer = as_json(result)
    expected = emulator.expected_scores(QUERY, DOCUMENTS)
    order = best_first(expected)
    assert answer == [{"index": i, "score": expected[i], "document": DOCUMENTS[i]} for i in order]
    # The float64 the API sent, in its shortest digits: no rounding on the way through.
    assert all(repr(expected[i]) in result.stdout for i in order)
    assert len(emulator.requests) == 1


def test_a_second_rerank_sends_nothing_and_stderr_says_what_the_cache_did(
    run: Invoke, emulator: JinaEmulator
) -> None:
    first = ok(run("rerank", QUERY, *DOCUMENTS))
    tokens = emulator.requests[0].tokens
    assert first.stderr == f"0 of 3 scores cached, 3 fetched in 1 request, {tokens} tokens\n"
    again = ok(run("rerank", QUERY, *DOCUMENTS))
    assert len(emulator.requests) == 1  # nothing more sent
    assert again.stderr.startswith("3 of 3 scores cached; nothing sent upstream (~")
    assert again.stdout == first.stdout
    assert ok(run("rerank", QUERY, *DOCUMENTS, "--json")).stderr == ""  # stdout: the document


def test_an_overlapping_list_sends_only_its_new_documents(
    run: Invoke, emulator: JinaEmulator
) -> None:
    ok(run("rerank", QUERY, *DOCUMENTS[:2]))
    result = ok(run("rerank", QUERY, *DOCUMENTS))
    assert emulator.requests[-1].body is not None
    assert emulator.requests[-1].body["documents"] == [DOCUMENTS[2]]
    assert result.stderr.startswith("2 of 3 scores cached, 1 fetched in 1 request, ")
    expected = emulator.expected_scores(QUERY, DOCUMENTS)
    shown = [float(line.split()[2]) for line in result.stdout.splitlines()[1:]]
    assert shown == sorted(expected, reverse=True)  # the table's digits read back exactly


def test_top_n_shows_only_the_best_n(run: Invoke, emulator: JinaEmulator) -> None:
    expected = emulator.expected_scores(QUERY, DOCUMENTS)
    best = best_first(expected)[:2]
    assert [
        row["index"] for row in as_json(run("rerank", QUERY, *DOCUMENTS, "--top-n", "2", "--json"))
    ] == best
    table = ok(run("rerank", QUERY, *DOCUMENTS, "--top-n", "1")).stdout.splitlines()
    assert len(table) == 2  # the header and the best one
    assert table[1].split() == [
        "1",
        str(best[0]),
        repr(expected[best[0]]),
        *DOCUMENTS[best[0]].split(),
    ]
    assert run("rerank", QUERY, *DOCUMENTS, "--top-n", "0").exit_code == 2


def test_documents_come_from_arguments_then_from_files_and_standard_input(
    run: Invoke, emulator: JinaEmulator, tmp_path: Path
) -> None:
    listed = tmp_path / "candidates.txt"
    listed.write_text(f"{DOCUMENTS[1]}\n\n{DOCUMENTS[2]}\n", encoding="utf-8")
    from_file = as_json(run("rerank", QUERY, DOCUMENTS[0], "--from", str(listed), "--json"))
    piped = as_json(
        run("rerank", QUERY, DOCUMENTS[0], "-", "--json", stdin="\n".join(DOCUMENTS[1:]))
    )
    also_piped = as_json(
        run("rerank", QUERY, DOCUMENTS[0], "--from", "-", "--json", stdin="\n".join(DOCUMENTS[1:]))
    )
    expected = emulator.expected_scores(QUERY, DOCUMENTS)
    wanted = [
        {"index": i, "score": expected[i], "document": DOCUMENTS[i]} for i in best_first(expected)
    ]
    assert from_file == piped == also_piped == wanted
    assert len(emulator.requests) == 1  # the same documents each time: fetched once


def test_a_jsonl_file_gives_its_text_field(run: Invoke, tmp_path: Path) -> None:
    listed = tmp_path / "candidates.jsonl"
    listed.write_text(
        "".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(DOCUMENTS))
    )
    assert sorted(
        row["document"] for row in as_json(run("rerank", QUERY, "--from", str(listed), "--json"))
    ) == sorted(DOCUMENTS)


def test_the_table_cuts_documents_to_the_terminal_width(
    run: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    long = "Milvus is a vector database " + "with a very long description " * 5
    monkeypatch.setenv("COLUMNS", "60")
    lines = ok(run("rerank", QUERY, long, "short")).stdout.splitlines()
    assert lines[0].split() == ["RANK", "INDEX", "SCORE", "DOCUMENT"]
    assert all(len(line) <= 60 for line in lines)
    assert any(line.endswith("…") for line in lines)
    monkeypatch.delenv("COLUMNS")  # no terminal: nothing cut
    assert any(
        line.endswith(long) for line in ok(run("rerank", QUERY, long, "short")).stdout.splitlines()
    )


def test_an_embedding_model_is_refused_naming_model_before_any_request(
    run: Invoke, emulator: JinaEmulator
) -> None:
    error = one_line_error(run("rerank", QUERY, *DOCUMENTS, "--model", "jina-embeddings-v3"))
    assert error.startswith(
        "Error: InvalidInputError: --model: jina-embeddings-v3 is an embedding model"
    )
    assert emulator.requests == []


def test_an_offline_miss_is_one_line_and_exit_1(run: Invoke, emulator: JinaEmulator) -> None:
    ok(run("rerank", QUERY, *DOCUMENTS[:2]))
    error = one_line_error(run("rerank", QUERY, *DOCUMENTS, "--offline"))
    assert "CacheMissError: offline: 1 of 3 rerank scores are not cached" in error
    assert len(emulator.requests) == 1
    assert ok(run("rerank", QUERY, *DOCUMENTS[:2], "--offline"))  # all cached: no key needed


def test_a_listwise_model_is_sent_the_whole_list_again_when_it_changes(
    run: Invoke, emulator: JinaEmulator
) -> None:
    ok(run("rerank", QUERY, *DOCUMENTS[:2], "--model", V3))
    result = ok(run("rerank", QUERY, *DOCUMENTS, "--model", V3, "--json"))
    assert emulator.requests[-1].body is not None
    assert emulator.requests[-1].body["documents"] == DOCUMENTS
    expected = emulator.expected_scores(QUERY, DOCUMENTS, model=V3)
    assert [row["score"] for row in json.loads(result.stdout)] == sorted(expected, reverse=True)


def test_no_documents_or_standard_input_twice_is_bad_usage(
    run: Invoke, emulator: JinaEmulator
) -> None:
    assert "no documents to rerank" in run("rerank", QUERY).output
    assert run("rerank", QUERY).exit_code == 2
    twice = run("rerank", QUERY, "-", "--from", "-", stdin="a\n")
    assert twice.exit_code == 2
    assert "give - (standard input) once" in twice.output
    assert emulator.requests == []


# embedcache demo


def test_the_demo_reranks_twice_and_the_second_pass_sends_nothing(tmp_path: Path) -> None:
    output = ok(invoke("demo", "--cache-dir", str(tmp_path / "c"))).output
    step = output.partition("\nReranking ")[2]
    assert " over 4 documents (jina-reranker-v2-base-multilingual), twice:" in step
    assert "  first: sent upstream: POST /v1/rerank with 4 documents -> HTTP 200, " in step
    assert "  second (a fresh JinaRerankFunction): 0 requests, 0 tokens upstream; 4 hits" in step
    summary = as_json(invoke("demo", "--json", "--cache-dir", str(tmp_path / "d")))["rerank"]
    first, second = summary["passes"]
    assert (first["requests"], first["misses"]) == (1, 4)
    assert second.pop("seconds") >= 0  # measured: the time taken is not asserted
    assert second == {"requests": 0, "tokens": 0, "hits": 4, "misses": 0}
    scores = [row["score"] for row in summary["results"]]
    assert scores == sorted(scores, reverse=True)
