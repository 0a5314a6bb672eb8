"""What the caching core needs from an embedding service: one call per batch.

The Jina HTTP client implements it; tests pass plain objects to inject faults, and the CLI
and proxy reuse the same core with whatever upstream they are given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from ..inputs import Input
from ..models import RequestOptions

__all__ = ["Upstream", "UpstreamResult"]


@dataclass(frozen=True)
class UpstreamResult:
    """One batch as the service returned it.

    :ivar vectors: ``(len(texts), d)`` float32, row ``i`` for ``texts[i]``.
    :ivar total_tokens: the ``usage.total_tokens`` the service charged for the batch.
    :ivar request_id: the service's id for the request, when it gave one.
    """

    vectors: NDArray[np.float32]
    total_tokens: int
    request_id: str | None = None


class Upstream(Protocol):
    """Embeds one batch. Implementations retry what is worth retrying and raise an
    :class:`~embedcache.errors.EmbedcacheError` for the rest."""

    def embed(self, texts: Sequence[Input], options: RequestOptions) -> UpstreamResult: ...
