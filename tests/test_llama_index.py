"""embedcache.llama_index.JinaEmbedding: the real llama-index-core, over the cache and the
emulator. Indexes are queried through their retrievers, and through a query engine on
LlamaIndex's MockLLM (which echoes its prompt): nothing reaches the internet."""

from __future__ import annotations

import asyncio
import inspect
import io
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.llms import MockLLM

from embedcache import InvalidInputError, JinaEmbeddingFunction
from embedcache.llama_index import JinaEmbedding
from embedcache.testing import JinaEmulator, png

from .conftest import API_KEY

MakeLI = Callable[..., JinaEmbedding]
MakeEF = Callable[..., JinaEmbeddingFunction]
TEXTS = [
    "Milvus is a vector database built for scale.",
    "Late chunking pools token embeddings after the whole text is read.",
    "Redis keeps the shared tier of the cache.",
]


@pytest.fixture
def make_li(emulator: JinaEmulator, cache_dir: Path) -> Iterator[MakeLI]:
    made: list[JinaEmbedding] = []

    def make(*args: Any, **kwargs: Any) -> JinaEmbedding:
        kwargs.setdefault("api_key", API_KEY)
        kwargs.setdefault("base_url", emulator.url)
        kwargs.setdefault("cache_dir", cache_dir)
        model = JinaEmbedding(*args, **kwargs)
        made.append(model)
        return model

    yield make
    for model in made:
        model.close()


def test_is_a_base_embedding_with_the_jinaai_packages_arguments_in_order() -> None:
    assert issubclass(JinaEmbedding, BaseEmbedding)
    params = list(inspect.signature(JinaEmbedding.__init__).parameters)[1:10]
    assert params == [
        "model",
        "embed_batch_size",
        "api_key",
        "callback_manager",
        "encoding_queries",
        "encoding_documents",
        "task",
        "dimensions",
        "late_chunking",
    ]


def test_vectors_are_those_of_jina_embedding_function_with_the_same_settings(
    make_li: MakeLI, make_ef: MakeEF
) -> None:
    model = make_li(model="jina-embeddings-v3", dimensions=128)
    texts = model.get_text_embedding_batch(TEXTS)
    query = model.get_query_embedding("what is milvus?")
    ef = make_ef("jina-embeddings-v3", dimensions=128, cache_dir=None)  # its own, empty cache
    assert texts == [v.tolist() for v in ef.encode_documents(TEXTS)]
    assert query == ef.encode_queries(["what is milvus?"])[0].tolist()
    assert model.get_text_embedding(TEXTS[0]) == texts[0]


def test_a_query_and_a_text_of_the_same_words_are_separate_entries(
    make_li: MakeLI, emulator: JinaEmulator
) -> None:
    model = make_li()
    text, query = model.get_text_embedding(TEXTS[0]), model.get_query_embedding(TEXTS[0])
    assert text != query
    assert [r.body and r.body.get("task") for r in emulator.requests] == [
        "retrieval.passage",
        "retrieval.query",
    ]
    again = make_li()
    assert again.get_text_embedding(TEXTS[0]) == text
    assert again.get_query_embedding(TEXTS[0]) == query
    assert len(emulator.requests) == 2


def _index(model: JinaEmbedding) -> VectorStoreIndex:
    return VectorStoreIndex.from_documents([Document(text=t) for t in TEXTS], embed_model=model)


def _retrieved(model: JinaEmbedding, query: str, k: int = 2) -> list[str]:
    hits = _index(model).as_retriever(similarity_top_k=k).retrieve(query)
    return [hit.node.get_content() for hit in hits]


def test_an_index_built_again_sends_nothing_and_retrieves_the_same(
    make_li: MakeLI, make_ef: MakeEF, emulator: JinaEmulator
) -> None:
    query = "where is the shared tier kept?"
    first = _retrieved(make_li(dimensions=64), query)
    sent = len(emulator.requests)
    second = _retrieved(make_li(dimensions=64), query)
    assert sent == 2  # the nodes (one request for all: embed_batch_size 2048), the query
    assert len(emulator.requests) == sent
    assert second == first
    ef = make_ef(dimensions=64)
    docs, q = ef.embed_documents(TEXTS), ef.embed_queries([query])[0]
    scores = docs @ q / np.linalg.norm(docs, axis=1) / np.linalg.norm(q)
    assert first == [TEXTS[i] for i in np.argsort(-scores)[:2]]
    engine = _index(make_li(dimensions=64)).as_query_engine(llm=MockLLM(), similarity_top_k=2)
    answer = engine.query(query)
    assert [hit.node.get_content() for hit in answer.source_nodes] == first
    assert first[0] in str(answer)  # the mock LLM echoes the context it was given
    assert len(emulator.requests) == sent


def test_async_embeddings_and_an_async_index_match_the_sync_ones(
    make_li: MakeLI, emulator: JinaEmulator
) -> None:
    model = make_li()

    async def run() -> tuple[list[list[float]], list[float], list[str]]:
        texts = await model.aget_text_embedding_batch(TEXTS)
        query = await model.aget_query_embedding("a query")
        index = VectorStoreIndex.from_documents(
            [Document(text=t) for t in TEXTS], embed_model=model, use_async=True
        )
        hits = await index.as_retriever(similarity_top_k=3).aretrieve("a query")
        return texts, query, [hit.node.get_content() for hit in hits]

    texts, query, found = asyncio.run(run())
    assert len(emulator.requests) == 2
    assert texts == model.get_text_embedding_batch(TEXTS)
    assert query == model.get_query_embedding("a query")
    assert found == _retrieved(model, "a query", k=3)
    assert asyncio.run(model.aget_text_embedding(TEXTS[1])) == texts[1]
    assert len(emulator.requests) == 2


def test_the_key_is_in_no_repr_dump_or_payload(make_li: MakeLI) -> None:
    model = make_li()
    for shown in (repr(model), str(model.model_dump()), str(model.to_payload())):
        assert API_KEY not in shown
    assert model.query_task == "retrieval.query"


def test_bad_arguments_fail_at_construction_before_any_request(
    make_li: MakeLI, emulator: JinaEmulator
) -> None:
    with pytest.raises(InvalidInputError, match="encoding_documents='binary'"):
        make_li(encoding_documents="binary")
    with pytest.raises(InvalidInputError, match="no-such-task"):
        make_li(task="no-such-task")
    with pytest.raises(TypeError, match="'base_uri'"):
        make_li(base_uri="http://typo")
    assert emulator.requests == []


def test_llama_indexs_own_text_keyed_cache_is_refused(make_li: MakeLI) -> None:
    from llama_index.core.storage.kvstore import SimpleKVStore

    # It would hand a query the document vector of the same text.
    with pytest.raises(InvalidInputError, match="embeddings_cache"):
        make_li(embeddings_cache=SimpleKVStore())


def test_llama_indexs_to_dict_and_from_dict_give_the_same_model(
    make_li: MakeLI, emulator: JinaEmulator, cache_dir: Path
) -> None:
    model = make_li(dimensions=64, task="retrieval.passage")
    saved = model.to_dict()
    assert API_KEY not in str(saved)
    again = JinaEmbedding.from_dict(
        {**saved, "api_key": API_KEY, "base_url": emulator.url, "cache_dir": cache_dir}
    )
    try:
        assert (again.model, again.task, again.query_task, again.dimensions) == (
            model.model, model.task, model.query_task, model.dimensions
        )  # fmt: skip
        assert again.get_text_embedding("x") == model.get_text_embedding("x")
    finally:
        again.close()


def test_without_llama_index_core_the_import_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['llama_index'] = None\n"
        "from embedcache import MissingDependencyError\n"
        "try:\n    import embedcache.llama_index\n"
        "except MissingDependencyError as exc:\n    print(exc.extra, '|', exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("llama-index | ")
    assert "pip install 'embedcache[llama-index]'" in out


def test_image_embeddings_by_path_url_and_bytesio_are_cached(
    emulator: JinaEmulator, make_li: MakeLI, tmp_path: Path
) -> None:
    image = png(5, 5, 3)
    path = tmp_path / "cat.png"
    path.write_bytes(image)
    model = make_li("jina-clip-v2")
    batch = model.get_image_embedding_batch([str(path), "https://example.com/a.png"])
    one = model.get_image_embedding(io.BytesIO(image))
    assert one == batch[0]  # the same content, the same entry
    assert len(emulator.requests) == 1
    again = make_li("jina-clip-v2")
    assert asyncio.run(again.aget_image_embedding(str(path))) == batch[0]
    assert len(emulator.requests) == 1
