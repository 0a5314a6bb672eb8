from __future__ import annotations

import pytest

from embedcache.errors import InvalidInputError
from embedcache.models import MODELS, resolve_options


def test_v3_clustering_is_sent_as_separation() -> None:
    assert resolve_options("jina-embeddings-v3", "clustering").task == "separation"
    assert resolve_options("jina-embeddings-v3", "separation").task == "separation"


def test_v5_keeps_clustering() -> None:
    assert resolve_options("jina-embeddings-v5-text-small", "clustering").task == "clustering"


def test_unknown_task_for_known_model_names_the_valid_ones() -> None:
    with pytest.raises(InvalidInputError, match=r"unknown task 'summarise'.*retrieval\.query"):
        resolve_options("jina-embeddings-v3", "summarise")


def test_v4_rejects_a_v3_only_task() -> None:
    with pytest.raises(InvalidInputError, match="separation"):
        resolve_options("jina-embeddings-v4", "separation")


@pytest.mark.parametrize("dimensions", [0, -1, 1025, True, 2.5])
def test_dimensions_out_of_range_or_wrong_type_fail(dimensions: object) -> None:
    with pytest.raises(InvalidInputError, match="dimensions"):
        resolve_options("jina-embeddings-v3", "text-matching", dimensions)  # type: ignore[arg-type]


def test_dimensions_bounds_are_inclusive() -> None:
    assert resolve_options("jina-embeddings-v3", None, 1).dimensions == 1
    assert resolve_options("jina-embeddings-v4", None, 2048).dimensions == 2048


def test_v2_drops_task_and_native_dimensions_but_rejects_others() -> None:
    options = resolve_options("jina-embeddings-v2-base-en", "retrieval.passage", 768)
    assert options.task is None
    assert options.dimensions is None
    with pytest.raises(InvalidInputError, match="fixed size of 768"):
        resolve_options("jina-embeddings-v2-base-en", None, 512)


def test_late_chunking_only_where_the_model_supports_it() -> None:
    assert resolve_options("jina-embeddings-v3", late_chunking=True).late_chunking
    with pytest.raises(InvalidInputError, match="does not support late_chunking"):
        resolve_options("jina-embeddings-v5-text-small", late_chunking=True)


def test_normalized_rejected_for_models_without_the_field() -> None:
    with pytest.raises(InvalidInputError, match="normalized"):
        resolve_options("jina-embeddings-v4", normalized=False)


def test_unknown_model_passes_through_unvalidated() -> None:
    options = resolve_options("some-future-model", "any-task", 12345, late_chunking=True)
    assert (options.task, options.dimensions, options.late_chunking) == ("any-task", 12345, True)
    assert options.expected_dim == 12345
    assert options.max_items == 2048


@pytest.mark.parametrize("model", ["", "   ", None])
def test_empty_model_name_fails(model: object) -> None:
    with pytest.raises(InvalidInputError, match="model"):
        resolve_options(model)  # type: ignore[arg-type]


def test_model_table_matches_reference_limits() -> None:
    assert MODELS["jina-embeddings-v3"].native_dim == 1024
    assert MODELS["jina-embeddings-v4"].max_items == 512
    assert MODELS["jina-embeddings-v3"].max_items == 2048
    assert MODELS["jina-embeddings-v2-base-en"].native_dim == 768


def test_absent_fields_stay_out_of_the_body() -> None:
    body = resolve_options("jina-embeddings-v3", None).body_fields()
    assert body == {"model": "jina-embeddings-v3", "embedding_type": "base64"}
