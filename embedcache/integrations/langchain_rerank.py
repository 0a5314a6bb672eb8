"""``JinaRerank``: a LangChain ``BaseDocumentCompressor`` over the rerank cache (the
``langchain`` extra).

langchain-community's ``JinaRerank`` posts every document on every call; this one asks
:class:`~embedcache.JinaRerankFunction`, which keeps each score on disk (per (query,
document) for the pointwise models, per whole list for the listwise jina-reranker-v3), so a
retriever asked the same question again sends nothing, and an overlapping candidate list
sends only the documents it has not scored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from copy import deepcopy
from typing import Any, Protocol

from ..config import DEFAULT_RERANK_MODEL
from ..embedding.counters import Stats
from ..errors import InvalidInputError
from ..extras import requires
from ..function import settings_of
from ..rerank_function import JinaRerankFunction, RerankResult

with requires("langchain"):
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from pydantic import PrivateAttr

__all__ = ["JinaRerank"]


class _Secret(Protocol):
    def get_secret_value(self) -> str: ...


class JinaRerank(BaseDocumentCompressor):
    """A LangChain document compressor reranking with the Jina API, with embedcache's disk
    cache in front: use it where langchain-community's ``JinaRerank`` goes (a
    ``ContextualCompressionRetriever``'s ``base_compressor``). Its fields and methods are
    that class's: ``model``, ``top_n``, ``jina_api_key``; :meth:`compress_documents` and
    :meth:`acompress_documents` return copies of the best ``top_n`` documents, best first,
    each with its ``relevance_score`` in its metadata; :meth:`rerank` returns
    ``[{"index", "relevance_score"}]``.

    :param model: Jina reranker model id; default JinaRerankFunction's
        (jina-reranker-v2-base-multilingual), not langchain-community's v1, which Jina no
        longer lists.
    :param top_n: how many documents to keep; ``None``: all, reordered.
    :param jina_api_key: a ``str`` or a pydantic ``SecretStr``; else ``JINAAI_API_KEY`` or
        ``JINA_API_KEY``, read only when something is not cached. Never kept in a field, so
        never in ``repr`` or ``model_dump``.
    :param cache_dir: cache directory; else ``EMBEDCACHE_DIR``, else the user cache dir.
    :param base_url: API root; else ``EMBEDCACHE_BASE_URL``, else ``https://api.jina.ai``.
    :param offline: raise :class:`~embedcache.CacheMissError` on any miss.
    :param options: any other keyword-only option of ``JinaRerankFunction`` (``redis_url``,
        ``tier``, ...).
    """

    model: str = DEFAULT_RERANK_MODEL
    """The Jina reranker model id."""
    top_n: int | None = 3
    """How many documents to keep (``None``: all)."""

    _key: str | None = PrivateAttr(default=None)
    _options: dict[str, Any] = PrivateAttr(default_factory=dict)
    # One function per model reranked with (the field's, one given to rerank(), the field
    # set again later), each opened when first used; all closed by close().
    _functions: dict[str, JinaRerankFunction] = PrivateAttr(default_factory=dict)

    def __init__(
        self,
        *,
        model: str = DEFAULT_RERANK_MODEL,
        top_n: int | None = 3,
        jina_api_key: str | _Secret | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        base_url: str | None = None,
        offline: bool | None = None,
        **options: Any,
    ) -> None:
        settings = settings_of(type(self).__name__, options)
        # Passed as one mapping: mypy sees only BaseDocumentCompressor's (no) fields.
        fields: dict[str, Any] = {"model": model, "top_n": top_n}
        super().__init__(**fields)
        if jina_api_key is not None and not isinstance(jina_api_key, str):
            jina_api_key = jina_api_key.get_secret_value()
        self._key = jina_api_key
        self._options = {
            "cache_dir": cache_dir,
            "base_url": base_url,
            "offline": offline,
            **settings,
        }
        self._function(model)  # a bad model or option fails now, not at the first query

    def _function(self, model: str) -> JinaRerankFunction:
        function = self._functions.get(model)
        if function is None:
            function = JinaRerankFunction(model, self._key, **self._options)
            self._functions[model] = function
        return function

    def __enter__(self) -> JinaRerank:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the cache and its threads (after any call still committing)."""
        for function in self._functions.values():
            function.close()

    @property
    def rerank_function(self) -> JinaRerankFunction:
        """The :class:`~embedcache.JinaRerankFunction` underneath, for the same cache from
        pymilvus-style code."""
        return self._function(self.model)

    @property
    def stats(self) -> Stats:
        """Hits, misses, requests and tokens since this object was created."""
        return self.rerank_function.stats

    def rerank(
        self,
        documents: Sequence[str | Document | dict[str, Any]],
        query: str,
        *,
        model: str | None = None,
        top_n: int | None = -1,
        max_chunks_per_doc: int | None = None,
    ) -> list[dict[str, Any]]:
        """The documents' indices and scores, best first, as langchain-community's
        ``JinaRerank.rerank``.

        :param documents: texts, ``Document`` objects (their ``page_content``) or
            ``{"text": ...}`` items.
        :param model: another model for this call (its own cache entries).
        :param top_n: how many to return; ``None``: all; below 1 (the default): the
            ``top_n`` field.
        :param max_chunks_per_doc: taken for compatibility and unused (langchain-community
            does not send it either).
        :raises InvalidInputError: an empty query, or a document of another form.
        """
        if not documents:
            return []  # as langchain-community: no request for nothing
        texts, count = _texts(documents), self._count(top_n)
        found = self._function(model or self.model)(query, texts, top_k=count)
        return _dicts(found)

    async def arerank(
        self,
        documents: Sequence[str | Document | dict[str, Any]],
        query: str,
        *,
        model: str | None = None,
        top_n: int | None = -1,
    ) -> list[dict[str, Any]]:
        """:meth:`rerank`, awaited (a cancelled await sends no new batch)."""
        if not documents:
            return []
        texts, count = _texts(documents), self._count(top_n)
        found = await self._function(model or self.model).acall(query, texts, top_k=count)
        return _dicts(found)

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """The best ``top_n`` documents for ``query``, best first: copies, each with its
        ``relevance_score`` in its metadata."""
        return _scored(documents, self.rerank(documents, query))

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """:meth:`compress_documents`, awaited; the call runs in a worker thread, and a
        cancelled await sends no new batch and keeps those in flight."""
        return _scored(documents, await self.arerank(documents, query))

    def _count(self, top_n: int | None) -> int | None:
        """How many results to return (``None``: all): langchain-community's reading of
        ``top_n``."""
        return top_n if (top_n is None or top_n > 0) else self.top_n


def _texts(documents: Sequence[str | Document | dict[str, Any]]) -> list[str]:
    texts = []
    for position, document in enumerate(documents):
        if isinstance(document, Document):
            texts.append(document.page_content)
        elif isinstance(document, str):
            texts.append(document)
        elif isinstance(document, dict) and set(document) == {"text"}:
            texts.append(document["text"])
        else:
            raise InvalidInputError(
                f"document {position}: a str, a Document or {{'text': ...}} is reranked, "
                f"not {type(document).__name__}"
            )
    return texts


def _dicts(found: list[RerankResult]) -> list[dict[str, Any]]:
    return [{"index": result.index, "relevance_score": result.score} for result in found]


def _scored(documents: Sequence[Document], ranked: list[dict[str, Any]]) -> list[Document]:
    """Copies of the ranked documents, each with its score in its metadata (the originals,
    which a retriever may hold, are left as they were)."""
    out = []
    for result in ranked:
        document = documents[result["index"]]
        metadata = deepcopy(document.metadata)
        metadata["relevance_score"] = result["relevance_score"]
        out.append(Document(document.page_content, metadata=metadata, id=document.id))
    return out
