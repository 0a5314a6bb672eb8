"""Images through the library: keyed by content (bytes, a file, a ``data:`` URI: one entry)
or by URL, exact against a direct call, a second pass sending nothing, and bad input refused
before any request."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from embedcache import InvalidInputError, JinaEmbeddingFunction, TransportError
from embedcache.inputs import IMAGE_TILE_TOKENS, Input, Media, image_size, parse_item
from embedcache.maintenance import inventory
from embedcache.storage.store import Store
from embedcache.testing import JinaEmulator, pdf, png
from embedcache.upstream.media_fetch import MediaFetcher

from .conftest import API_KEY
from .image_server import ImageServer
from .redis_server import RedisServer

CLIP = "jina-clip-v2"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def direct(emulator: JinaEmulator, items: list[Any], model: str = CLIP) -> np.ndarray:
    """What the API answers for ``items`` asked directly (no cache)."""
    body = {"model": model, "input": items, "embedding_type": "base64"}
    answer = httpx.post(
        f"{emulator.url}/v1/embeddings",
        json=body,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    rows = sorted(answer.json()["data"], key=lambda item: item["index"])
    return np.stack([np.frombuffer(base64.b64decode(r["embedding"]), "<f4") for r in rows])


def test_images_by_bytes_equal_a_direct_call_and_a_second_pass_sends_nothing(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction]
) -> None:
    images = [png(8, 8, shade) for shade in range(3)]
    ef = make_ef(CLIP)
    first = ef.encode_images(images)
    sent = len(emulator.requests)
    assert sent == 1
    assert emulator.requests[0].body["input"] == [{"image": b64(i)} for i in images]  # type: ignore[index]
    again = make_ef(CLIP).encode_images(images)
    assert len(emulator.requests) == sent
    expected = direct(emulator, [{"image": b64(i)} for i in images])
    assert np.stack(first).tobytes() == np.stack(again).tobytes() == expected.tobytes()


def test_one_image_as_bytes_a_file_and_a_data_uri_is_one_entry(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction], tmp_path: Path
) -> None:
    image = png(16, 9, 40)
    path = tmp_path / "cat.png"
    path.write_bytes(image)
    ef = make_ef(CLIP)
    vectors = ef.encode_images([image, path, str(path), f"data:image/png;base64,{b64(image)}"])
    (request,) = emulator.requests
    assert request.inputs == 1  # four forms, one content, one entry fetched
    assert all(v.tobytes() == vectors[0].tobytes() for v in vectors)
    assert ef.stats.misses == 1


def test_an_image_by_url_is_sent_as_the_url_and_keyed_by_it(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction]
) -> None:
    url = "https://example.com/cat.png"
    ef = make_ef(CLIP)
    first = ef.encode_images([url])
    (request,) = emulator.requests
    assert request.body["input"] == [{"image": url}]  # type: ignore[index]
    assert make_ef(CLIP).encode_images([url])[0].tobytes() == first[0].tobytes()
    assert len(emulator.requests) == 1
    assert first[0].tobytes() == direct(emulator, [{"image": url}])[0].tobytes()


def test_an_image_and_a_text_never_share_an_entry(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction]
) -> None:
    url = "https://example.com/a.png"
    ef = make_ef(CLIP)
    text = ef.encode_documents([url])
    image = ef.encode_images([url])
    assert len(emulator.requests) == 2
    assert text[0].tobytes() != image[0].tobytes()


def test_texts_and_images_in_one_call_are_split_into_hits_and_misses_in_order(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction]
) -> None:
    ef = make_ef(CLIP)
    cat, dog = png(4, 4, 1), png(4, 4, 2)
    ef.encode_images([cat])
    ef.encode_documents(["a cat"])
    options = ef.options()
    mixed: list[Input] = ["a dog", Media("image", data=cat), "a cat", Media("image", data=dog)]
    got = ef._embedder.embed(mixed, options)
    # Only the two new ones were sent, in one request.
    last = emulator.requests[-1]
    assert last.body["input"] == ["a dog", {"image": b64(dog)}]  # type: ignore[index]
    expected = direct(emulator, ["a dog", {"image": b64(cat)}, "a cat", {"image": b64(dog)}])
    assert got.tobytes() == expected.tobytes()


def entry_kinds(cache_dir: Path) -> dict[bytes, tuple[str, str]]:
    """Each entry's key, and what its fingerprint says it was made from and holds."""
    with Store(cache_dir) as store:
        return {e.key: (e.input, e.output) for e in inventory.entries(store)}


def test_in_a_mixed_call_each_entry_is_stored_under_its_own_kind_of_input(
    emulator: JinaEmulator,
    make_ef: Callable[..., JinaEmbeddingFunction],
    cache_dir: Path,
    tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    mixed: list[Input] = ["a cat", Media("image", data=png(4, 4, 3))]
    ef = make_ef(CLIP, redis_url=redis_server.url)
    ef._embedder.embed(mixed, ef.options())
    keys = ef._embedder.keys(mixed, ef.options())
    expected = {keys[0]: ("text", "float"), keys[1]: ("image", "float")}
    assert entry_kinds(cache_dir) == expected
    # Another machine's copy of what Redis serves it keeps each entry's kind too.
    other = make_ef(CLIP, redis_url=redis_server.url, cache_dir=tmp_path / "other")
    other._embedder.embed(mixed, other.options())
    other.close()
    assert len(emulator.requests) == 1
    assert entry_kinds(tmp_path / "other") == expected


def test_bad_images_are_refused_before_any_request(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction], tmp_path: Path
) -> None:
    clip = make_ef(CLIP)
    cases: list[tuple[Any, str]] = [
        (tmp_path / "missing.png", "images[0]: cannot read"),
        ("data:image/png;base64,not*base64", "images[0]: not a URL and not valid base64"),
        ("ftp://example.com/a.png", "images[0]: only http:// and https:// URLs"),
        (b"", "images[0]: the image is empty"),
        (42, "images[0] must be bytes"),
    ]
    for image, message in cases:
        with pytest.raises(InvalidInputError, match=message.replace("[", r"\[")):
            clip.encode_images([image])
    with pytest.raises(InvalidInputError, match=r"images\[0\]: jina-embeddings-v3 takes text"):
        make_ef("jina-embeddings-v3").encode_images([png(2, 2)])
    assert emulator.requests == []


def test_a_function_with_late_chunking_embeds_images_without_it(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction]
) -> None:
    ef = make_ef("jina-embeddings-v4", late_chunking=True)
    ef.encode_images([png(3, 3)])
    assert emulator.requests[0].body.get("late_chunking") in (None, False)  # type: ignore[union-attr]


def test_every_item_form_of_the_api_becomes_one_input() -> None:
    image = png(5, 7)
    content = Media("image", data=image).identity
    forms = [{"image": b64(image)}, {"bytes": b64(image)}, {"image": "\n".join([b64(image)])}]
    assert {parse_item(form, "input[0]").identity for form in forms} == {content}  # type: ignore[union-attr]
    legacy = parse_item({"url": "https://x.test/a.png"}, "input[0]")
    assert isinstance(legacy, Media)
    assert (legacy.kind, legacy.url) == (
        "image",
        "https://x.test/a.png",
    )
    by_url = parse_item({"image": "https://x.test/a.png"}, "input[0]")
    assert isinstance(by_url, Media)
    assert by_url.url == "https://x.test/a.png"
    assert parse_item({"text": "hello"}, "input[0]") == "hello"
    assert isinstance(parse_item({"pdf": b64(b"%PDF-1.4 x")}, "input[0]"), Media)
    with pytest.raises(InvalidInputError, match=r"input\[0\] must be a string or an object"):
        parse_item({"audio": "x"}, "input[0]")


def test_an_images_size_is_read_from_its_header_for_the_token_estimate() -> None:
    assert image_size(png(600, 300)) == (600, 300)
    assert Media("image", data=png(600, 300)).tokens == 2 * IMAGE_TILE_TOKENS
    assert Media("image", data=b"not an image").tokens == IMAGE_TILE_TOKENS
    assert Media("image", url="https://x.test/a.png").tokens == IMAGE_TILE_TOKENS


def test_with_fetch_images_an_image_by_url_and_by_base64_is_one_entry(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction], images: ImageServer
) -> None:
    image = png(20, 10, seed=5)
    url = images.serve("/cat.png", image)
    ef = make_ef(CLIP, fetch_images=True)
    by_url = ef.encode_images([url])
    (request,) = emulator.requests
    assert request.body["input"] == [{"image": b64(image)}]  # type: ignore[index]
    by_bytes = ef.encode_images([image])
    assert len(emulator.requests) == 1  # the same content: one entry
    assert by_url[0].tobytes() == by_bytes[0].tobytes()
    # The API's own vector for that URL (it fetches the same bytes) is the same.
    assert by_url[0].tobytes() == direct(emulator, [{"image": url}])[0].tobytes()
    # New content at the old URL is a new entry, not the old vector.
    images.serve("/cat.png", png(20, 10, seed=6))
    assert ef.encode_images([url])[0].tobytes() != by_url[0].tobytes()


def test_without_fetch_images_new_content_at_a_cached_url_is_not_seen(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction], images: ImageServer
) -> None:
    url = images.serve("/dog.png", png(8, 8, seed=1))
    first = make_ef(CLIP).encode_images([url])
    images.serve("/dog.png", png(8, 8, seed=2))
    assert make_ef(CLIP).encode_images([url])[0].tobytes() == first[0].tobytes()
    assert len(emulator.requests) == 1


def test_a_url_that_cannot_be_fetched_is_refused_naming_it_before_any_request(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction], images: ImageServer
) -> None:
    ef = make_ef(CLIP, fetch_images=True)
    with pytest.raises(
        InvalidInputError, match=r"images\[0\]: fetching .*/gone.png answered HTTP 404"
    ):
        ef.encode_images([images.url + "/gone.png"])
    assert emulator.requests == []


def test_pdfs_are_sent_one_per_request_as_the_object_and_cached(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction]
) -> None:
    documents = [pdf(2, seed=1), pdf(3, seed=2)]
    ef = make_ef("jina-embeddings-v4")
    first = ef.encode_pdfs(documents)
    sent = [r.body["input"] for r in emulator.requests]  # type: ignore[index]
    # One request each (sent side by side, in either order), the PDF as the input itself.
    assert sorted(sent, key=str) == sorted(({"pdf": b64(d)} for d in documents), key=str)
    assert len(first) == 2
    assert first[0].shape == (2048,)
    again = make_ef("jina-embeddings-v4").encode_pdfs(documents)
    assert len(emulator.requests) == 2
    assert [v.tobytes() for v in again] == [v.tobytes() for v in first]
    with pytest.raises(
        InvalidInputError, match=r"pdfs\[0\]: jina-clip-v2 takes text only, not a PDF"
    ):
        make_ef(CLIP).encode_pdfs(documents)


def test_an_images_tokens_are_what_the_api_charged_for_it(
    emulator: JinaEmulator, make_ef: Callable[..., JinaEmbeddingFunction]
) -> None:
    ef = make_ef(CLIP)
    ef.encode_images([png(1000, 600, seed=3)])  # 2 x 2 tiles of 512 px
    assert ef.stats.tokens_spent == 4 * IMAGE_TILE_TOKENS
    again = make_ef(CLIP)
    again.encode_images([png(1000, 600, seed=3)])
    assert again.stats.tokens_saved == 4 * IMAGE_TILE_TOKENS


def test_one_requests_fetches_share_one_byte_total_and_one_deadline(images: ImageServer) -> None:
    urls = [images.serve(f"/{i}.png", png(30, 30, seed=i)) for i in range(3)]
    size = len(png(30, 30, seed=0))
    fetcher = MediaFetcher(max_total_bytes=2 * size + size // 2)
    items: list[Input] = [Media("image", url=url) for url in urls]
    try:
        with pytest.raises(InvalidInputError, match=r"input\[2\]: .* over [\d,]+ bytes"):
            fetcher.fetch_all(items, "input[{}]".format)
        fetched = fetcher.fetch_all(items[:2], "input[{}]".format)
        assert [m.data for m in fetched] == [png(30, 30, seed=i) for i in range(2)]  # type: ignore[union-attr]
        slow = MediaFetcher(timeout=0.3)
        with pytest.raises(TransportError, match=r"input\[0\]: fetching .*/slow passed the 0.3 s"):
            slow.fetch_all([Media("image", url=images.url + "/slow")], "input[{}]".format)
        slow.close()
    finally:
        fetcher.close()


def test_a_urls_credentials_never_reach_a_repr_or_an_error() -> None:
    url = "https://bob:s3cret@x.test/a.png?token=t0k3n"
    assert "s3cret" not in repr(Media("image", url=url))
    assert "t0k3n" not in repr(Media("image", url=url))
    with pytest.raises(InvalidInputError) as refused:
        parse_item({"image": "ftp://bob:s3cret@x.test/a.png"}, "input[0]")
    assert "s3cret" not in str(refused.value)
