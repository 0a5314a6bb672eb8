"""``JinaEmbedding``: a LlamaIndex ``BaseEmbedding`` over the cache (the ``llama-index``
extra).

Unlike ``llama_index.embeddings.jinaai.JinaEmbedding`` it takes a base URL, embeds queries
with the query task and texts with the document task (one ``task`` for both there), and
sends only what the cache does not hold, batched and deduplicated, instead of every text.
LlamaIndex's own ``embeddings_cache`` is refused: it keys an embedding by its text alone,
so a query would get the document vector of the same text (and another model's or size's).
"""

from __future__ import annotations

import io
import os
from typing import Any

from ..config import DEFAULT_MODEL
from ..embedding.counters import Stats
from ..errors import InvalidInputError
from ..extras import requires
from ..function import ImageLike, JinaEmbeddingFunction, paired_tasks, settings_of

with requires("llama-index"):
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.embeddings import MultiModalEmbedding
    from llama_index.core.schema import ImageType

__all__ = ["JinaEmbedding"]

#: LlamaIndex's own limit on ``embed_batch_size``; the default here, so its calls hand
#: whole lists to the cache, which batches misses by the model's limits itself.
_MAX_EMBED_BATCH_SIZE = 2048
#: The ``BaseEmbedding`` fields a caller may set through keyword arguments.
_BASE_FIELDS = frozenset({"num_workers", "rate_limiter"})


class JinaEmbedding(MultiModalEmbedding):
    """A LlamaIndex embedding model for the Jina API, with embedcache's disk cache in
    front: pass it as ``embed_model`` (``VectorStoreIndex``, ``Settings.embed_model``), or
    as the image embedding of a ``MultiModalVectorStoreIndex`` with a multimodal model
    (jina-clip-v1, jina-clip-v2, jina-embeddings-v4): images by path or ``BytesIO`` are
    keyed by their content, by ``http(s)`` URL by the URL.

    The first arguments are those of ``llama_index.embeddings.jinaai.JinaEmbedding``, in
    its order; ``api_key`` may also come from ``JINAAI_API_KEY`` or ``JINA_API_KEY``, read
    only when something is not cached. Query embeddings use the query task, text (node)
    embeddings the document task, sync and async; the async ones run the same calls in
    worker threads, and a cancelled await sends no new batch and keeps those in flight.

    :param model: Jina model id.
    :param embed_batch_size: most texts LlamaIndex hands over per call (its own batching;
        the cache then batches misses by the model's limits). Default: 2048, LlamaIndex's
        largest, so an index build's texts reach the cache together.
    :param api_key: never written to disk, logs, ``repr`` or LlamaIndex's payloads.
    :param callback_manager: LlamaIndex's callbacks.
    :param encoding_queries: only ``"float"`` (or ``None``): binary embeddings are not
        cached.
    :param encoding_documents: likewise.
    :param task: the document task; ``None``: the model's (``retrieval.passage``).
    :param dimensions: Matryoshka size; ``None``: the model's native size.
    :param late_chunking: embed each list LlamaIndex hands over as one late-chunking group.
    :param query_task: ``None``: the query side of ``task`` (``retrieval.query`` for
        ``retrieval.passage``; a symmetric task such as ``text-matching`` is used for both).
    :param cache_dir: cache directory; else ``EMBEDCACHE_DIR``, else the user cache dir.
    :param base_url: API root; else ``EMBEDCACHE_BASE_URL``, else ``https://api.jina.ai``.
    :param offline: raise :class:`~embedcache.CacheMissError` on any miss.
    :param kwargs: ``BaseEmbedding``'s ``num_workers`` and ``rate_limiter`` (its
        ``embeddings_cache`` is refused: keyed by text alone, it would mix the tasks); else
        any keyword-only option of ``JinaEmbeddingFunction``
        (``batch_size``, ``max_concurrency``, ``redis_url``, ``tier``, ``upstream``, ...).
    :raises InvalidInputError: for a task, size or encoding the model does not take,
        before any request.
    """

    model: str = Field(default=DEFAULT_MODEL, description="The Jina model id.")
    task: str | None = Field(default=None, description="The document task sent.")
    query_task: str | None = Field(default=None, description="The query task sent.")
    dimensions: int | None = Field(default=None, description="The Matryoshka size sent.")
    late_chunking: bool = Field(default=False, description="Whether lists are late-chunked.")

    _ef: JinaEmbeddingFunction = PrivateAttr()

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        embed_batch_size: int = _MAX_EMBED_BATCH_SIZE,
        api_key: str | None = None,
        callback_manager: CallbackManager | None = None,
        encoding_queries: str | None = None,
        encoding_documents: str | None = None,
        task: str | None = None,
        dimensions: int | None = None,
        late_chunking: bool | None = None,
        *,
        query_task: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        base_url: str | None = None,
        offline: bool | None = None,
        **kwargs: Any,
    ) -> None:
        for name, encoding in (
            ("encoding_queries", encoding_queries),
            ("encoding_documents", encoding_documents),
        ):
            if encoding not in (None, "float"):
                raise InvalidInputError(
                    f"{name}={encoding!r}: embedcache caches float embeddings only"
                )
        if kwargs.get("embeddings_cache") is not None:
            raise InvalidInputError(
                "embeddings_cache: LlamaIndex's cache keys an embedding by its text alone, so "
                "a query would get the document vector of the same text; embedcache's disk "
                "cache already keeps every embedding, under its task, model and size"
            )
        kwargs.pop("embeddings_cache", None)
        # LlamaIndex's to_dict() writes model_name beside model (from_dict passes both back).
        if kwargs.pop("model_name", model) != model:
            raise InvalidInputError("model_name and model differ: give model only")
        base = {name: kwargs.pop(name) for name in _BASE_FIELDS & set(kwargs)}
        settings = settings_of(type(self).__name__, kwargs)
        document_task, query_task = paired_tasks(model, task, query_task)
        # Passed as one mapping: mypy sees only BaseEmbedding's fields in its __init__.
        fields: dict[str, Any] = {
            "model_name": model,
            "model": model,
            "embed_batch_size": embed_batch_size,
            "callback_manager": callback_manager,
            "task": document_task,
            "query_task": query_task,
            "dimensions": dimensions,
            "late_chunking": bool(late_chunking),
            **base,
        }
        super().__init__(**fields)
        ef = JinaEmbeddingFunction(
            model,
            api_key,
            document_task,
            dimensions,
            late_chunking,
            cache_dir=cache_dir,
            base_url=base_url,
            offline=offline,
            **settings,
        )
        try:
            ef.options(query_task)  # a bad query task fails now, not at the first query
        except BaseException:
            ef.close()
            raise
        self._ef = ef

    @classmethod
    def class_name(cls) -> str:
        return "EmbedcacheJinaEmbedding"

    def close(self) -> None:
        """Release the cache and its threads (after any call still committing)."""
        self._ef.close()

    def __enter__(self) -> JinaEmbedding:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def stats(self) -> Stats:
        """Hits, misses, requests and tokens since this object was created."""
        return self._ef.stats

    @property
    def cache_dir(self) -> str:
        """The cache directory in use."""
        return self._ef.cache_dir

    @property
    def embedding_function(self) -> JinaEmbeddingFunction:
        """The :class:`JinaEmbeddingFunction` underneath (its ``task`` is the document
        task), for the same cache from pymilvus-style code."""
        return self._ef

    def _get_query_embedding(self, query: str) -> list[float]:
        vector: list[float] = self._ef.embed([query], task=self.query_task)[0].tolist()
        return vector

    async def _aget_query_embedding(self, query: str) -> list[float]:
        vector: list[float] = (await self._ef.aembed([query], task=self.query_task))[0].tolist()
        return vector

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return (await self._aget_text_embeddings([text]))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = self._ef.embed(texts).tolist()
        return vectors

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = (await self._ef.aembed(texts)).tolist()
        return vectors

    def _get_image_embedding(self, img_file_path: ImageType) -> list[float]:
        return self._get_image_embeddings([img_file_path])[0]

    async def _aget_image_embedding(self, img_file_path: ImageType) -> list[float]:
        return (await self._aget_image_embeddings([img_file_path]))[0]

    def _get_image_embeddings(self, img_file_paths: list[ImageType]) -> list[list[float]]:
        vectors: list[list[float]] = self._ef.embed_images(_images(img_file_paths)).tolist()
        return vectors

    async def _aget_image_embeddings(self, img_file_paths: list[ImageType]) -> list[list[float]]:
        found = await self._ef.aencode_images(_images(img_file_paths))
        return [vector.tolist() for vector in found]


def _images(images: list[ImageType]) -> list[ImageLike]:
    """LlamaIndex's images (paths, URLs, ``BytesIO``) as the embedding function takes them."""
    return [image.getvalue() if isinstance(image, io.BytesIO) else image for image in images]
