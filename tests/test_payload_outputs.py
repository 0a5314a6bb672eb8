"""Binary and multi-vector outputs through the caching core and the library: bit-exact
against a direct call to the emulator, cached (a second pass sends nothing), each output
kind an entry of its own; malformed answers never cached; refusals before sending; the Redis
tier's round trip."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from embedcache import InvalidInputError, JinaEmbeddingFunction, ResponseFormatError
from embedcache.models import resolve_options
from embedcache.storage.store import Store
from embedcache.testing import Fault, JinaEmulator, png

from .cli_helpers import invoke, one_line_error
from .conftest import API_KEY
from .redis_server import RedisServer

V3, V4, COLBERT = "jina-embeddings-v3", "jina-embeddings-v4", "jina-colbert-v2"
TEXTS = ["a cat sat on the mat", "dogs bark at night", "a cat sat on the mat"]


def direct(
    emulator: JinaEmulator, items: list[Any], *, path: str = "/v1/embeddings", **fields: Any
) -> list[NDArray[Any]]:
    """Each item's answer from the API asked directly (no cache): packed bits as the JSON
    integers it wrote, floats as float32 from its float text."""
    body = {"input": items, **fields}
    answer = httpx.post(
        emulator.url + path, json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    dtype = {"binary": "i1", "ubinary": "u1"}.get(fields.get("embedding_type", "float"), "<f4")
    rows = sorted(answer.json()["data"], key=lambda item: item["index"])
    return [np.array(row.get("embeddings", row.get("embedding")), dtype=dtype) for row in rows]


def same(got: list[NDArray[Any]], expected: list[NDArray[Any]]) -> bool:
    """Equal to the bit: dtype, shape and bytes of every array."""
    return len(got) == len(expected) and all(
        a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        for a, b in zip(got, expected, strict=True)
    )


@pytest.mark.parametrize("kind", ["binary", "ubinary"])
def test_binary_answers_equal_a_direct_call_and_a_second_pass_sends_nothing(
    kind: str, emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction]
) -> None:
    first = make_ef(V3, embedding_type=kind).encode_documents(TEXTS)
    assert len(emulator.requests) == 1
    assert emulator.requests[0].body["embedding_type"] == kind  # type: ignore[index]
    again = make_ef(V3, embedding_type=kind).encode_documents(TEXTS)
    assert len(emulator.requests) == 1
    expected = direct(emulator, TEXTS, model=V3, task="retrieval.passage", embedding_type=kind)
    assert same(first, expected)
    assert same(again, expected)
    assert first[0].shape == (1024 // 8,)


def test_binary_float_and_ubinary_are_entries_of_their_own(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction]
) -> None:
    floats = make_ef(V3).encode_documents(TEXTS[:1])
    bits = make_ef(V3, embedding_type="binary").encode_documents(TEXTS[:1])
    ubits = make_ef(V3, embedding_type="ubinary").encode_documents(TEXTS[:1])
    assert len(emulator.requests) == 3  # none answered from another kind's entry
    assert floats[0].dtype == np.float32
    assert bits[0].dtype == np.int8
    assert ubits[0].dtype == np.uint8
    assert (bits[0].astype(np.int16) + 128).astype(np.uint8).tobytes() == ubits[0].tobytes()


def test_binary_embed_gives_one_matrix_of_packed_bits(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction]
) -> None:
    ef = make_ef(V3, embedding_type="ubinary", dimensions=256)
    matrix = ef.embed(TEXTS)
    assert matrix.dtype == np.uint8
    assert matrix.shape == (3, 32)
    assert matrix.tobytes() == np.stack(ef(TEXTS)).tobytes()
    assert len(emulator.requests) == 1


def test_v4_multivector_of_texts_and_an_image_equals_a_direct_call_and_is_cached(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction]
) -> None:
    image = png(40, 30, 7)
    ef = make_ef(V4, return_multivector=True)
    texts, images = ef.encode_documents(TEXTS), ef.encode_images([image])
    sent = len(emulator.requests)
    assert emulator.requests[0].body["return_multivector"] is True  # type: ignore[index]
    again = make_ef(V4, return_multivector=True)
    assert same(again.encode_documents(TEXTS), texts)
    assert same(again.encode_images([image]), images)
    assert len(emulator.requests) == sent
    fields: dict[str, Any] = {"model": V4, "task": "retrieval.passage", "return_multivector": True}
    assert same(texts, direct(emulator, TEXTS, **fields))
    b64 = base64.b64encode(image).decode()
    assert same(images, direct(emulator, [{"image": b64}], **fields))
    assert images[0].ndim == 2
    assert images[0].shape[1] == 128


@pytest.mark.parametrize(("side", "dimensions"), [("document", None), ("query", 96), ("query", 64)])
def test_colbert_multivector_equals_a_direct_call_per_input_type_and_is_cached(
    side: str,
    dimensions: int | None,
    emulator: JinaEmulator,
    make_ef: Callable[..., JinaEmbeddingFunction],
) -> None:
    def encode() -> list[NDArray[Any]]:
        ef = make_ef(COLBERT, dimensions=dimensions)
        return ef.encode_documents(TEXTS) if side == "document" else ef.encode_queries(TEXTS)

    first = encode()
    assert [r.path for r in emulator.requests] == ["/v1/multi-vector"]
    assert emulator.requests[0].body["input_type"] == side  # type: ignore[index]
    assert same(encode(), first)
    assert len(emulator.requests) == 1
    fields: dict[str, Any] = {"model": COLBERT, "input_type": side}
    if dimensions is not None:
        fields["dimensions"] = dimensions
    assert same(first, direct(emulator, TEXTS, path="/v1/multi-vector", **fields))
    assert first[0].shape[1] == (dimensions or 128)


def test_colbert_queries_and_documents_are_entries_of_their_own(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction]
) -> None:
    ef = make_ef(COLBERT)
    documents, queries = ef.encode_documents(TEXTS[:1]), ef.encode_queries(TEXTS[:1])
    assert len(emulator.requests) == 2
    assert documents[0].tobytes() != queries[0].tobytes()
    assert same(ef(TEXTS[:1]), documents)  # the configured side defaults to document
    assert len(emulator.requests) == 2


def test_multivector_binary_rows_equal_a_direct_call(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction]
) -> None:
    got = make_ef(COLBERT, embedding_type="binary").encode_documents(TEXTS)
    fields = {"model": COLBERT, "embedding_type": "binary", "input_type": "document"}
    assert same(got, direct(emulator, TEXTS, path="/v1/multi-vector", **fields))
    assert got[0].dtype == np.int8
    assert got[0].shape[1] == 16


def test_embed_refuses_a_multivector_output_as_one_matrix(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction]
) -> None:
    with pytest.raises(InvalidInputError, match="encode_documents"):
        make_ef(V4, return_multivector=True).embed(TEXTS)
    assert emulator.requests == []


@pytest.mark.parametrize(
    "fault",
    [
        Fault(dim_delta=-1),
        Fault(bad_value=float("nan")),
        Fault(bad_base64=True),
        Fault(count_delta=-1),
        Fault(body=json.dumps({"data": [{"index": 0, "embedding": "AAAA"}]}).encode()),
    ],
    ids=["short-rows", "nan", "bad-base64", "missing-item", "no-rows"],
)
def test_a_malformed_multivector_answer_raises_and_caches_nothing(
    fault: Fault, emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction]
) -> None:
    ef = make_ef(V4, return_multivector=True)
    emulator.inject(fault)
    with pytest.raises(ResponseFormatError):
        ef.encode_documents(TEXTS[:1])
    with Store(Path(ef.cache_dir)) as store:
        assert len(store) == 0
    good = ef.encode_documents(TEXTS[:1])  # sent again: nothing was kept of the bad answer
    assert len(emulator.requests) == 2
    assert good[0].shape[1] == 128


def test_a_binary_answer_of_the_wrong_width_raises_and_caches_nothing(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction]
) -> None:
    ef = make_ef(V3, embedding_type="binary")
    emulator.inject(Fault(dim_delta=-8))  # one packed value fewer
    with pytest.raises(ResponseFormatError, match="expected 128"):
        ef.encode_documents(TEXTS[:1])
    ef.encode_documents(TEXTS[:1])
    assert len(emulator.requests) == 2


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        (V4, {"return_multivector": True, "dimensions": 128}, "dimensions"),
        (V4, {"return_multivector": True, "late_chunking": True}, "late_chunking"),
        (V3, {"return_multivector": True}, "no multi-vector output"),
        (COLBERT, {"dimensions": 100}, "not offered"),
        ("jina-colbert-v1-en", {"dimensions": 64}, "fixed size"),
        (V3, {"input_type": "query"}, "takes no input_type"),
        (COLBERT, {"input_type": "passage"}, "query or document"),
        (V3, {"embedding_type": "int8"}, "float, binary, ubinary"),
        (COLBERT, {"normalized": True}, "normalized"),
    ],
)
def test_output_options_the_api_would_refuse_are_refused_before_sending(
    model: str,
    options: dict[str, Any],
    message: str,
    emulator: JinaEmulator,
    make_ef: Callable[..., JinaEmbeddingFunction],
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        make_ef(model, **options)
    assert emulator.requests == []


def test_an_image_for_colbert_is_refused_before_sending(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction]
) -> None:
    with pytest.raises(InvalidInputError, match="takes text only"):
        make_ef(COLBERT).encode_images([png(8, 8, 1)])
    assert emulator.requests == []


def test_the_key_covers_the_output_kind_input_type_and_dimensions() -> None:
    settings: list[tuple[str, dict[str, Any]]] = [
        (V3, {}),
        (V3, {"embedding_type": "binary"}),
        (V3, {"embedding_type": "ubinary"}),
        (V4, {}),
        (V4, {"return_multivector": True}),
        (COLBERT, {}),
        (COLBERT, {"input_type": "query"}),
        (COLBERT, {"dimensions": 64}),
    ]
    bodies = {
        json.dumps(resolve_options(model, **options).body_fields(), sort_keys=True)
        for model, options in settings
    }
    assert len(bodies) == 8
    # float and base64 are the same values: one entry
    assert resolve_options(V3, embedding_type="float") == resolve_options(V3)


def test_async_encode_of_binary_answers_is_cached(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction]
) -> None:
    ef = make_ef(V3, embedding_type="ubinary")
    first = asyncio.run(ef.aencode_documents(TEXTS))
    second = ef.encode_documents(TEXTS)
    assert same(first, second)
    assert len(emulator.requests) == 1


def test_a_multivector_entry_round_trips_through_the_redis_tier(
    redis_server: RedisServer,
    emulator: JinaEmulator,
    make_ef: Callable[..., JinaEmbeddingFunction],
    tmp_path: Path,
) -> None:
    first = make_ef(COLBERT, redis_url=redis_server.url).encode_documents(TEXTS)
    assert len(emulator.requests) == 1
    # Another machine: an empty local cache, the same Redis.
    other = make_ef(COLBERT, redis_url=redis_server.url, cache_dir=tmp_path / "other")
    assert same(other.encode_documents(TEXTS), first)
    assert len(emulator.requests) == 1
    other.close()  # the copy to its disk finished
    with Store(tmp_path / "other") as copied:
        assert len(copied) == 2  # both distinct texts' entries copied down
    assert same(make_ef(COLBERT, cache_dir=tmp_path / "other").encode_documents(TEXTS), first)


def test_get_on_a_colbert_model_is_one_line_before_sending(
    emulator: JinaEmulator, cache_dir: Path
) -> None:
    result = invoke(
        "get", "hello", "--model", COLBERT,
        cache_dir=cache_dir, base_url=emulator.url, key=API_KEY,
    )  # fmt: skip
    assert "multi-vector" in one_line_error(result)
    assert API_KEY not in result.output
    assert emulator.requests == []
