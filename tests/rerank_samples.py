"""The query and candidate texts the LangChain and LlamaIndex rerankers' tests rank: one
set, so both integrations are checked on the same lists."""

from __future__ import annotations

QUERY = "where is the shared tier kept?"
TEXTS = [
    "Milvus is a vector database built for scale.",
    "Redis keeps the shared tier of the cache.",
    "Late chunking pools token embeddings after the whole text is read.",
    "The shared tier lives in Redis or Valkey.",
    "A proxy answers cached embeddings without a request upstream.",
]
