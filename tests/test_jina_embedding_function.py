"""JinaEmbeddingFunction as a drop-in for pymilvus's class of the same name."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import pytest

from embedcache import JinaEmbeddingFunction
from embedcache.errors import InvalidInputError
from embedcache.testing import JinaEmulator

from .conftest import API_KEY

MakeEF = Callable[..., JinaEmbeddingFunction]


def test_constructor_matches_pymilvus_arguments_and_defaults(make_ef: MakeEF) -> None:
    params = list(inspect.signature(JinaEmbeddingFunction.__init__).parameters.values())[1:6]
    assert [(p.name, p.default) for p in params] == [
        ("model_name", "jina-embeddings-v3"),
        ("api_key", None),
        ("task", "default"),  # the model's own: pymilvus's retrieval.passage on v3
        ("dimensions", None),
        ("late_chunking", False),
    ]
    assert make_ef().task == "retrieval.passage"


def body(emulator: JinaEmulator, index: int = -1) -> dict[str, object]:
    request_body = emulator.requests[index].body
    assert request_body is not None
    return request_body


def test_encode_documents_uses_retrieval_passage(make_ef: MakeEF, emulator: JinaEmulator) -> None:
    make_ef(task="text-matching").encode_documents(["doc"])
    assert body(emulator)["task"] == "retrieval.passage"


def test_encode_queries_uses_retrieval_query(make_ef: MakeEF, emulator: JinaEmulator) -> None:
    make_ef().encode_queries(["query"])
    assert body(emulator)["task"] == "retrieval.query"


def test_call_uses_the_configured_task(make_ef: MakeEF, emulator: JinaEmulator) -> None:
    make_ef(task="classification")(["text"])
    assert body(emulator)["task"] == "classification"


def test_milvus_clustering_task_is_sent_as_separation_and_shares_entries(
    make_ef: MakeEF, emulator: JinaEmulator
) -> None:
    make_ef(task="clustering")(["text"])
    assert body(emulator)["task"] == "separation"
    make_ef(task="separation")(["text"])
    assert len(emulator.requests) == 1


def test_returns_list_of_1d_float32_arrays_in_order(
    make_ef: MakeEF, emulator: JinaEmulator
) -> None:
    out = make_ef().encode_documents(["b", "a"])
    assert isinstance(out, list)
    assert [v.shape for v in out] == [(1024,), (1024,)]
    assert all(v.dtype == np.float32 for v in out)
    assert out[1].tobytes() == emulator.expected_embedding("a", task="retrieval.passage").tobytes()


def test_dim_is_native_size_or_configured_dimensions_without_a_request(
    make_ef: MakeEF, emulator: JinaEmulator
) -> None:
    assert make_ef().dim == 1024
    assert make_ef(dimensions=256).dim == 256
    assert make_ef("jina-embeddings-v4", task="retrieval.passage").dim == 2048
    assert emulator.requests == []
    assert len(make_ef(dimensions=256).encode_queries(["q"])[0]) == 256


def test_dim_of_unknown_model_probes_once_through_the_cache(emulator: JinaEmulator) -> None:
    class Fixed:
        def __init__(self) -> None:
            self.calls = 0

        def embed(self, texts, options):  # type: ignore[no-untyped-def]
            from embedcache import UpstreamResult

            self.calls += 1
            return UpstreamResult(np.ones((len(texts), 7), dtype=np.float32), 1)

    upstream = Fixed()
    ef = JinaEmbeddingFunction("my-own-model", upstream=upstream)
    assert ef.dim == 7
    assert ef.dim == 7
    assert upstream.calls == 1
    ef.close()


def test_pymilvus_defaults_send_no_normalized_truncate_or_false_late_chunking(
    make_ef: MakeEF, emulator: JinaEmulator
) -> None:
    make_ef().encode_documents(["doc"])
    assert body(emulator) == {
        "model": "jina-embeddings-v3",
        "task": "retrieval.passage",
        "embedding_type": "base64",
        "input": ["doc"],
    }


def test_v2_models_get_no_task(make_ef: MakeEF, emulator: JinaEmulator) -> None:
    ef = make_ef("jina-embeddings-v2-base-en")
    assert ef.encode_documents(["doc"])[0].shape == (768,)
    assert "task" not in body(emulator)


def test_invalid_options_fail_at_construction(make_ef: MakeEF, emulator: JinaEmulator) -> None:
    with pytest.raises(InvalidInputError, match="unknown task 'nope'"):
        make_ef(task="nope")
    with pytest.raises(InvalidInputError, match="out of range"):
        make_ef(dimensions=4096)
    assert emulator.requests == []


def test_unknown_keyword_arguments_are_ignored_with_a_warning(make_ef: MakeEF) -> None:
    with pytest.warns(UserWarning, match="ignores unknown arguments: colour"):
        make_ef(colour="blue")


def test_repr_hides_the_key(make_ef: MakeEF) -> None:
    ef = make_ef()
    assert API_KEY not in repr(ef)
    assert "jina-embeddings-v3" in repr(ef)


def test_cache_dir_from_environment(
    emulator: JinaEmulator, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pathlib

    target = pathlib.Path(str(tmp_path)) / "from-env"
    monkeypatch.setenv("EMBEDCACHE_DIR", str(target))
    monkeypatch.setenv("EMBEDCACHE_BASE_URL", emulator.url)
    with JinaEmbeddingFunction(api_key=API_KEY) as ef:
        ef.encode_documents(["doc"])
        assert ef.cache_dir == str(target)
    assert (target / "embedcache.json").exists()
    assert len(emulator.requests) == 1
