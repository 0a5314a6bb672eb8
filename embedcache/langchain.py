"""LangChain: :class:`JinaEmbeddings`, a ``langchain_core`` ``Embeddings`` over embedcache.

>>> from embedcache.langchain import JinaEmbeddings
>>> embeddings = JinaEmbeddings("jina-embeddings-v3")  # doctest: +SKIP
>>> store = InMemoryVectorStore.from_texts(texts, embeddings)  # doctest: +SKIP

Needs the ``langchain`` extra (``pip install 'embedcache[langchain]'``); without it, importing
this module raises :class:`~embedcache.MissingDependencyError` naming it.
"""

from __future__ import annotations

from .integrations.langchain import JinaEmbeddings

__all__ = ["JinaEmbeddings"]
