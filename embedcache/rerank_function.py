"""``JinaRerankFunction``, the library's reranker: pymilvus's class of the same name
(``pymilvus.model.reranker.JinaRerankFunction``), with the cache in front
(``from embedcache import JinaRerankFunction``).

Scores are cached per (query, document) for the pointwise models and per whole ordered list
for the listwise ones (:mod:`embedcache.embedding.reranker`); ``top_k`` only cuts the
answer, so another ``top_k`` over the same documents is a hit. Its settings are
:class:`~embedcache.function.JinaEmbeddingFunction`'s, built the same way
(:func:`~embedcache.assembly.library_settings`); its async twin runs the same sync call in
a worker thread (:class:`~embedcache.workers.Workers`).
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import asdict, dataclass
from typing import Any

from .assembly import Assembly, library_settings
from .config import DEFAULT_RERANK_MODEL
from .embedding.counters import Stats
from .embedding.reranker import Reranker, ranked
from .function import settings_of
from .models import check_rerank_model
from .upstream.protocol import Upstream
from .workers import Workers

__all__ = ["JinaRerankFunction", "RerankResult"]

#: :class:`~embedcache.function.JinaEmbeddingFunction`'s settings that shape an embedding
#: request only: a reranker refuses them as Python refuses an unknown keyword.
_EMBEDDING_ONLY = frozenset({"normalized", "truncate", "fetch_images"})


@dataclass(frozen=True)
class RerankResult:
    """One ranked document, with ``pymilvus.model.base.RerankResult``'s fields.

    :ivar text: the document as given.
    :ivar score: its relevance score, exactly as the API wrote it.
    :ivar index: its position in the documents given.
    """

    text: str
    score: float
    index: int

    def to_dict(self) -> dict[str, Any]:
        """``{"text", "score", "index"}``, as pymilvus's ``to_dict``."""
        return asdict(self)


class JinaRerankFunction:
    """A drop-in for ``pymilvus.model.reranker.JinaRerankFunction`` that caches scores.

    The first two parameters and their defaults are pymilvus's, and so are ``__call__`` and
    its result (:class:`RerankResult`: ``text``, ``score``, ``index``, highest score first,
    ties by index). Unlike pymilvus, the key is needed only when something is not cached
    (``api_key``, else ``JINAAI_API_KEY``, else ``JINA_API_KEY``, read at the first miss;
    pymilvus refuses to start without one), and each request scores every missing document
    (``top_n`` is applied here, so any ``top_k`` hits the same entries).

    :param model_name: the Jina reranker (jina-reranker-v2-base-multilingual,
        jina-reranker-m0, jina-colbert-v2: one entry per (query, document);
        jina-reranker-v3 and models not known to be pointwise: one per whole list).
    :param api_key: Jina API key; never written to disk, logs or ``repr``.
    :param base_url: API root; else ``EMBEDCACHE_BASE_URL``, else ``https://api.jina.ai``.
    :param cache_dir: cache directory; else ``EMBEDCACHE_DIR``, else the user cache dir.
    :param offline: raise :class:`~embedcache.CacheMissError` on any miss; default from
        ``EMBEDCACHE_OFFLINE``.
    :param settings: the other keyword-only settings of
        :class:`~embedcache.function.JinaEmbeddingFunction` (``redis_url``, ``tier``,
        ``timeout``, ``upstream_as``, ...); ``batch_size`` is the most documents per
        request (default 64: Jina's own limit is unconfirmed).
    :raises TypeError: a setting it does not take.
    :raises InvalidInputError: a model that is no reranker, before any request.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_RERANK_MODEL,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        offline: bool | None = None,
        **settings: Any,
    ) -> None:
        check_rerank_model(model_name)  # refused now, not at the first call
        options = settings_of(type(self).__name__, settings)
        refused = sorted(_EMBEDDING_ONLY & set(options))
        if refused:
            raise TypeError(
                f"{type(self).__name__}() got an unexpected keyword argument {refused[0]!r}"
            )
        upstream: Upstream | None = options.pop("upstream", None)
        if "batch_size" in options:
            batch = options.pop("batch_size")
            if batch is not None:
                options["rerank_batch_size"] = batch
        self.model_name = model_name
        self._workers = Workers()
        self._parts = Assembly(
            library_settings(
                api_key, base_url=base_url, cache_dir=cache_dir, offline=offline, **options
            ),
            upstream=upstream,
        )
        try:
            self._reranker: Reranker = self._parts.reranker
        except BaseException:
            self._parts.close()
            raise

    def __repr__(self) -> str:
        return (
            f"JinaRerankFunction(model_name={self.model_name!r}, "
            f"cache_dir={str(self._parts.store.directory)!r})"
        )

    def __enter__(self) -> JinaRerankFunction:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release threads, the connection pool and the database connection once the
        calls still running have finished."""
        self._workers.close()
        self._parts.close()

    @property
    def stats(self) -> Stats:
        """Hits, misses, requests and tokens since this object was created."""
        return self._reranker.stats

    @property
    def cache_dir(self) -> str:
        """The cache directory in use."""
        return str(self._parts.store.directory)

    def __call__(
        self, query: str, documents: list[str], top_k: int | None = 5
    ) -> list[RerankResult]:
        """pymilvus API: the ``top_k`` documents (``None``: all) by score, highest first.

        :raises InvalidInputError: an empty query, no documents, an empty document.
        :raises CacheMissError: offline, when any score is missing.
        """
        return self._call(query, documents, top_k)

    async def acall(
        self, query: str, documents: list[str], top_k: int | None = 5
    ) -> list[RerankResult]:
        """:meth:`__call__`, awaited. A cancel sends no new request; answers already on
        their way are committed as they arrive."""
        return await self._workers.run(functools.partial(self._call, query, documents, top_k))

    def rerank_scores(self, query: str, documents: list[str]) -> list[float]:
        """Every document's score, in document order."""
        return self._scores(query, documents)

    async def arerank_scores(self, query: str, documents: list[str]) -> list[float]:
        """:meth:`rerank_scores`, awaited."""
        return await self._workers.run(functools.partial(self._scores, query, documents))

    def _scores(
        self, query: str, documents: list[str], stop: threading.Event | None = None
    ) -> list[float]:
        result = self._reranker.rerank(query, documents, self.model_name, stop=stop)
        assert result is not None  # only cached_only calls come back empty-handed
        return result.scores

    def _call(
        self,
        query: str,
        documents: list[str],
        top_k: int | None,
        stop: threading.Event | None = None,
    ) -> list[RerankResult]:
        scores = self._scores(query, documents, stop)
        return [RerankResult(documents[i], scores[i], i) for i in ranked(scores, top_k)]
