"""The real pymilvus JinaEmbeddingFunction against the emulator (tox -e compat)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from embedcache import JinaEmbeddingFunction
from embedcache.testing import JinaEmulator

from .conftest import API_KEY, client_module

pytestmark = pytest.mark.compat


def test_drop_in_returns_what_pymilvus_returns(
    emulator: JinaEmulator,
    make_ef: Callable[..., JinaEmbeddingFunction],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jinaai = client_module("pymilvus.model.dense.jinaai")
    monkeypatch.setattr(jinaai, "API_URL", emulator.url + "/v1/embeddings")
    theirs = jinaai.JinaEmbeddingFunction(api_key=API_KEY)
    ours = make_ef()
    docs = ["first document", "second document"]
    queries = ["a query"]
    for method in ("encode_documents", "encode_queries", "__call__"):
        texts = queries if method == "encode_queries" else docs
        expected = getattr(theirs, method)(texts)
        got = getattr(ours, method)(texts)
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            # pymilvus parses JSON floats into float64; the emulator prints float32 values
            # exactly, so narrowing them back must give our bits.
            assert a.tobytes() == np.asarray(b, dtype=np.float32).tobytes()
    assert ours.dim == theirs.dim == 1024
    before = len(emulator.requests)
    make_ef().encode_documents(docs)
    assert len(emulator.requests) == before
