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
    "JinaEmbeddingFunction": "function",
    "JinaRerankFunction": "rerank_function",
    "RerankResult": "rerank_function",
    "Media": "inputs",
    "RequestOptions": "models",
    "resolve_options": "models",
    "Stats": "embedding.counters",
    "Upstream": "upstream.protocol",
    "UpstreamResult": "upstream.protocol",
}
# The package's parts, importable from here by code written against earlier versions, which
# listed them in __all__; they are not the public API (the modules that define them are
# the place to import them from, docs/architecture.md maps them).
_PARTS = {
    "Assembly": "assembly",
    "CacheSettings": "assembly",
    "CachedEmbedder": "embedding.embedder",
    "Claimed": "storage.claims",
    "Claims": "storage.claims",
    "DistinctKeys": "embedding.distinct",
    "Embedded": "embedding.embedder",
    "WarmReport": "embedding.embedder",
    "Fingerprint": "cache_keys",
    "Forwarded": "upstream.jina",
    "JinaClient": "upstream.jina",
    "Clock": "upstream.limiter",
    "Limits": "upstream.limiter",
    "Permit": "upstream.limiter",
    "RateLimiter": "upstream.limiter",
    "shared_limiter": "upstream.limiter",
    "ModelSpec": "models",
    "Found": "storage.store",
    "Record": "storage.store",
    "Store": "storage.store",
    "Stored": "storage.store",
    "RedisStore": "storage.shared",
    "Usage": "storage.shared",
    "open_shared": "storage.shared",
}

if TYPE_CHECKING:
    # The parts are re-exported for type checkers too ("X as X"), outside __all__.
    from .assembly import Assembly as Assembly
    from .assembly import CacheSettings as CacheSettings
    from .cache_keys import Fingerprint as Fingerprint
    from .embedding.counters import Stats
    from .embedding.distinct import DistinctKeys as DistinctKeys
    from .embedding.embedder import CachedEmbedder as CachedEmbedder
    from .embedding.embedder import Embedded as Embedded
    from .embedding.embedder import WarmReport as WarmReport
    from .function import JinaEmbeddingFunction
    from .inputs import Media
    from .models import ModelSpec as ModelSpec
    from .models import RequestOptions, resolve_options
    from .rerank_function import JinaRerankFunction, RerankResult
    from .storage.claims import Claimed as Claimed
    from .storage.claims import Claims as Claims
    from .storage.shared import RedisStore as RedisStore
    from .storage.shared import Usage as Usage
    from .storage.shared import open_shared as open_shared
    from .storage.store import Found as Found
    from .storage.store import Record as Record
    from .storage.store import Store as Store
    from .storage.store import Stored as Stored
    from .upstream.jina import Forwarded as Forwarded
    from .upstream.jina import JinaClient as JinaClient
    from .upstream.limiter import Clock as Clock
    from .upstream.limiter import Limits as Limits
    from .upstream.limiter import Permit as Permit
    from .upstream.limiter import RateLimiter as RateLimiter
    from .upstream.limiter import shared_limiter as shared_limiter
    from .upstream.protocol import Upstream, UpstreamResult


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name) or _PARTS.get(name)
    if module is None:
        raise AttributeError(f"module 'embedcache' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


#: The public API: the front doors (embeddings, reranking), what their signatures use (a
#: custom ``upstream`` gets ``RequestOptions`` and returns an ``UpstreamResult``), and every
#: error.
__all__ = [
    "JinaEmbeddingFunction",
    "JinaRerankFunction",
    "Media",
    "RequestOptions",
    "RerankResult",
    "Stats",
    "Upstream",
    "UpstreamResult",
    "__version__",
    "resolve_options",
]
__all__ += errors.__all__  # every error class, from the one list in errors.py
__all__.sort()
