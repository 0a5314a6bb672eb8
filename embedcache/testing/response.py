"""The success body of ``POST /v1/embeddings``, and the data-level faults applied to it."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from .faults import Fault
from .validation import EmbeddingRequest
from .vectors import compute_vectors, content_seed, encode

__all__ = ["embeddings_payload", "request_vectors"]

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


def embeddings_payload(
    request: EmbeddingRequest, fault: Fault | None, float_style: str = "float64"
) -> dict[str, Any]:
    """The response object (key order as in the docs' capture), mangled by ``fault``, with
    ``float`` values written in ``float_style``."""
    vectors = request_vectors(request)
    if fault is not None:
        vectors = _alter_vectors(vectors, fault)
    short = fault is not None and fault.bad_base64
    data: list[dict[str, Any]] = []
    for index, vector in enumerate(vectors):
        if request.types_as_dict:
            embedding: Any = {
                kind: encode(vector, kind, short_base64=short, float_style=float_style)
                for kind in request.embedding_types
            }
        else:
            kind = request.embedding_types[0]
            embedding = encode(vector, kind, short_base64=short, float_style=float_style)
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    if fault is not None:
        data = _alter_data(data, fault)
    tokens = request.tokens
    return {
        "model": request.spec.name,
        "object": "list",
        "usage": {"total_tokens": tokens, "prompt_tokens": tokens},
        "data": data,
    }


def _alter_vectors(vectors: list[NDArray[np.float32]], fault: Fault) -> list[NDArray[np.float32]]:
    if fault.dim_delta > 0:
        pad = np.full(fault.dim_delta, _PAD_VALUE, dtype=np.float32)
        vectors = [np.concatenate([vector, pad]) for vector in vectors]
    elif fault.dim_delta < 0:
        vectors = [vector[: fault.dim_delta] for vector in vectors]
    if fault.bad_value is not None and vectors and vectors[0].size:
        first = vectors[0].copy()
        first[0] = fault.bad_value
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
