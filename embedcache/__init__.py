"""embedcache: a content-addressed disk cache in front of the Jina AI embeddings API.

>>> from embedcache import JinaEmbeddingFunction   # instead of pymilvus.model.dense
>>> ef = JinaEmbeddingFunction("jina-embeddings-v3")  # doctest: +SKIP
>>> vectors = ef.encode_documents(["a text", "another"])  # doctest: +SKIP

Repeated texts come from disk; only misses reach the API, deduplicated and batched.
The package map is in ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors
from .config import VERSION as __version__
from .errors import *  # noqa: F403  (the error classes are listed once, in errors.__all__)

# numpy, httpx and diskcache take ~100 ms to import: load the classes that need them on
# first use, so `import embedcache` and the CLI's --help stay quick.
_LAZY = {
    "Assembly": "assembly",
    "CacheSettings": "assembly",
    "CachedEmbedder": "embedding.embedder",
    "Claimed": "storage.claims",
    "Claims": "storage.claims",
    "DistinctKeys": "embedding.distinct",
    "Embedded": "embedding.embedder",
    "WarmReport": "embedding.embedder",
    "Stats": "embedding.embedder",
    "Fingerprint": "cache_keys",
    "Forwarded": "upstream.jina",
    "JinaEmbeddingFunction": "integrations.milvus",
    "JinaClient": "upstream.jina",
    "Clock": "upstream.limiter",
    "Limits": "upstream.limiter",
    "Permit": "upstream.limiter",
    "RateLimiter": "upstream.limiter",
    "shared_limiter": "upstream.limiter",
    "ModelSpec": "models",
    "RequestOptions": "models",
    "resolve_options": "models",
    "Found": "storage.store",
    "Record": "storage.store",
    "Store": "storage.store",
    "Stored": "storage.store",
    "RedisStore": "storage.shared",
    "Usage": "storage.shared",
    "open_shared": "storage.shared",
    "Upstream": "upstream.protocol",
    "UpstreamResult": "upstream.protocol",
}

if TYPE_CHECKING:
    from .assembly import Assembly, CacheSettings
    from .cache_keys import Fingerprint
    from .embedding.distinct import DistinctKeys
    from .embedding.embedder import CachedEmbedder, Embedded, Stats, WarmReport
    from .integrations.milvus import JinaEmbeddingFunction
    from .models import ModelSpec, RequestOptions, resolve_options
    from .storage.claims import Claimed, Claims
    from .storage.shared import RedisStore, Usage, open_shared
    from .storage.store import Found, Record, Store, Stored
    from .upstream.jina import Forwarded, JinaClient
    from .upstream.limiter import Clock, Limits, Permit, RateLimiter, shared_limiter
    from .upstream.protocol import Upstream, UpstreamResult


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'embedcache' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "Assembly",
    "CacheSettings",
    "CachedEmbedder",
    "Claimed",
    "Claims",
    "Clock",
    "DistinctKeys",
    "Embedded",
    "Fingerprint",
    "Forwarded",
    "Found",
    "JinaClient",
    "JinaEmbeddingFunction",
    "Limits",
    "ModelSpec",
    "Permit",
    "RateLimiter",
    "Record",
    "RedisStore",
    "RequestOptions",
    "Stats",
    "Store",
    "Stored",
    "Upstream",
    "UpstreamResult",
    "Usage",
    "WarmReport",
    "__version__",
    "open_shared",
    "resolve_options",
    "shared_limiter",
]
__all__ += errors.__all__  # every error class, from the one list in errors.py
__all__.sort()
