"""The success body of ``POST /v1/embeddings`` (and ``/v1/multi-vector``), and the
data-level faults applied to it.

``usage`` carries ``image_tokens`` (what images and PDFs cost, part of ``total_tokens``)
only when the request had an image or a PDF, so text answers keep their earlier shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..tokens import estimate_tokens
from .faults import Fault
from .multivector import IMAGE_ROWS, MULTI_VECTOR_DIM, multivector_rows
from .validation import EmbeddingRequest, InputItem
from .vectors import compute_vectors, content_seed, encode

__all__ = ["embeddings_payload", "request_multivectors", "request_vectors", "row_count"]

_PAD_VALUE = 0.01


def request_vectors(request: EmbeddingRequest) -> list[NDArray[np.float32]]:
    """The float32 vectors a validated request gets, in input order."""
    spec = request.spec
    seeds = [
        content_seed(item.kind, spec.name, request.task, item.content) for item in request.items
    ]
    return compute_vectors(
        seeds,
        spec.native_dim,
        dimensions=request.dimensions,
        normalize=request.normalize,
        late_chunking=request.late_chunking,
    )


def row_count(item: InputItem) -> int:
    """Rows of ``item`` in a multi-vector answer: a text's estimated tokens (at least 1),
    :data:`~embedcache.testing.multivector.IMAGE_ROWS` for an image and per PDF page."""
    if item.kind == "text":
        return max(1, estimate_tokens(item.content))
    return IMAGE_ROWS * item.pages


def request_multivectors(request: EmbeddingRequest) -> list[NDArray[np.float32]]:
    """The ``(rows, dimensions)`` float32 arrays a validated multi-vector request gets."""
    context = request.input_type if request.input_type is not None else request.task
    width = request.dimensions if request.dimensions is not None else MULTI_VECTOR_DIM
    return [
        multivector_rows(
            content_seed(item.kind, request.spec.name, context, item.content),
            row_count(item),
            width,
        )
        for item in request.items
    ]


def embeddings_payload(
    request: EmbeddingRequest, fault: Fault | None, float_style: str = "float64"
) -> dict[str, Any]:
    """The response object (key order as in the docs' capture), mangled by ``fault``, with
    ``float`` values written in ``float_style``."""
    vectors = request_multivectors(request) if request.multivector else request_vectors(request)
    if fault is not None:
        vectors = _alter_vectors(vectors, fault)
    short = fault is not None and fault.bad_base64
    data: list[dict[str, Any]] = []

    def encoded(vector: NDArray[np.float32], kind: str) -> Any:
        if vector.ndim == 2:  # multi-vector: the type applies to each row
            return [
                encode(row, kind, short_base64=short, float_style=float_style) for row in vector
            ]
        return encode(vector, kind, short_base64=short, float_style=float_style)

    for index, vector in enumerate(vectors):
        if request.types_as_dict:
            embedding: Any = {kind: encoded(vector, kind) for kind in request.embedding_types}
        else:
            embedding = encoded(vector, request.embedding_types[0])
        if request.multivector:
            data.append({"object": "embeddings", "index": index, "embeddings": embedding})
        else:
            data.append({"object": "embedding", "index": index, "embedding": embedding})
    if fault is not None:
        data = _alter_data(data, fault)
    tokens = request.tokens
    usage = {"total_tokens": tokens, "prompt_tokens": tokens}
    if request.has_media:
        usage["image_tokens"] = request.image_tokens
    return {
        "model": request.spec.name,
        "object": "list",
        "usage": usage,
        "data": data,
    }


def _alter_vectors(vectors: list[NDArray[np.float32]], fault: Fault) -> list[NDArray[np.float32]]:
    # On the last axis, so a multi-vector answer's every row is altered alike.
    if fault.dim_delta > 0:
        vectors = [
            np.concatenate(
                [vector, np.full((*vector.shape[:-1], fault.dim_delta), _PAD_VALUE, np.float32)],
                axis=-1,
            )
            for vector in vectors
        ]
    elif fault.dim_delta < 0:
        vectors = [vector[..., : fault.dim_delta] for vector in vectors]
    if fault.bad_value is not None and vectors and vectors[0].size:
        first = vectors[0].copy()
        first.flat[0] = fault.bad_value
        vectors = [first, *vectors[1:]]
    return vectors


def _alter_data(data: list[dict[str, Any]], fault: Fault) -> list[dict[str, Any]]:
    if fault.count_delta < 0:
        data = data[: max(0, len(data) + fault.count_delta)]
    elif fault.count_delta > 0 and data:
        last = data[-1]
        data = data + [{**last, "index": len(data) + extra} for extra in range(fault.count_delta)]
    if fault.duplicate_index and len(data) >= 2:
        data[1] = {**data[1], "index": data[0]["index"]}
    if fault.missing_index and data:
        data[-1] = {**data[-1], "index": len(data)}
    return data
