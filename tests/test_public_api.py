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
    for name in embedcache.__all__:
        assert hasattr(embedcache, name)
