"""LangChain: :class:`JinaEmbeddings`, a ``langchain_core`` ``Embeddings`` over embedcache, and
:class:`JinaRerank`, a ``BaseDocumentCompressor`` over its rerank cache.

>>> from embedcache.langchain import JinaEmbeddings, JinaRerank
>>> embeddings = JinaEmbeddings("jina-embeddings-v3")  # doctest: +SKIP
>>> store = InMemoryVectorStore.from_texts(texts, embeddings)  # doctest: +SKIP
>>> reranker = JinaRerank(top_n=3)  # doctest: +SKIP
>>> best = reranker.compress_documents(store.similarity_search(q, k=20), q)  # doctest: +SKIP

Needs the ``langchain`` extra (``pip install 'embedcache[langchain]'``); without it, importing
this module raises :class:`~embedcache.MissingDependencyError` naming it.
"""

from __future__ import annotations

from .integrations.langchain import JinaEmbeddings
from .integrations.langchain_rerank import JinaRerank

__all__ = ["JinaEmbeddings", "JinaRerank"]
