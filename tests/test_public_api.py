from __future__ import annotations

import embedcache


def test_public_surface_is_pinned() -> None:
    assert sorted(embedcache.__all__) == embedcache.__all__
    assert embedcache.__all__ == [
        "APIError",
        "Assembly",
        "AuthenticationError",
        "CacheError",
        "CacheFormatError",
        "CacheMissError",
        "CacheSettings",
        "CachedEmbedder",
        "Claimed",
        "Claims",
        "Clock",
        "DistinctKeys",
        "EmbedcacheError",
        "Embedded",
        "Fingerprint",
        "Forwarded",
        "Found",
        "InvalidInputError",
        "JinaClient",
        "JinaEmbeddingFunction",
        "Limits",
        "MissingDependencyError",
        "ModelSpec",
        "Permit",
        "RateLimitError",
        "RateLimiter",
        "Record",
        "RedisStore",
        "RequestOptions",
        "ResponseFormatError",
        "SharedCacheError",
        "Stats",
        "Store",
        "Stored",
        "TransportError",
        "Upstream",
        "UpstreamResult",
        "Usage",
        "WarmReport",
        "__version__",
        "open_shared",
        "resolve_options",
        "shared_limiter",
    ]
    for name in embedcache.__all__:
        assert hasattr(embedcache, name)
