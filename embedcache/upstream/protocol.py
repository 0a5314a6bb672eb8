"""What the caching core needs from an embedding service: one call per batch (and, for
rerank scores, one call per list of documents: :class:`Reranks`).

The Jina HTTP client implements it; tests pass plain objects to inject faults, and the CLI
and proxy reuse the same core with whatever upstream they are given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from ..inputs import Input
from ..models import RequestOptions

__all__ = ["RerankInput", "Reranks", "Upstream", "UpstreamResult", "UpstreamScores"]

#: A rerank query or document: a text, or an image (jina-reranker-m0 only).
RerankInput = Input


@dataclass(frozen=True)
class UpstreamResult:
    """One batch as the service returned it.

    :ivar vectors: ``(len(texts), d)`` float32, row ``i`` for ``texts[i]`` (empty when the
        answer is ``payloads``).
    :ivar total_tokens: the ``usage.total_tokens`` the service charged for the batch.
    :ivar request_id: the service's id for the request, when it gave one.
    :ivar payloads: for options that are not :attr:`~embedcache.models.RequestOptions.plain`
        (multi-vector, ``binary``/``ubinary``): item ``i``'s answer for ``texts[i]``, a 2-D
        float32 ``(rows, width)`` array, or a 1-D/2-D int8/uint8 array of packed bits.
    """

    vectors: NDArray[np.float32]
    total_tokens: int
    request_id: str | None = None
    payloads: list[NDArray[Any]] | None = None


class Upstream(Protocol):
    """Embeds one batch. Implementations retry what is worth retrying and raise an
    :class:`~embedcache.errors.EmbedcacheError` for the rest."""

    def embed(self, texts: Sequence[Input], options: RequestOptions) -> UpstreamResult: ...


@dataclass(frozen=True)
class UpstreamScores:
    """One rerank request's answer.

    :ivar scores: one per document, in document order (not the answer's order by score),
        the JSON numbers as parsed (float64).
    :ivar total_tokens: the ``usage.total_tokens`` the service charged for the request.
    :ivar request_id: the service's id for the request, when it gave one.
    """

    scores: list[float]
    total_tokens: int
    request_id: str | None = None


class Reranks(Protocol):
    """Scores every document of one request for ``query`` (all of them: no ``top_n``).
    Implementations retry what is worth retrying and raise an
    :class:`~embedcache.errors.EmbedcacheError` for the rest; a malformed answer is a
    :class:`~embedcache.errors.ResponseFormatError`."""

    def rerank(
        self, query: RerankInput, documents: Sequence[RerankInput], model: str
    ) -> UpstreamScores: ...
