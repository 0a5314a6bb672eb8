"""``embedcache.JinaRerankFunction``: pymilvus's reranker class over the cached scores."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedcache import CacheMissError, InvalidInputError, JinaRerankFunction, RerankResult
from embedcache.testing import JinaEmulator

from .cli_helpers import as_json, invoke, ok
from .conftest import API_KEY

DOCS = ["a cat sleeps", "dogs bark", "the sun is hot", "cats purr", "birds sing", "rain"]

MakeRf = Callable[..., JinaRerankFunction]


@pytest.fixture
def make_rf(emulator: JinaEmulator, cache_dir: Path) -> Iterator[MakeRf]:
    made: list[JinaRerankFunction] = []

    def make(*args: Any, **kwargs: Any) -> JinaRerankFunction:
        kwargs.setdefault("api_key", API_KEY)
        kwargs.setdefault("base_url", emulator.url)
        kwargs.setdefault("cache_dir", cache_dir)
        made.append(JinaRerankFunction(*args, **kwargs))
        return made[-1]

    yield make
    for rf in made:
        rf.close()


def expected(emulator: JinaEmulator, query: str, docs: list[str], top_k: int) -> list[Any]:
    scores = emulator.expected_scores(query, docs)
    order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))[:top_k]
    return [RerankResult(docs[i], scores[i], i) for i in order]


def test_arguments_and_defaults_are_pymilvuss() -> None:
    parameters = inspect.signature(JinaRerankFunction.__init__).parameters
    assert parameters["model_name"].default == "jina-reranker-v2-base-multilingual"
    assert parameters["api_key"].default is None
    assert inspect.signature(JinaRerankFunction.__call__).parameters["top_k"].default == 5
    assert [f.name for f in dataclasses.fields(RerankResult)] == ["text", "score", "index"]


def test_call_ranks_the_top_k_with_the_apis_scores(emulator: JinaEmulator, make_rf: MakeRf) -> None:
    rf = make_rf()
    assert rf("pets", DOCS) == expected(emulator, "pets", DOCS, 5)
    assert rf("pets", DOCS, top_k=2) == expected(emulator, "pets", DOCS, 2)
    assert rf.rerank_scores("pets", DOCS) == emulator.expected_scores("pets", DOCS)
    assert rf("pets", DOCS, top_k=2)[0].to_dict().keys() == {"text", "score", "index"}


def test_another_top_k_over_the_same_documents_sends_nothing(
    emulator: JinaEmulator, make_rf: MakeRf
) -> None:
    rf = make_rf()
    rf("pets", DOCS, top_k=1)
    sent = len(emulator.requests)
    assert len(rf("pets", DOCS, top_k=6)) == 6
    assert len(make_rf()("pets", DOCS[::-1], top_k=3)) == 3
    assert len(emulator.requests) == sent
    assert emulator.requests[-1].body is not None
    assert "top_n" not in emulator.requests[-1].body


def test_the_key_comes_from_jinaai_api_key_as_pymilvus_reads_it(
    emulator: JinaEmulator, make_rf: MakeRf, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JINAAI_API_KEY", API_KEY)
    assert make_rf(api_key=None)("pets", DOCS[:2]) == expected(emulator, "pets", DOCS[:2], 2)


def test_offline_answers_from_the_cache_without_a_key(
    emulator: JinaEmulator, make_rf: MakeRf
) -> None:
    make_rf()("pets", DOCS)
    offline = make_rf(api_key=None, offline=True)
    assert offline("pets", DOCS[:3]) == expected(emulator, "pets", DOCS[:3], 3)
    with pytest.raises(CacheMissError):
        offline("pets", ["never seen"])


def test_acall_is_the_same_call_awaited(emulator: JinaEmulator, make_rf: MakeRf) -> None:
    rf = make_rf()
    assert asyncio.run(rf.acall("pets", DOCS, top_k=3)) == expected(emulator, "pets", DOCS, 3)
    assert asyncio.run(rf.arerank_scores("pets", DOCS)) == emulator.expected_scores("pets", DOCS)
    assert rf.stats.hits == len(DOCS)


def test_settings_are_the_embedding_functions_and_embedding_only_ones_are_refused(
    emulator: JinaEmulator, make_rf: MakeRf
) -> None:
    rf = make_rf(batch_size=2, max_attempts=2, redis_prefix="x")
    rf("pets", DOCS)
    assert [len(r.body["documents"]) for r in emulator.requests if r.body] == [2, 2, 2]
    with pytest.raises(TypeError, match="'normalized'"):
        make_rf(normalized=True)
    with pytest.raises(TypeError, match="'no_such'"):
        make_rf(no_such=1)
    with pytest.raises(InvalidInputError, match="not a reranker"):
        make_rf("jina-embeddings-v3")


def test_repr_shows_no_key(make_rf: MakeRf) -> None:
    assert API_KEY not in repr(make_rf())


def test_scores_are_listed_as_scores_and_exported_as_the_float64s_the_api_sent(
    emulator: JinaEmulator, make_rf: MakeRf, cache_dir: Path, tmp_path: Path
) -> None:
    scores = make_rf().rerank_scores("pets", DOCS)
    listed = as_json(invoke("ls", "--json", cache_dir=cache_dir))
    assert {(e["input"], e["output"]) for e in listed} == {("text", "score")}
    out = tmp_path / "scores"
    ok(invoke("export", "--out", str(out), "--kind", "score", cache_dir=cache_dir))
    exported = np.load(out.with_suffix(".npy"))
    assert (exported.dtype, exported.shape) == (np.float64, (len(DOCS), 1))
    assert sorted(exported[:, 0].tolist()) == sorted(scores)  # bit for bit: float64 equality
    lines = out.with_suffix(".jsonl").read_text().splitlines()
    assert len(lines) == len(DOCS)
