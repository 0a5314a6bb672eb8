"""LlamaIndex: :class:`JinaEmbedding`, a ``BaseEmbedding`` over embedcache.

>>> from embedcache.llama_index import JinaEmbedding
>>> embed_model = JinaEmbedding(model="jina-embeddings-v3")  # doctest: +SKIP
>>> index = VectorStoreIndex.from_documents(documents, embed_model=embed_model)  # doctest: +SKIP

Needs the ``llama-index`` extra (``pip install 'embedcache[llama-index]'``); without it,
importing this module raises :class:`~embedcache.MissingDependencyError` naming it.
"""

from __future__ import annotations

from .integrations.llama_index import JinaEmbedding

__all__ = ["JinaEmbedding"]
