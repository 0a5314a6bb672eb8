"""The composition root: where a cache's parts are built, wired together and closed.

The library (:class:`~embedcache.function.JinaEmbeddingFunction`), every CLI
command and the proxy describe what they want as :class:`CacheSettings` and get an
:class:`Assembly`: the disk store, the shared tier, the Jina client (paced by the process's
rate limiter) and the caching core on top. The assembly owns what it opened and closes it
in reverse order; an upstream passed in belongs to the caller and is left open.

Nothing else in the package builds the caching core's parts (``tests/test_layering.py``
checks it): :func:`build_embedder` makes the tiers, the coalescing registry, the scheduler
and the counters, and joins the process's :data:`~embedcache.embedding.counters.AUTOFLUSH`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from .config import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_REDIS_PREFIX,
    DEFAULT_REDIS_TIMEOUT_SECONDS,
    DEFAULT_RERANK_BATCH_SIZE,
    DEFAULT_TIMEOUT_SECONDS,
    DEFAULT_UPSTREAM_ID,
    REDIS_MAINTENANCE_TIMEOUT_SECONDS,
    resolve_offline,
    resolve_upstream_id,
)
from .embedding.batches import Miss
from .embedding.coalescing import Inflight
from .embedding.counters import AUTOFLUSH, Autoflush, Counters, Recorder
from .embedding.embedder import CachedEmbedder
from .embedding.fetching import Fetcher
from .embedding.reranker import Reranker
from .embedding.scheduler import BatchScheduler
from .storage.shared import RedisStore, open_shared
from .storage.store import Store
from .storage.tiers import Tiers
from .storage.writeback import WriteBack
from .upstream.jina import JinaClient
from .upstream.limiter import Limits, resolve_limits, shared_limiter
from .upstream.protocol import Reranks, Upstream, UpstreamResult

__all__ = ["Assembly", "CacheSettings", "build_embedder", "build_reranker", "library_settings"]

_P = TypeVar("_P")


@runtime_checkable
class _Reranking(Protocol):
    """A given upstream that can rerank too (a test's or a proxy's stand-in)."""

    def rerank(self, query: Any, documents: Any, model: str) -> Any: ...


@dataclass(frozen=True)
class CacheSettings:
    """How to build a cache and its upstream; every field has the library's default.

    :param cache_dir: cache directory (``None``: ``EMBEDCACHE_DIR`` or the user cache dir).
    :param size_limit: see :class:`~embedcache.storage.store.Store`.
    :param base_url: API root (``None``: ``EMBEDCACHE_BASE_URL`` or Jina's).
    :param upstream_as: cache the answers as this upstream's (a URL, or a name), declaring
        the base URL equivalent to it, e.g. a gateway in front of ``https://api.jina.ai``
        (``None``: ``EMBEDCACHE_UPSTREAM_AS``, else the base URL itself).
    :param api_key: the key misses are paid with (``None``: ``JINAAI_API_KEY`` /
        ``JINA_API_KEY``, read at the first miss). Never shown in ``repr``.
    :param timeout: seconds to wait for each response.
    :param max_attempts: attempts per request for retryable failures.
    :param limits: the account's rate limits, shared by every client in the process.
    :param redis_url: the shared tier (``None``: ``EMBEDCACHE_REDIS_URL``, else none).
    :param redis_prefix: key namespace in that Redis.
    :param redis_ttl: seconds each shared entry lives; ``None``: until Redis evicts it.
    :param shared_strict: Redis is the point of the work (sync, stats, verify): a failing
        Redis raises :class:`~embedcache.errors.SharedCacheError` after a longer timeout
        instead of the embedding path's fallback to local disk.
    :param offline: raise on any miss instead of fetching.
    :param batch_size: most texts per request (``None``: the model's limit).
    :param max_batch_tokens: most estimated tokens per request.
    :param max_concurrency: most requests one embedder has in flight at once.
    :param coalesce: let concurrent calls share one fetch of the same entries.
    :param rerank_batch_size: most documents per rerank request of a pointwise model.
    """

    cache_dir: str | os.PathLike[str] | None = None
    size_limit: int | None = None
    base_url: str | None = None
    upstream_as: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    limits: Limits = field(default_factory=Limits)
    redis_url: str | None = None
    redis_prefix: str = DEFAULT_REDIS_PREFIX
    redis_ttl: int | None = None
    shared_strict: bool = False
    offline: bool = False
    batch_size: int | None = None
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    coalesce: bool = True
    rerank_batch_size: int = DEFAULT_RERANK_BATCH_SIZE


def library_settings(
    api_key: str | None,
    *,
    tier: str | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    offline: bool | None = None,
    **fields: Any,
) -> CacheSettings:
    """The :class:`CacheSettings` of the library's keyword arguments (the classes of
    :mod:`embedcache.function` and :mod:`embedcache.rerank_function` take the same words):
    the rate limits from ``tier``/``rpm``/``tpm`` and the environment, ``offline`` from
    ``EMBEDCACHE_OFFLINE`` when ``None``, the rest as :class:`CacheSettings` names them.

    :raises InvalidInputError: an unknown tier, limits that are not positive.
    """
    return CacheSettings(
        api_key=api_key,
        limits=resolve_limits(tier=tier, rpm=rpm, tpm=tpm),
        offline=resolve_offline(offline),
        **fields,
    )


class Assembly:
    """A cache's parts, built from ``settings``: the store when the assembly is made (a
    bad directory fails at once), the rest on first use, so a command that only reads the
    store never builds a client.

    :param upstream: embed misses with this instead of a Jina client (tests, fault
        injection); it is not closed with the assembly.
    """

    def __init__(self, settings: CacheSettings, *, upstream: Upstream | None = None) -> None:
        self.settings = settings
        self._given_upstream = upstream
        self._closers: list[Callable[[], None]] = []
        self._closed = False
        self.store = self._opened(
            Store(settings.cache_dir, size_limit=settings.size_limit), Store.close
        )

    def __enter__(self) -> Assembly:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Assembly({self.settings!r})"

    @functools.cached_property
    def client(self) -> JinaClient:
        """The Jina client this assembly sends with (its own, even when an upstream was
        given: the proxy forwards requests the cache cannot answer through it)."""
        s = self.settings
        client = JinaClient(
            s.api_key,
            base_url=s.base_url,
            timeout=s.timeout,
            max_attempts=s.max_attempts,
            limiter=shared_limiter(s.limits),
        )
        return self._opened(client, JinaClient.close)

    @property
    def upstream(self) -> Upstream:
        """Where misses are sent: the given upstream, else :attr:`client`."""
        return self._given_upstream if self._given_upstream is not None else self.client

    @functools.cached_property
    def upstream_id(self) -> str:
        """The upstream this cache's entries are fetched from and looked up as: part of every
        key, so one upstream's vectors are never another's hits."""
        return resolve_upstream_id(self.settings.base_url, self.settings.upstream_as)

    @functools.cached_property
    def shared(self) -> RedisStore | None:
        """The shared Redis tier, or ``None`` when no URL is configured."""
        s = self.settings
        shared = open_shared(
            s.redis_url,
            prefix=s.redis_prefix,
            ttl=s.redis_ttl,
            timeout=(
                REDIS_MAINTENANCE_TIMEOUT_SECONDS
                if s.shared_strict
                else DEFAULT_REDIS_TIMEOUT_SECONDS
            ),
            strict=s.shared_strict,
        )
        return self._opened(shared, RedisStore.close) if shared is not None else None

    @functools.cached_property
    def embedder(self) -> CachedEmbedder:
        """The caching core over the store, the shared tier and the upstream."""
        s = self.settings
        embedder = build_embedder(
            self.store,
            self.upstream,
            shared=self.shared,
            upstream_id=self.upstream_id,
            offline=s.offline,
            batch_size=s.batch_size,
            max_batch_tokens=s.max_batch_tokens,
            max_concurrency=s.max_concurrency,
            coalesce=s.coalesce,
        )
        return self._opened(embedder, CachedEmbedder.close)

    @functools.cached_property
    def reranker(self) -> Reranker:
        """The rerank scores' cache over the same store, shared tier, client and lifetime
        counters as :attr:`embedder`; its misses go to the given upstream when that can
        rerank, else to :attr:`client`."""
        s = self.settings
        given = self._given_upstream
        upstream: Reranks = given if isinstance(given, _Reranking) else self.client
        reranker = build_reranker(
            self.store,
            upstream,
            shared=self.shared,
            upstream_id=self.upstream_id,
            offline=s.offline,
            batch_size=s.rerank_batch_size,
            coalesce=s.coalesce,
        )
        return self._opened(reranker, Reranker.close)

    def close(self) -> None:
        """Close everything this assembly opened, last opened first (idempotent): the
        embedder finishes its batches and records its counters before the store closes."""
        if self._closed:
            return
        self._closed = True
        while self._closers:
            self._closers.pop()()

    def _opened(self, part: _P, close: Callable[[_P], None]) -> _P:
        self._closers.append(functools.partial(close, part))
        return part


def build_embedder(
    store: Store,
    upstream: Upstream,
    *,
    shared: RedisStore | None = None,
    upstream_id: str = DEFAULT_UPSTREAM_ID,
    offline: bool = False,
    batch_size: int | None = None,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    coalesce: bool = True,
    autoflush: Autoflush | None = AUTOFLUSH,
) -> CachedEmbedder:
    """A :class:`~embedcache.embedding.embedder.CachedEmbedder` over ``store`` (and
    ``shared``), sending misses to ``upstream``, its parts built here. Close it when done
    (the store, the shared tier and the upstream stay the caller's).

    :param shared: a Redis tier shared with other machines, read after the local store and
        written with it; what it serves is copied to ``store`` unless that is read-only.
    :param upstream_id: the upstream ``upstream``'s answers are cached as, part of every key.
    :param offline: raise :class:`~embedcache.errors.CacheMissError` instead of fetching.
    :param batch_size: most texts per request (``None``: the model's limit).
    :param max_batch_tokens: most estimated tokens per request.
    :param max_concurrency: most upstream requests in flight at once, shared by all calls.
    :param coalesce: let concurrent calls, in this process and others sharing the
        directory, wait for each other's fetches of the same entries; off, no claims.
    :param autoflush: records the counters now and then and at exit without ``close()``
        (the process's own by default); ``None``: only after each fill and on close.
    :raises InvalidInputError: ``batch_size`` or ``max_concurrency`` below 1.
    """
    writeback = WriteBack(store) if shared is not None and not store.read_only else None
    tiers = Tiers(store, shared, writeback)
    scheduler: BatchScheduler[list[Miss], UpstreamResult] = BatchScheduler(max_concurrency)
    counters = Counters()
    fetcher = Fetcher(
        tiers,
        scheduler,
        counters,
        inflight=Inflight(store.claims) if coalesce else None,
        offline=offline,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
    )
    recorder = Recorder(counters, store.add_counters)
    return CachedEmbedder(
        tiers, fetcher, recorder, upstream, autoflush=autoflush, upstream_id=upstream_id
    )


def build_reranker(
    store: Store,
    upstream: Reranks | None,
    *,
    shared: RedisStore | None = None,
    upstream_id: str = DEFAULT_UPSTREAM_ID,
    offline: bool = False,
    batch_size: int = DEFAULT_RERANK_BATCH_SIZE,
    coalesce: bool = True,
    autoflush: Autoflush | None = AUTOFLUSH,
) -> Reranker:
    """A :class:`~embedcache.embedding.reranker.Reranker` over ``store`` (and ``shared``),
    sending misses to ``upstream``, its parts built here as :func:`build_embedder` builds
    an embedder's: its counters reach the same lifetime counters (``store.add_counters``),
    its claims the same directory's. Close it when done.

    :param batch_size: most documents per request of a pointwise model.
    :raises InvalidInputError: ``batch_size`` below 1.
    """
    writeback = WriteBack(store) if shared is not None and not store.read_only else None
    recorder = Recorder(Counters(), store.add_counters)
    return Reranker(
        Tiers(store, shared, writeback),
        recorder,
        upstream,
        inflight=Inflight(store.claims) if coalesce else None,
        offline=offline,
        batch_size=batch_size,
        upstream_id=upstream_id,
        autoflush=autoflush,
    )
