"""The emulator's images and PDFs (issue 26): seeded by their bytes in every form, fetched
from a loopback image server, charged by tiles or pages, and refused when they are bad."""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any

import httpx
import numpy as np
import pytest

from embedcache.testing import Fetched, JinaEmulator, image_size, image_tokens, pdf, png
from embedcache.tokens import estimate_tokens

from .emulator_module import post_to_module
from .image_server import ImageServer

PATH = "/v1/embeddings"
CLIP2, CLIP1, V4 = "jina-clip-v2", "jina-clip-v1", "jina-embeddings-v4"
IMAGE = png(300, 200, seed=1)
NINE_MIB = 9 * 1024 * 1024


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def embed(http: httpx.Client, model: str, input: Any, **fields: Any) -> httpx.Response:
    return http.post(PATH, json={"model": model, "input": input, **fields})


def vectors(response: httpx.Response) -> list[np.ndarray]:
    assert response.status_code == 200, response.text
    return [np.array(item["embedding"], dtype=np.float32) for item in response.json()["data"]]


def refused(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    detail: str = response.json()["detail"]
    return detail


# --- one image, every form -----------------------------------------------------------


def test_an_image_gets_one_vector_as_base64_legacy_bytes_url_and_legacy_url(
    emulator: JinaEmulator, http: httpx.Client, images: ImageServer
) -> None:
    url = images.serve("/cat.png", IMAGE)
    forms = [{"image": b64(IMAGE)}, {"bytes": b64(IMAGE)}, {"image": url}, {"url": url}]
    got = vectors(embed(http, CLIP2, forms))
    expected = emulator.expected_embedding(IMAGE, model=CLIP2)
    assert all(vector.tobytes() == expected.tobytes() for vector in got)
    other = vectors(embed(http, CLIP2, [{"image": b64(png(300, 200, seed=2))}]))[0]
    assert other.tobytes() != expected.tobytes()


def test_an_image_vector_depends_on_model_and_task(emulator: JinaEmulator) -> None:
    plain = emulator.expected_embedding(IMAGE, model=CLIP2)
    query = emulator.expected_embedding(IMAGE, model=CLIP2, task="retrieval.query")
    v4 = emulator.expected_embedding(IMAGE, model=V4)
    assert plain.tobytes() != query.tobytes()
    assert v4.shape == (2048,)
    assert emulator.expected_embedding(IMAGE, model=CLIP1).shape == (768,)


def test_base64_wrapped_over_lines_is_the_same_image(http: httpx.Client) -> None:
    wrapped = base64.encodebytes(IMAGE).decode("ascii")
    assert "\n" in wrapped
    one, two = vectors(embed(http, CLIP2, [{"image": wrapped}, {"image": b64(IMAGE)}]))
    assert one.tobytes() == two.tobytes()


def test_fetched_urls_are_in_the_request_log_with_size_and_digest(
    emulator: JinaEmulator, http: httpx.Client, images: ImageServer
) -> None:
    url = images.serve("/a.png", IMAGE)
    embed(http, CLIP2, [{"image": url}, "text", {"image": b64(IMAGE)}])
    (fetched,) = emulator.requests[-1].fetched
    assert fetched.url == url
    assert (fetched.status, fetched.size, fetched.error) == (200, len(IMAGE), None)
    assert fetched.sha256 == hashlib.sha256(IMAGE).hexdigest()


def test_remote_urls_are_left_opaque_unless_fetching_them_is_allowed(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    url = "https://images.invalid/a.png"
    opaque = embed(http, CLIP2, [{"image": url}, {"url": url}])
    one, two = vectors(opaque)
    assert one.tobytes() == two.tobytes()
    assert opaque.json()["usage"]["image_tokens"] == 2 * 4000  # one tile each
    assert not emulator.requests[-1].fetched
    emulator.fetch_remote_images = True
    detail = refused(embed(http, CLIP2, [{"image": url}]), 400)
    assert "could not fetch https://images.invalid/a.png" in detail
    assert emulator.requests[-1].fetched[0].error is not None


def test_the_module_fetches_remote_images_when_told_to() -> None:
    body = {"model": CLIP2, "input": [{"image": "https://images.invalid/a.png"}]}
    answer = post_to_module(["--fetch-remote-images"], body)
    assert "could not fetch" in refused(answer, 400)


# --- tokens by tiles -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "width", "height", "tokens"),
    [
        (CLIP2, 1, 1, 4000),
        (CLIP2, 512, 512, 4000),
        (CLIP2, 513, 512, 8000),
        (CLIP2, 1024, 1100, 2 * 3 * 4000),
        (V4, 600, 100, 2 * 4000),
        (CLIP1, 224, 224, 1000),
        (CLIP1, 225, 224, 2000),
        (CLIP1, 600, 100, 3 * 1000),
    ],
)
def test_image_tokens_are_its_tiles_partial_ones_counted_full(
    http: httpx.Client, model: str, width: int, height: int, tokens: int
) -> None:
    answer = embed(http, model, [{"image": b64(png(width, height))}, "a caption"])
    usage = answer.json()["usage"]
    assert usage["image_tokens"] == tokens == image_tokens(width, height, model)
    text = estimate_tokens("a caption")
    assert usage["total_tokens"] == usage["prompt_tokens"] == tokens + text
    assert "image_tokens" not in embed(http, model, ["only text"]).json()["usage"]


def _jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + bytes(9)
    sof = b"\xff\xc0" + struct.pack(">HBHH", 17, 8, height, width) + bytes(12)
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def _webp(chunk: bytes, payload: bytes) -> bytes:
    body = b"WEBP" + chunk + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(
    "data",
    [
        png(700, 300),
        _jpeg(700, 300),
        b"GIF89a" + struct.pack("<HH", 700, 300) + bytes(10),
        _webp(b"VP8 ", b"\x00\x00\x00\x9d\x01\x2a" + struct.pack("<HH", 700, 300) + bytes(4)),
        _webp(b"VP8L", b"\x2f" + struct.pack("<I", 699 | (299 << 14)) + bytes(4)),
        _webp(b"VP8X", bytes(4) + (699).to_bytes(3, "little") + (299).to_bytes(3, "little")),
    ],
    ids=["png", "jpeg", "gif", "webp-lossy", "webp-lossless", "webp-extended"],
)
def test_the_size_is_read_from_each_formats_header(http: httpx.Client, data: bytes) -> None:
    assert image_size(data) == (700, 300)
    usage = embed(http, CLIP1, [{"image": b64(data)}]).json()["usage"]
    assert usage["image_tokens"] == 4 * 2 * 1000


def test_png_makes_the_same_bytes_for_the_same_seed_and_cheap_large_images() -> None:
    assert png(64, 32, seed=5) == png(64, 32, seed=5) != png(64, 32, seed=6)
    assert len(png(4096, 4096)) < 100_000


# --- bad images ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "status", "words"),
    [
        ({"image": "not base64 at all!"}, 400, "neither an http(s) URL nor valid base64"),
        ({"bytes": "https://example.com/a.png"}, 400, "valid base64"),
        ({"image": b64(b"just some text")}, 400, "not a PNG, JPEG, GIF or WEBP"),
        ({"image": b64(b"\x89PNG\r\n\x1a\n")}, 400, "header gives no size"),
        ({"image": "ftp://example.com/a.png"}, 422, "http"),
        ({"url": b64(IMAGE)}, 422, "valid URL"),
    ],
    ids=["undecodable", "url-in-bytes", "not-an-image", "cut-header", "ftp", "base64-in-url"],
)
def test_a_bad_image_is_refused_naming_its_field(
    http: httpx.Client, item: dict[str, str], status: int, words: str
) -> None:
    detail = refused(embed(http, CLIP2, ["fine", item]), status)
    assert "input.1." in detail
    assert words in detail


def test_a_url_answering_404_is_a_400_and_logged(
    emulator: JinaEmulator, http: httpx.Client, images: ImageServer
) -> None:
    url = images.serve("/gone.png", b"missing", status=404)
    assert "HTTP 404" in refused(embed(http, CLIP2, [{"image": url}]), 400)
    assert emulator.requests[-1].fetched == (Fetched(url, 404, 0, None, "HTTP 404"),)


def test_an_image_over_8_mib_is_refused_fetched_or_sent(
    emulator: JinaEmulator, http: httpx.Client, images: ImageServer
) -> None:
    big = png(10, 10) + bytes(NINE_MIB)
    url = images.serve("/big.png", big)
    assert "more than 8 MiB" in refused(embed(http, CLIP2, [{"image": url}]), 400)
    assert emulator.requests[-1].fetched[0].size <= 8 * 1024 * 1024 + 1024 * 1024
    assert "more than 8 MiB" in refused(embed(http, CLIP2, [{"image": b64(big)}]), 400)


def test_a_fetch_is_cut_at_the_fetch_timeout(
    emulator: JinaEmulator, http: httpx.Client, images: ImageServer
) -> None:
    emulator.fetch_timeout = 0.3
    refused(embed(http, CLIP2, [{"image": images.url + "/slow"}]), 400)
    assert emulator.requests[-1].fetched[0].error in ("too slow", "ReadTimeout")


def test_a_url_password_is_never_shown(
    emulator: JinaEmulator, http: httpx.Client, images: ImageServer
) -> None:
    url = images.serve("/gone.png", b"", status=404).replace("://", "://user:hunter2@")
    detail = refused(embed(http, CLIP2, [{"image": url}]), 400)
    assert "hunter2" not in detail
    assert "***@127.0.0.1" in detail
    assert "hunter2" not in repr(emulator.requests[-1].fetched)


def test_a_malformed_request_fetches_nothing(
    emulator: JinaEmulator, http: httpx.Client, images: ImageServer
) -> None:
    url = images.serve("/a.png", IMAGE)
    refused(embed(http, CLIP2, [{"image": url}, 7]), 422)
    assert not emulator.requests[-1].fetched


# --- PDFs ------------------------------------------------------------------------------


def test_a_pdf_is_seeded_by_its_bytes_and_charged_per_page(
    emulator: JinaEmulator, http: httpx.Client, images: ImageServer
) -> None:
    document = pdf(3, seed=1)
    url = images.serve("/doc.pdf", document)
    sent = embed(http, V4, {"pdf": b64(document)})
    fetched = embed(http, V4, {"pdf": url})
    expected = emulator.expected_embedding(document, model=V4)
    assert vectors(sent)[0].tobytes() == vectors(fetched)[0].tobytes() == expected.tobytes()
    assert sent.json()["usage"] == {
        "total_tokens": 12000, "prompt_tokens": 12000, "image_tokens": 12000,
    }  # fmt: skip
    other = emulator.expected_embedding(pdf(3, seed=2), model=V4)
    assert other.tobytes() != expected.tobytes()


@pytest.mark.parametrize(
    "input",
    [[{"pdf": b64(pdf(1))}], ["text", {"pdf": b64(pdf(1))}]],
    ids=["alone-in-a-list", "beside-text"],
)
def test_a_pdf_in_a_list_is_422(http: httpx.Client, input: list[Any]) -> None:
    assert "PDFs must be sent individually" in refused(embed(http, V4, input), 422)


def test_a_pdf_is_only_for_v4_and_must_start_with_the_pdf_header(http: httpx.Client) -> None:
    assert "accepts no PDF inputs" in refused(embed(http, CLIP2, {"pdf": b64(pdf(1))}), 422)
    assert "%PDF-" in refused(embed(http, V4, {"pdf": b64(IMAGE)}), 400)


# --- multi-vector ----------------------------------------------------------------------

MULTI = "/v1/multi-vector"
COLBERT = "jina-colbert-v2"


def rows(response: httpx.Response) -> list[np.ndarray]:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["object"] for item in data] == ["embeddings"] * len(data)
    assert [item["index"] for item in data] == list(range(len(data)))
    return [np.array(item["embeddings"], dtype=np.float32) for item in data]


def test_v4_multivector_gives_a_row_per_text_token_and_16_per_image_or_page(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    text = "a sentence of several tokens for the multi-vector model"
    got = rows(embed(http, V4, [text, "", {"image": b64(IMAGE)}], return_multivector=True))
    assert [r.shape for r in got] == [(estimate_tokens(text), 128), (1, 128), (16, 128)]
    for r in got:
        assert np.allclose(np.linalg.norm(r, axis=1), 1.0, atol=1e-6)
    document = rows(embed(http, V4, {"pdf": b64(pdf(2))}, return_multivector=True))[0]
    assert document.shape == (32, 128)
    expected = emulator.expected_multivector(text)
    assert got[0].tobytes() == expected.tobytes()
    assert got[2].tobytes() == emulator.expected_multivector(IMAGE).tobytes()


def test_multivector_rows_do_not_depend_on_the_batch_but_on_task_and_position(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    alone = rows(embed(http, V4, ["a b c d e f"], return_multivector=True))[0]
    batched = rows(embed(http, V4, ["x", "a b c d e f"], return_multivector=True))[1]
    assert alone.tobytes() == batched.tobytes()
    assert len({row.tobytes() for row in alone}) == len(alone)  # each position its own
    query = emulator.expected_multivector("a b c d e f", task="retrieval.query")
    assert query.tobytes() != alone.tobytes()


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"return_multivector": True, "dimensions": 128}, "Cannot be used with return_multivector"),
        ({"return_multivector": True, "late_chunking": True}, "Cannot be used with"),
        ({"return_multivector": True, "return_tokenized_input": True}, "no tokenizer"),
        ({"return_tokenized_input": True}, "requires return_multivector"),
        ({"return_multivector": "yes"}, "valid boolean"),
    ],
    ids=["dimensions", "late-chunking", "tokenized-input", "tokenized-alone", "not-bool"],
)
def test_v4_multivector_refuses_what_it_cannot_combine(
    http: httpx.Client, fields: dict[str, Any], words: str
) -> None:
    assert words in refused(embed(http, V4, ["text"], **fields), 422)


def test_return_multivector_is_unknown_to_other_models(http: httpx.Client) -> None:
    refused(embed(http, "jina-embeddings-v3", ["t"], return_multivector=True), 422)
    plain = embed(http, V4, ["t"], return_multivector=False)
    assert plain.json()["data"][0]["object"] == "embedding"


def test_colbert_answers_at_multi_vector_by_input_type_and_dimensions(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    text = "late interaction retrieval"
    document = rows(http.post(MULTI, json={"model": COLBERT, "input": [text]}))[0]
    explicit = rows(
        http.post(MULTI, json={"model": COLBERT, "input": text, "input_type": "document"})
    )[0]
    query = rows(http.post(MULTI, json={"model": COLBERT, "input": [text], "input_type": "query"}))
    assert document.shape == (estimate_tokens(text), 128)
    assert document.tobytes() == explicit.tobytes() != query[0].tobytes()
    assert document.tobytes() == emulator.expected_multivector(text, model=COLBERT).tobytes()
    for width in (96, 64):
        cut = rows(http.post(MULTI, json={"model": COLBERT, "input": [text], "dimensions": width}))
        assert cut[0].shape == (estimate_tokens(text), width)
        assert np.allclose(np.linalg.norm(cut[0], axis=1), 1.0, atol=1e-6)
    on_embeddings = rows(embed(http, COLBERT, [text]))[0]  # the 2026 spec's single endpoint
    assert on_embeddings.tobytes() == document.tobytes()


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"model": COLBERT, "input": ["t"], "dimensions": 100}, 422, "128, 96, 64"),
        ({"model": "jina-colbert-v1-en", "input": ["t"], "dimensions": 96}, 422, "128"),
        ({"model": COLBERT, "input": ["t"], "input_type": "passage"}, 422, "'query'"),
        ({"model": COLBERT, "input": [{"image": b64(IMAGE)}]}, 422, "text inputs only"),
        ({"model": COLBERT, "input": ["t"], "task": "retrieval.query"}, 422, "task"),
        ({"model": "jina-embeddings-v3", "input": ["t"]}, 400, "jina-colbert-v2"),
    ],
    ids=["v2-dimensions", "v1-dimensions", "input-type", "image", "task", "not-colbert"],
)
def test_multi_vector_refuses_what_colbert_does_not_take(
    http: httpx.Client, body: dict[str, Any], status: int, words: str
) -> None:
    assert words in refused(http.post(MULTI, json=body), status)


# --- binary types ----------------------------------------------------------------------


def unpacked(values: list[int], kind: str) -> np.ndarray:
    raw = np.array(values, dtype=np.int16) + (128 if kind == "binary" else 0)
    assert raw.min() >= 0
    assert raw.max() <= 255
    return np.unpackbits(raw.astype(np.uint8))


@pytest.mark.parametrize("kind", ["binary", "ubinary"])
@pytest.mark.parametrize("dimensions", [1024, 100, 8])
def test_binary_types_pack_dims_over_8_rounded_up(
    emulator: JinaEmulator, http: httpx.Client, kind: str, dimensions: int
) -> None:
    answer = embed(http, "jina-embeddings-v3", ["bits"], embedding_type=kind, dimensions=dimensions)
    packed = answer.json()["data"][0]["embedding"]
    assert len(packed) == -(-dimensions // 8)
    expected = emulator.expected_embedding("bits", dimensions=dimensions)
    bits = unpacked(packed, kind)
    assert (bits[:dimensions] == (expected > 0)).all()
    assert not bits[dimensions:].any()  # the padding bits are zeros


@pytest.mark.parametrize("kind", ["binary", "ubinary", "base64"])
def test_multivector_rows_are_each_encoded_in_the_embedding_type(
    emulator: JinaEmulator, http: httpx.Client, kind: str
) -> None:
    body = {"model": COLBERT, "input": ["a b c"], "dimensions": 96, "embedding_type": kind}
    encoded = http.post(MULTI, json=body).json()["data"][0]["embeddings"]
    expected = emulator.expected_multivector("a b c", model=COLBERT, dimensions=96)
    assert len(encoded) == len(expected)
    for row, want in zip(encoded, expected, strict=True):
        if kind == "base64":
            assert np.frombuffer(base64.b64decode(row), dtype="<f4").tobytes() == want.tobytes()
        else:
            assert len(row) == 12
            assert (unpacked(row, kind) == (want > 0)).all()


def test_a_list_of_types_gives_a_dict_of_rows_per_item(http: httpx.Client) -> None:
    body = {"embedding_type": ["float", "ubinary"], "return_multivector": True}
    (item,) = embed(http, V4, ["two words"], **body).json()["data"]
    assert set(item["embeddings"]) == {"float", "ubinary"}
    floats, bits = item["embeddings"]["float"], item["embeddings"]["ubinary"]
    assert len(floats) == len(bits) == estimate_tokens("two words")
    assert [len(row) for row in bits] == [16] * len(bits)
