"""Planning the requests for a call's misses, and judging what comes back.

Pure functions of their arguments, kept apart from the orchestration in
:mod:`embedcache.embedding.embedder` so each can be read, and tested, on its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError, ResponseFormatError
from ..models import RequestOptions
from ..tokens import estimate_tokens
from ..upstream.protocol import UpstreamResult

__all__ = ["Miss", "check_lengths", "plan_batches", "validated"]


@dataclass(frozen=True)
class Miss:
    """A distinct text that has to be fetched."""

    key: bytes
    text: str
    index: int  # a position of this text in the caller's list, for error messages
    slot: int  # row in the matrix of distinct texts


def check_lengths(misses: list[Miss], options: RequestOptions) -> None:
    """Refuse, before any request, a text the model's per-input limit cannot take.

    :raises InvalidInputError: naming the text's position and its estimated length.
    """
    spec = options.spec
    limit = spec.max_input_tokens if spec else None
    if limit is None or options.truncate:
        return
    for miss in misses:
        # Every estimated token spans at least one character: skip the estimate when the
        # text cannot exceed the limit.
        if len(miss.text) > limit and (tokens := estimate_tokens(miss.text)) > limit:
            raise InvalidInputError(
                f"texts[{miss.index}] is about {tokens} tokens, over the {limit}-token "
                f"limit of {options.model}; shorten it or pass truncate=True"
            )


def plan_batches(
    misses: list[Miss], options: RequestOptions, batch_size: int | None, max_tokens: int
) -> Iterator[list[Miss]]:
    """Split misses into requests of at most ``batch_size`` texts (capped by the model's
    limit) and ``max_tokens`` estimated tokens; a late-chunking group is one request."""
    if options.late_chunking:
        yield misses
        return
    size = min(batch_size or options.max_items, options.max_items)
    batch: list[Miss] = []
    tokens = 0
    for miss in misses:
        cost = estimate_tokens(miss.text)
        if batch and (len(batch) == size or tokens + cost > max_tokens):
            yield batch
            batch, tokens = [], 0
        batch.append(miss)
        tokens += cost
    if batch:
        yield batch


def validated(
    result: UpstreamResult, count: int, options: RequestOptions, known_dim: int | None
) -> NDArray[np.float32]:
    """The vectors of a batch's result, if they can be trusted: one per text, of the
    expected dimension, all finite.

    :raises ResponseFormatError: otherwise; nothing of the batch may then be cached.
    """
    vectors = result.vectors
    where = f" (request id {result.request_id})" if result.request_id else ""
    if vectors.ndim != 2 or vectors.shape[0] != count:
        raise ResponseFormatError(
            f"sent {count} texts but received {vectors.shape[0]} embeddings{where}"
        )
    expected = options.expected_dim or known_dim
    if expected is not None and vectors.shape[1] != expected:
        raise ResponseFormatError(
            f"received {vectors.shape[1]}-dimensional embeddings, expected {expected}{where}"
        )
    if vectors.shape[1] == 0:
        raise ResponseFormatError(f"received empty embeddings{where}")
    if not np.isfinite(vectors).all():
        raise ResponseFormatError(f"received NaN or infinite values{where}")
    return vectors.astype(np.float32, copy=False)
