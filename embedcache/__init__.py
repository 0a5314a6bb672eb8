"""embedcache: a content-addressed disk cache in front of the Jina AI embeddings API.

>>> from embedcache import JinaEmbeddingFunction   # instead of pymilvus.model.dense
>>> ef = JinaEmbeddingFunction("jina-embeddings-v3")  # doctest: +SKIP
>>> vectors = ef.encode_documents(["a text", "another"])  # doctest: +SKIP

Repeated texts come from disk; only misses reach the API, deduplicated and batched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import VERSION as __version__
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

# numpy, httpx and diskcache take ~100 ms to import: load the classes that need them on
# first use, so `import embedcache` and the CLI's --help stay quick.
_LAZY = {
    "CachedEmbedder": "embedder",
    "Stats": "embedder",
    "JinaEmbeddingFunction": "function",
    "JinaClient": "jina",
    "Limits": "limiter",
    "RateLimiter": "limiter",
    "RequestOptions": "models",
    "resolve_options": "models",
    "Store": "store",
    "Upstream": "upstream",
    "UpstreamResult": "upstream",
}

if TYPE_CHECKING:
    from .embedder import CachedEmbedder, Stats
    from .function import JinaEmbeddingFunction
    from .jina import JinaClient
    from .limiter import Limits, RateLimiter
    from .models import RequestOptions, resolve_options
    from .store import Store
    from .upstream import Upstream, UpstreamResult


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'embedcache' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


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
    "Limits",
    "RateLimitError",
    "RateLimiter",
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
