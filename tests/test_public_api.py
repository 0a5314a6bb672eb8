from __future__ import annotations

import embedcache


def test_public_surface_is_pinned() -> None:
    assert sorted(embedcache.__all__) == embedcache.__all__
    assert embedcache.__all__ == [
        "APIError",
        "AuthenticationError",
        "CacheError",
        "CacheFormatError",
        "CacheMissError",
        "EmbedcacheError",
        "InvalidInputError",
        "JinaEmbeddingFunction",
        "JinaRerankFunction",
        "Media",
        "MissingDependencyError",
        "RateLimitError",
        "RequestOptions",
        "RerankResult",
        "ResponseFormatError",
        "SharedCacheError",
        "Stats",
        "TransportError",
        "Upstream",
        "UpstreamResult",
        "__version__",
        "resolve_options",
    ]
    for name in embedcache.__all__:
        assert hasattr(embedcache, name)


# What earlier versions listed in __all__: the package's parts, and the records their
# methods return. No longer the public API, but code that imported them keeps working.
EARLIER_NAMES = [
    "Assembly", "CacheSettings", "CachedEmbedder", "Claimed", "Claims", "Clock",
    "DistinctKeys", "Embedded", "Fingerprint", "Forwarded", "Found", "JinaClient", "Limits",
    "ModelSpec", "Permit", "RateLimiter", "Record", "RedisStore", "Stored", "Store", "Usage",
    "WarmReport", "open_shared", "shared_limiter",
]  # fmt: skip


def test_internals_are_not_exported_but_earlier_imports_still_work() -> None:
    for name in EARLIER_NAMES:
        assert name not in embedcache.__all__
        value = getattr(embedcache, name)
        assert value.__module__.startswith("embedcache."), name


def test_the_front_door_has_a_module_of_its_own_and_the_milvus_path_still_imports_it() -> None:
    from embedcache.function import JinaEmbeddingFunction
    from embedcache.integrations.milvus import JinaEmbeddingFunction as old_path

    assert embedcache.JinaEmbeddingFunction is JinaEmbeddingFunction is old_path
    assert JinaEmbeddingFunction.__module__ == "embedcache.function"
