"""``JinaEmbeddingFunction``: pymilvus's class of the same name, with a disk cache in front."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from ..assembly import Assembly, CacheSettings
from ..config import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MODEL,
    DEFAULT_REDIS_PREFIX,
    DEFAULT_TASK,
    DEFAULT_TIMEOUT_SECONDS,
    resolve_offline,
)
from ..embedding.counters import Stats
from ..models import RequestOptions, resolve_options
from ..upstream.limiter import resolve_limits
from ..upstream.protocol import Upstream

__all__ = ["JinaEmbeddingFunction"]


class JinaEmbeddingFunction:
    """A drop-in for ``pymilvus.model.dense.JinaEmbeddingFunction`` that caches on disk.

    The first five parameters and their defaults are pymilvus's; so are ``encode_documents``
    (task ``retrieval.passage``), ``encode_queries`` (``retrieval.query``), ``__call__`` (the
    configured task) and ``dim``. Unlike pymilvus it returns float32 arrays (what the API
    computes), batches and retries, and needs an API key only when something is not cached.

    For jina-embeddings-v3, ``task="clustering"`` (the Milvus docs' name) is sent as
    ``separation`` (the API's name) and shares its cache entries. Models without a task
    field (v2, clip-v1) get no task. Unknown models pass through unvalidated.

    :param model_name: Jina model id.
    :param api_key: Jina API key; else ``JINAAI_API_KEY``, else ``JINA_API_KEY``. Never
        written to disk, logs or ``repr``.
    :param task: task for ``__call__``.
    :param dimensions: Matryoshka size; ``None`` sends none (the model's native size).
    :param late_chunking: embed each call's list as one late-chunking group; its vectors are
        cached under the whole ordered list, so only the same list in the same order hits.
    :param cache_dir: cache directory; else ``EMBEDCACHE_DIR``, else the user cache dir.
    :param base_url: API root; else ``EMBEDCACHE_BASE_URL``, else ``https://api.jina.ai``.
    :param batch_size: most texts per request (default: the model's limit, 2048 or 512).
    :param max_batch_tokens: most estimated tokens per request.
    :param max_concurrency: most requests in flight.
    :param offline: raise :class:`~embedcache.CacheMissError` on any miss; default from
        ``EMBEDCACHE_OFFLINE``.
    :param normalized: send ``normalized`` (``None``: leave it to the API, which normalises).
    :param truncate: send ``truncate`` (``None``: leave it out; too-long texts are errors).
    :param size_limit: evict oldest-stored entries above this many bytes of vectors, from now
        on for every user of the directory; ``0`` removes the limit; ``None`` (the default)
        keeps the directory's setting (a new cache has none).
    :param timeout: seconds to wait for each response.
    :param max_attempts: attempts per request for retryable failures.
    :param upstream: embed misses with this instead of the Jina API (tests, proxies).
    :param redis_url: a Redis (or Valkey) cache shared with other machines, read after the
        local cache and written with it; else ``EMBEDCACHE_REDIS_URL``, else none. Needs the
        ``redis`` extra.
    :param redis_prefix: key namespace in that Redis, so several teams can share one.
    :param redis_ttl: seconds each shared entry lives; ``None``: until Redis evicts it.
    :param tier: pace requests to a Jina account tier's limits (``"free"``, ``"1"``,
        ``"2"``); else ``EMBEDCACHE_TIER``, else no pacing. Every client of the process
        configured alike shares one limiter.
    :param rpm: requests per minute to stay under (overrides the tier; ``EMBEDCACHE_RPM``).
    :param tpm: tokens per minute to stay under (overrides the tier; ``EMBEDCACHE_TPM``).
    :raises InvalidInputError: for options the model does not take, before any request.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        api_key: str | None = None,
        task: str = DEFAULT_TASK,
        dimensions: int | None = None,
        late_chunking: bool | None = False,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        base_url: str | None = None,
        batch_size: int | None = None,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        offline: bool | None = None,
        normalized: bool | None = None,
        truncate: bool | None = None,
        size_limit: int | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        upstream: Upstream | None = None,
        redis_url: str | None = None,
        redis_prefix: str = DEFAULT_REDIS_PREFIX,
        redis_ttl: int | None = None,
        tier: str | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        **kwargs: object,
    ) -> None:
        if kwargs:
            # pymilvus accepts and ignores extra keyword arguments; say so instead of hiding it.
            warnings.warn(
                f"JinaEmbeddingFunction ignores unknown arguments: {', '.join(sorted(kwargs))}",
                stacklevel=2,
            )
        self.model_name = model_name
        self.task = task
        self._dimensions = dimensions
        self._late_chunking = bool(late_chunking)
        self._normalized = normalized
        self._truncate = truncate
        self._options: dict[str | None, RequestOptions] = {}
        self._call_options = self._options_for(task)
        self._parts = Assembly(
            CacheSettings(
                cache_dir=cache_dir,
                size_limit=size_limit,
                base_url=base_url,
                api_key=api_key,
                timeout=timeout,
                max_attempts=max_attempts,
                limits=resolve_limits(tier=tier, rpm=rpm, tpm=tpm),
                redis_url=redis_url,
                redis_prefix=redis_prefix,
                redis_ttl=redis_ttl,
                offline=resolve_offline(offline),
                batch_size=batch_size,
                max_batch_tokens=max_batch_tokens,
                max_concurrency=max_concurrency,
            ),
            upstream=upstream,
        )
        try:
            self._embedder = self._parts.embedder
        except BaseException:
            self._parts.close()
            raise

    def __repr__(self) -> str:
        options = self._call_options
        return (
            f"JinaEmbeddingFunction(model_name={self.model_name!r}, task={self.task!r}, "
            f"dimensions={options.dimensions!r}, late_chunking={options.late_chunking!r}, "
            f"cache_dir={str(self._parts.store.directory)!r})"
        )

    def __enter__(self) -> JinaEmbeddingFunction:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release threads, the connection pool and the database connection."""
        self._parts.close()

    @property
    def stats(self) -> Stats:
        """Hits, misses, requests and tokens since this object was created."""
        return self._embedder.stats

    @property
    def cache_dir(self) -> str:
        """The cache directory in use."""
        return str(self._parts.store.directory)

    @property
    def dim(self) -> int:
        """The configured ``dimensions``, else the model's native size. For a model
        embedcache does not know, one empty text is embedded (once; then cached)."""
        known = self._call_options.expected_dim
        return known if known is not None else int(self.embed([""]).shape[1])

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed with the configured task into one ``(len(texts), d)`` float32 array."""
        return self._embedder.embed(texts, self._call_options)

    def embed_documents(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed documents (task ``retrieval.passage``) into one ``(n, d)`` array."""
        spec = self._call_options.spec
        return self._embedder.embed(
            texts, self._options_for(spec.passage_task if spec else "retrieval.passage")
        )

    def embed_queries(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed queries (task ``retrieval.query``) into one ``(n, d)`` array."""
        spec = self._call_options.spec
        return self._embedder.embed(
            texts, self._options_for(spec.query_task if spec else "retrieval.query")
        )

    def encode_documents(self, documents: list[str]) -> list[NDArray[np.float32]]:
        """pymilvus API: one 1-D float32 array per document, in input order."""
        return list(self.embed_documents(documents))

    def encode_queries(self, queries: list[str]) -> list[NDArray[np.float32]]:
        """pymilvus API: one 1-D float32 array per query, in input order."""
        return list(self.embed_queries(queries))

    def __call__(self, texts: list[str]) -> list[NDArray[np.float32]]:
        """pymilvus API: embed with the configured task."""
        return list(self.embed(texts))

    def _options_for(self, task: str | None) -> RequestOptions:
        options = self._options.get(task)
        if options is None:
            options = self._options[task] = resolve_options(
                self.model_name,
                task,
                self._dimensions,
                late_chunking=self._late_chunking,
                normalized=self._normalized,
                truncate=self._truncate,
            )
        return options
