"""``JinaEmbeddings``: a LangChain ``Embeddings`` over the cache (the ``langchain`` extra).

Unlike ``CacheBackedEmbeddings`` (langchain-classic), which keys an entry by its text alone,
documents and queries are embedded with their own tasks and kept apart in the key, so a
query never gets the document vector of the same text; repeats within a call are sent once.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from ..config import DEFAULT_MODEL
from ..embedding.counters import Stats
from ..extras import requires
from ..function import JinaEmbeddingFunction, paired_tasks, settings_of

with requires("langchain"):
    from langchain_core.embeddings import Embeddings

__all__ = ["JinaEmbeddings"]


class _Secret(Protocol):
    def get_secret_value(self) -> str: ...


class JinaEmbeddings(Embeddings):
    """A ``langchain_core.embeddings.Embeddings`` for the Jina API, with embedcache's disk
    cache in front: use it wherever LangChain takes an embeddings object (vector stores,
    retrievers). ``model_name`` and ``jina_api_key`` are the arguments of
    ``langchain_community.embeddings.JinaEmbeddings``; the key may also come from
    ``JINAAI_API_KEY`` or ``JINA_API_KEY``, read only when something is not cached.

    :meth:`embed_documents` embeds with the document task, :meth:`embed_query` with the
    query task, and the two never share an entry. The async methods run the same calls in
    worker threads; a cancelled await sends no new batch and keeps those in flight (see
    :class:`~embedcache.function.JinaEmbeddingFunction`).

    :param model_name: Jina model id (embedcache's default, jina-embeddings-v3, not
        langchain-community's v2: v2 takes no task).
    :param jina_api_key: a ``str`` or a pydantic ``SecretStr``; never written to disk, logs
        or ``repr``.
    :param task: the document task; ``None``: the model's (``retrieval.passage``).
    :param query_task: ``None``: the query side of ``task`` (``retrieval.query`` for
        ``retrieval.passage``; a symmetric task such as ``text-matching`` is used for both).
    :param dimensions: Matryoshka size; ``None``: the model's native size.
    :param late_chunking: embed each ``embed_documents`` list as one late-chunking group.
    :param cache_dir: cache directory; else ``EMBEDCACHE_DIR``, else the user cache dir.
    :param base_url: API root; else ``EMBEDCACHE_BASE_URL``, else ``https://api.jina.ai``.
    :param offline: raise :class:`~embedcache.CacheMissError` on any miss.
    :param options: any other keyword-only option of ``JinaEmbeddingFunction``
        (``batch_size``, ``max_concurrency``, ``redis_url``, ``tier``, ``upstream``, ...).
    :raises InvalidInputError: for a task or size the model does not take, before any
        request.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        jina_api_key: str | _Secret | None = None,
        *,
        task: str | None = None,
        query_task: str | None = None,
        dimensions: int | None = None,
        late_chunking: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        base_url: str | None = None,
        offline: bool | None = None,
        **options: Any,
    ) -> None:
        settings = settings_of(type(self).__name__, options)
        if jina_api_key is not None and not isinstance(jina_api_key, str):
            jina_api_key = jina_api_key.get_secret_value()
        self.model_name = model_name
        self.task, self.query_task = paired_tasks(model_name, task, query_task)
        self._ef = JinaEmbeddingFunction(
            model_name,
            jina_api_key,
            self.task,
            dimensions,
            late_chunking,
            cache_dir=cache_dir,
            base_url=base_url,
            offline=offline,
            **settings,
        )
        try:
            self._ef.options(self.query_task)  # a bad query task fails now, not at a query
        except BaseException:
            self._ef.close()
            raise

    def __repr__(self) -> str:
        return (
            f"JinaEmbeddings(model_name={self.model_name!r}, task={self.task!r}, "
            f"query_task={self.query_task!r}, cache_dir={self._ef.cache_dir!r})"
        )

    def __enter__(self) -> JinaEmbeddings:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the cache and its threads (after any call still committing)."""
        self._ef.close()

    @property
    def stats(self) -> Stats:
        """Hits, misses, requests and tokens since this object was created."""
        return self._ef.stats

    @property
    def embedding_function(self) -> JinaEmbeddingFunction:
        """The :class:`JinaEmbeddingFunction` underneath (its ``task`` is the document
        task), for the same cache from pymilvus-style code."""
        return self._ef

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order, with the document task."""
        vectors: list[list[float]] = self._ef.embed(texts).tolist()
        return vectors

    def embed_query(self, text: str) -> list[float]:
        """The vector of ``text`` with the query task."""
        vector: list[float] = self._ef.embed([text], task=self.query_task)[0].tolist()
        return vector

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """:meth:`embed_documents`, awaited."""
        vectors: list[list[float]] = (await self._ef.aembed(texts)).tolist()
        return vectors

    def embed_images(self, uris: list[str]) -> list[list[float]]:
        """One vector per image, in order, as LangChain's ``JinaEmbeddings.embed_images``:
        each an ``http(s)`` URL (sent as it is) or a local file's path (read and keyed by
        its content); ``bytes`` and ``data:`` URIs are taken too (jina-clip-v1, jina-clip-v2,
        jina-embeddings-v4)."""
        vectors: list[list[float]] = self._ef.embed_images(uris).tolist()
        return vectors

    async def aembed_images(self, uris: list[str]) -> list[list[float]]:
        """:meth:`embed_images`, awaited."""
        return [vector.tolist() for vector in await self._ef.aencode_images(uris)]

    async def aembed_query(self, text: str) -> list[float]:
        """:meth:`embed_query`, awaited."""
        vector: list[float] = (await self._ef.aembed([text], task=self.query_task))[0].tolist()
        return vector
