from __future__ import annotations

import pytest

from embedcache.cache_keys import fingerprint, group_keys, text_keys
from embedcache.errors import InvalidInputError
from embedcache.models import RequestOptions

BASE = RequestOptions("jina-embeddings-v3", task="retrieval.passage")


@pytest.mark.parametrize(
    "changed",
    [
        RequestOptions("jina-embeddings-v4", task="retrieval.passage"),
        RequestOptions("jina-embeddings-v3", task="retrieval.query"),
        RequestOptions("jina-embeddings-v3", task=None),
        RequestOptions("jina-embeddings-v3", task="retrieval.passage", dimensions=1024),
        RequestOptions("jina-embeddings-v3", task="retrieval.passage", dimensions=256),
        RequestOptions("jina-embeddings-v3", task="retrieval.passage", normalized=True),
        RequestOptions("jina-embeddings-v3", task="retrieval.passage", normalized=False),
        RequestOptions("jina-embeddings-v3", task="retrieval.passage", truncate=False),
        RequestOptions("jina-embeddings-v3", task="retrieval.passage", truncate=True),
        RequestOptions("jina-embeddings-v3", task="retrieval.passage", embedding_type="float"),
        RequestOptions("jina-embeddings-v3", task="retrieval.passage", late_chunking=True),
    ],
)
def test_every_output_changing_field_changes_the_key(changed: RequestOptions) -> None:
    assert text_keys(fingerprint(changed), ["same text"]) != text_keys(
        fingerprint(BASE), ["same text"]
    )


def test_fingerprint_is_the_request_body_without_input() -> None:
    options = RequestOptions("jina-embeddings-v3", task="text-matching", dimensions=64)
    assert fingerprint(options).fields == options.body_fields()


def test_equal_options_give_equal_keys_across_instances() -> None:
    again = RequestOptions("jina-embeddings-v3", task="retrieval.passage")
    assert text_keys(fingerprint(again), ["a", "b"]) == text_keys(fingerprint(BASE), ["a", "b"])


def test_keys_cover_the_exact_text_bytes() -> None:
    fp = fingerprint(BASE)
    texts = ["café", "cafe\u0301", "café ", "Café", ""]
    assert len(set(text_keys(fp, texts))) == len(texts)


def test_keys_are_16_bytes() -> None:
    assert all(len(key) == 16 for key in text_keys(fingerprint(BASE), ["x", "y" * 10_000]))


def test_group_keys_depend_on_order_membership_and_position() -> None:
    fp = fingerprint(RequestOptions("jina-embeddings-v3", late_chunking=True))
    abc = group_keys(fp, ["a", "b", "c"])
    assert len(set(abc)) == 3
    assert group_keys(fp, ["b", "a", "c"])[2] != abc[2]
    assert group_keys(fp, ["a", "b"])[0] != abc[0]
    assert group_keys(fp, ["a", "b", "c"]) == abc


def test_group_boundaries_are_unambiguous() -> None:
    fp = fingerprint(RequestOptions("jina-embeddings-v3", late_chunking=True))
    assert group_keys(fp, ["ab", "c"])[0] != group_keys(fp, ["a", "bc"])[0]


def test_group_key_differs_from_plain_key_of_same_text() -> None:
    options = RequestOptions("jina-embeddings-v3", late_chunking=True)
    assert group_keys(fingerprint(options), ["a"]) != text_keys(fingerprint(options), ["a"])


def test_lone_surrogate_is_an_input_error_naming_the_index() -> None:
    with pytest.raises(InvalidInputError, match=r"texts\[1\] is not valid Unicode"):
        text_keys(fingerprint(BASE), ["ok", "bad \ud800"])
