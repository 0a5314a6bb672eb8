"""The real pymilvus JinaRerankFunction against the emulator, beside ours (tox -e compat):
the same results, in the same order, with the same scores."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from embedcache import JinaRerankFunction
from embedcache.testing import JinaEmulator

from .conftest import API_KEY, client_module

pytestmark = pytest.mark.compat

DOCS = ["a cat sleeps", "dogs bark", "the sun is hot", "cats purr", "birds sing", "rain"]


@pytest.mark.parametrize("model", ["jina-reranker-v2-base-multilingual", "jina-reranker-v3"])
@pytest.mark.parametrize("top_k", [5, 2, 10])
def test_drop_in_returns_what_pymilvus_returns(
    emulator: JinaEmulator,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    top_k: int,
) -> None:
    jinaai = client_module("pymilvus.model.reranker.jinaai")
    # pymilvus posts to a hard-coded URL: its module constant is pointed at the emulator.
    monkeypatch.setattr(jinaai, "API_URL", emulator.url + "/v1/rerank")
    theirs = jinaai.JinaRerankFunction(model, api_key=API_KEY)
    expected = [(r.text, r.score, r.index) for r in theirs("pets", DOCS, top_k=top_k)]
    make: Callable[[], JinaRerankFunction] = lambda: JinaRerankFunction(  # noqa: E731
        model, API_KEY, base_url=emulator.url, cache_dir=cache_dir
    )
    with make() as ours:
        got = [(r.text, r.score, r.index) for r in ours("pets", DOCS, top_k=top_k)]
    assert got == expected
    sent = len(emulator.requests)
    with make() as again:  # from the cache now
        cached = [(r.text, r.score, r.index) for r in again("pets", DOCS, top_k=top_k)]
    assert cached == expected
    assert len(emulator.requests) == sent


def test_without_any_key_pymilvus_refuses_to_start_and_ours_waits_for_a_miss(
    emulator: JinaEmulator, cache_dir: Path
) -> None:
    jinaai = client_module("pymilvus.model.reranker.jinaai")
    with pytest.raises(ValueError, match="JINAAI_API_KEY"):
        jinaai.JinaRerankFunction()
    JinaRerankFunction(base_url=emulator.url, cache_dir=cache_dir).close()
