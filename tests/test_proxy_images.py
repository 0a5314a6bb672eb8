"""Images and PDFs through ``embedcache serve`` (Jina's dialect): cached by content or URL,
text and images in one request split into hits and misses and merged back in order, exact
against a direct call; what the API would refuse answered locally, before anything is sent."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from embedcache.testing import JinaEmulator, pdf, png

from .conftest import API_KEY, MakeProxy
from .image_server import ImageServer
from .serving import Served

CLIP = "jina-clip-v2"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def direct(emulator: JinaEmulator, body: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(emulator.url + "/v1/embeddings", json=body, headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()
    return data


@pytest.fixture
def proxy(make_proxy: MakeProxy) -> Served:
    return make_proxy()


def test_text_and_images_in_one_request_are_cached_and_answered_in_order_exactly(
    emulator: JinaEmulator, proxy: Served
) -> None:
    cat, dog = b64(png(4, 4, 10)), b64(png(4, 4, 20))
    first_body = {"model": CLIP, "input": [{"image": cat}, "a cat"]}
    assert proxy.embed(first_body, API_KEY).status_code == 200
    sent = len(emulator.requests)
    mixed = {
        "model": CLIP,
        "input": [
            "a dog",
            {"bytes": cat},
            {"text": "a cat"},
            {"image": dog},
            {"url": "https://x.test/b.png"},
        ],
    }
    answer = proxy.embed(mixed, API_KEY)
    assert answer.status_code == 200, answer.text
    # Only what was new was sent, in one request, the older forms as the API's own.
    assert len(emulator.requests) == sent + 1
    assert emulator.requests[-1].body["input"] == [  # type: ignore[index]
        "a dog", {"image": dog}, {"image": "https://x.test/b.png"},
    ]  # fmt: skip
    expected = direct(
        emulator,
        mixed
        | {
            "input": [
                "a dog",
                {"image": cat},
                "a cat",
                {"image": dog},
                {"image": "https://x.test/b.png"},
            ]
        },
    )
    assert answer.json()["data"] == expected["data"]
    assert answer.headers["X-Embedcache-Status"] == "partial"
    sent = len(emulator.requests)
    again = proxy.embed(mixed, API_KEY)
    assert again.json()["data"] == expected["data"]
    assert again.headers["X-Embedcache-Status"] == "hit"
    assert len(emulator.requests) == sent


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            {"model": CLIP, "input": [{"image": "not*base64"}]},
            "input[0].image: not a URL and not valid base64",
        ),
        ({"model": CLIP, "input": [{"image": "ftp://x.test/a.png"}]}, "only http:// and https://"),
        ({"model": "jina-embeddings-v3", "input": [{"image": b64(png(2, 2))}]}, "takes text only"),
        (
            {"model": "jina-embeddings-v4", "input": [{"pdf": b64(b"%PDF-1.4")}, "text"]},
            "a PDF is sent alone",
        ),
        (
            {"model": "jina-embeddings-v4", "input": [{"pdf": b64(b"%PDF-1.4")}]},
            "a PDF is sent alone",
        ),
    ],
)
def test_what_the_api_would_refuse_is_answered_locally_in_jinas_shape(
    emulator: JinaEmulator, proxy: Served, body: dict[str, Any], says: str
) -> None:
    answer = proxy.embed(body, API_KEY)
    assert 400 <= answer.status_code < 500
    assert says in answer.json()["detail"]
    assert emulator.requests == []


def test_with_fetch_images_from_a_host_its_urls_are_keyed_by_content(
    emulator: JinaEmulator, make_proxy: MakeProxy, images: ImageServer
) -> None:
    image = png(12, 12, seed=8)
    url = images.serve("/cat.png", image)
    proxy = make_proxy("--fetch-images-from", "127.0.0.1")
    by_url = proxy.embed({"model": CLIP, "input": [{"image": url}]}, API_KEY)
    assert by_url.status_code == 200, by_url.text
    assert emulator.requests[-1].body["input"] == [{"image": b64(image)}]  # type: ignore[index]
    sent = len(emulator.requests)
    by_base64 = proxy.embed({"model": CLIP, "input": [{"image": b64(image)}]}, API_KEY)
    assert by_base64.json()["data"] == by_url.json()["data"]
    assert by_base64.headers["X-Embedcache-Status"] == "hit"
    assert len(emulator.requests) == sent
    gone = proxy.embed({"model": CLIP, "input": [{"image": images.url + "/gone.png"}]}, API_KEY)
    assert gone.status_code == 422
    assert "answered HTTP 404" in gone.json()["detail"]


def test_a_pdf_alone_is_cached_and_answered_as_the_api_answers_it(
    emulator: JinaEmulator, proxy: Served
) -> None:
    body = {"model": "jina-embeddings-v4", "input": {"pdf": b64(pdf(2, seed=4))}}
    expected = direct(emulator, body)
    first = proxy.embed(body, API_KEY)
    assert first.status_code == 200, first.text
    assert first.json()["data"] == expected["data"]
    sent = len(emulator.requests)
    again = proxy.embed(body, API_KEY)
    assert again.json()["data"] == expected["data"]
    assert len(emulator.requests) == sent
