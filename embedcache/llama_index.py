"""LlamaIndex: :class:`JinaEmbedding`, a ``BaseEmbedding`` over embedcache, and
:class:`JinaRerank`, a node postprocessor over its rerank cache.

>>> from embedcache.llama_index import JinaEmbedding, JinaRerank
>>> embed_model = JinaEmbedding(model="jina-embeddings-v3")  # doctest: +SKIP
>>> index = VectorStoreIndex.from_documents(documents, embed_model=embed_model)  # doctest: +SKIP
>>> engine = index.as_query_engine(node_postprocessors=[JinaRerank(top_n=3)])  # doctest: +SKIP

Needs the ``llama-index`` extra (``pip install 'embedcache[llama-index]'``); without it,
importing this module raises :class:`~embedcache.MissingDependencyError` naming it.
"""

from __future__ import annotations

from .integrations.llama_index import JinaEmbedding
from .integrations.llama_index_rerank import JinaRerank

__all__ = ["JinaEmbedding", "JinaRerank"]
