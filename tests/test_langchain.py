"""embedcache.langchain.JinaEmbeddings: the real langchain-core, over the cache and the emulator."""

from __future__ import annotations

import asyncio
import base64
import inspect
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore
from pydantic import SecretStr

from embedcache import InvalidInputError, JinaEmbeddingFunction
from embedcache.langchain import JinaEmbeddings
from embedcache.testing import JinaEmulator, png

from .conftest import API_KEY

MakeLC = Callable[..., JinaEmbeddings]
MakeEF = Callable[..., JinaEmbeddingFunction]
DOCS = [
    "Milvus is a vector database built for scale.",
    "Late chunking pools token embeddings after the whole text is read.",
    "Redis keeps the shared tier of the cache.",
]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def make_lc(emulator: JinaEmulator, cache_dir: Path) -> Iterator[MakeLC]:
    made: list[JinaEmbeddings] = []

    def make(*args: Any, **kwargs: Any) -> JinaEmbeddings:
        kwargs.setdefault("jina_api_key", API_KEY)
        kwargs.setdefault("base_url", emulator.url)
        kwargs.setdefault("cache_dir", cache_dir)
        embeddings = JinaEmbeddings(*args, **kwargs)
        made.append(embeddings)
        return embeddings

    yield make
    for embeddings in made:
        embeddings.close()


def test_is_a_langchain_embeddings_with_langchain_communitys_argument_names() -> None:
    assert issubclass(JinaEmbeddings, Embeddings)
    params = list(inspect.signature(JinaEmbeddings.__init__).parameters)[1:3]
    assert params == ["model_name", "jina_api_key"]


def test_vectors_are_those_of_jina_embedding_function_with_the_same_settings(
    make_lc: MakeLC, make_ef: MakeEF
) -> None:
    embeddings = make_lc("jina-embeddings-v3", dimensions=256)
    docs, query = embeddings.embed_documents(DOCS), embeddings.embed_query("what is milvus?")
    ef = make_ef("jina-embeddings-v3", dimensions=256, cache_dir=None)  # its own, empty cache
    assert docs == [v.tolist() for v in ef.encode_documents(DOCS)]
    assert query == ef.encode_queries(["what is milvus?"])[0].tolist()
    assert isinstance(query, list)
    assert all(isinstance(x, float) for x in query)


def test_a_query_and_a_document_of_the_same_text_are_separate_entries(
    make_lc: MakeLC, emulator: JinaEmulator
) -> None:
    text = DOCS[0]
    document, query = make_lc().embed_documents([text])[0], make_lc().embed_query(text)
    assert document != query
    assert [r.body and r.body.get("task") for r in emulator.requests] == [
        "retrieval.passage",
        "retrieval.query",
    ]
    again = make_lc()
    assert (again.embed_documents([text])[0], again.embed_query(text)) == (document, query)
    assert len(emulator.requests) == 2  # each from its own entry


def test_a_symmetric_task_is_used_for_queries_too(make_lc: MakeLC, emulator: JinaEmulator) -> None:
    embeddings = make_lc(task="text-matching")
    assert embeddings.embed_query(DOCS[0]) == embeddings.embed_documents([DOCS[0]])[0]
    assert len(emulator.requests) == 1


def test_repeats_in_one_call_are_sent_once(make_lc: MakeLC, emulator: JinaEmulator) -> None:
    vectors = make_lc().embed_documents([DOCS[0], DOCS[1], DOCS[0]])
    assert vectors[0] == vectors[2]
    assert emulator.received_texts() == [DOCS[0], DOCS[1]]


def _best(store: InMemoryVectorStore, query: str) -> list[Document]:
    return store.similarity_search(query, k=2)


def test_a_vector_store_built_again_sends_nothing_and_finds_the_same(
    make_lc: MakeLC, make_ef: MakeEF, emulator: JinaEmulator
) -> None:
    query = "where is the shared tier kept?"
    first = _best(InMemoryVectorStore.from_texts(DOCS, make_lc(dimensions=64)), query)
    sent = len(emulator.requests)
    second = _best(InMemoryVectorStore.from_texts(DOCS, make_lc(dimensions=64)), query)
    assert sent == 2  # the documents, then the query
    assert len(emulator.requests) == sent
    assert [d.page_content for d in second] == [d.page_content for d in first]
    # The ranking is the cosine ranking of JinaEmbeddingFunction's own vectors.
    ef = make_ef(dimensions=64)
    docs, q = ef.embed_documents(DOCS), ef.embed_queries([query])[0]
    scores = docs @ q / np.linalg.norm(docs, axis=1) / np.linalg.norm(q)
    assert [d.page_content for d in first] == [DOCS[i] for i in np.argsort(-scores)[:2]]


def test_async_methods_and_an_async_vector_store_match_the_sync_ones(
    make_lc: MakeLC, emulator: JinaEmulator
) -> None:
    embeddings = make_lc()

    async def run() -> tuple[list[list[float]], list[float], list[str]]:
        docs = await embeddings.aembed_documents(DOCS)
        query = await embeddings.aembed_query("a query")
        store = await InMemoryVectorStore.afrom_texts(DOCS, embeddings)
        found = await store.asimilarity_search("a query", k=3)
        return docs, query, [d.page_content for d in found]

    docs, query, found = asyncio.run(run())
    assert len(emulator.requests) == 2
    assert docs == embeddings.embed_documents(DOCS)
    assert query == embeddings.embed_query("a query")
    store = InMemoryVectorStore.from_texts(DOCS, embeddings)
    assert found == [d.page_content for d in store.similarity_search("a query", k=3)]
    assert len(emulator.requests) == 2


def test_the_key_may_be_a_secret_str_or_come_from_either_variable(
    make_lc: MakeLC, emulator: JinaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_lc(jina_api_key=SecretStr(API_KEY)).embed_query("one")
    for variable, text in (("JINA_API_KEY", "two"), ("JINAAI_API_KEY", "three")):
        with monkeypatch.context() as env:
            env.setenv(variable, API_KEY)
            make_lc(jina_api_key=None).embed_query(text)
    assert all(r.authorized for r in emulator.requests)
    assert len(emulator.requests) == 3


def test_the_key_is_not_in_repr(make_lc: MakeLC) -> None:
    shown = repr(make_lc())
    assert API_KEY not in shown
    assert "retrieval.query" in shown


def test_bad_arguments_fail_at_construction_before_any_request(
    make_lc: MakeLC, emulator: JinaEmulator
) -> None:
    with pytest.raises(InvalidInputError, match="no-such-task"):
        make_lc(query_task="no-such-task")
    with pytest.raises(TypeError, match="'session'"):
        make_lc(session=object())
    assert emulator.requests == []


def test_without_langchain_core_the_import_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['langchain_core'] = None\n"
        "from embedcache import MissingDependencyError\n"
        "try:\n    import embedcache.langchain\n"
        "except MissingDependencyError as exc:\n    print(exc.extra, '|', exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("langchain | ")
    assert "pip install 'embedcache[langchain]'" in out


def test_embed_images_takes_urls_and_paths_and_caches_them(
    emulator: JinaEmulator, make_lc: MakeLC, tmp_path: Path
) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(png(6, 6, 9))
    uris = ["https://example.com/dog.png", str(path)]
    first = make_lc("jina-clip-v2").embed_images(uris)
    (request,) = emulator.requests
    assert request.body["input"] == [  # type: ignore[index]
        {"image": uris[0]},
        {"image": b64(path.read_bytes())},
    ]
    again = make_lc("jina-clip-v2")
    assert again.embed_images(uris) == first
    assert asyncio.run(again.aembed_images(uris)) == first
    assert len(emulator.requests) == 1
    assert len(first[0]) == 1024
