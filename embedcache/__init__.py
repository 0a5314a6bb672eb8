"""embedcache: a content-addressed disk cache in front of the Jina AI embeddings API.

>>> from embedcache import JinaEmbeddingFunction   # instead of pymilvus.model.dense
>>> ef = JinaEmbeddingFunction("jina-embeddings-v3")  # doctest: +SKIP
>>> vectors = ef.encode_documents(["a text", "another"])  # doctest: +SKIP

Repeated texts come from disk; only misses reach the API, deduplicated and batched.
"""

from __future__ import annotations

from .config import VERSION as __version__
from .embedder import CachedEmbedder, Stats
from .errors import (
    APIError,
    AuthenticationError,
    CacheError,
    CacheFormatError,
    CacheMissError,
    EmbedcacheError,
    InvalidInputError,
    RateLimitError,
    ResponseFormatError,
    TransportError,
)
from .function import JinaEmbeddingFunction
from .jina import JinaClient
from .models import RequestOptions, resolve_options
from .store import Store
from .upstream import Upstream, UpstreamResult

__all__ = [
    "APIError",
    "AuthenticationError",
    "CacheError",
    "CacheFormatError",
    "CacheMissError",
    "CachedEmbedder",
    "EmbedcacheError",
    "InvalidInputError",
    "JinaClient",
    "JinaEmbeddingFunction",
    "RateLimitError",
    "RequestOptions",
    "ResponseFormatError",
    "Stats",
    "Store",
    "TransportError",
    "Upstream",
    "UpstreamResult",
    "__version__",
    "resolve_options",
]
