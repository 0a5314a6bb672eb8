"""``embedcache demo --milvus``: the Milvus page's ``JinaEmbeddingFunction`` example, end to
end on Milvus Lite (the ``milvus`` extra).

Documents embedded through the cache go into a Milvus Lite collection (a local Milvus in one
file) and are searched with the vectors of ``encode_queries``. Nothing else in embedcache
imports pymilvus; this module imports it only when the demo runs, so ``embedcache --help``
does not pay for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..extras import requires

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = [
    "COLLECTION",
    "MILVUS_DOCUMENTS",
    "MILVUS_QUERIES",
    "TOP_K",
    "Hit",
    "QueryResult",
    "build_collection",
    "milvus_lite",
    "require_milvus",
    "search",
]

#: The documents and queries of the Milvus page's JinaEmbeddingFunction example.
MILVUS_DOCUMENTS = [
    "Artificial intelligence was founded as an academic discipline in 1956.",
    "Alan Turing was the first person to conduct substantial research in AI.",
    "Born in Maida Vale, London, Turing was raised in southern England.",
]
MILVUS_QUERIES = ["When was artificial intelligence founded", "Where was Alan Turing born?"]
COLLECTION = "embedcache_demo"
#: Hits shown per query.
TOP_K = 2


@dataclass(frozen=True)
class Hit:
    """One search hit: the document's id (its position in the inserted list), its text, and
    Milvus's COSINE similarity to the query."""

    id: int
    text: str
    distance: float


@dataclass(frozen=True)
class QueryResult:
    """A query and its hits, best first."""

    query: str
    hits: tuple[Hit, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"query": self.query, "hits": [asdict(hit) for hit in self.hits]}


def require_milvus() -> Any:
    """``pymilvus.MilvusClient``, after checking Milvus Lite is installed too.

    :raises MissingDependencyError: naming ``pip install 'embedcache[milvus]'``.
    """
    with requires("milvus"):
        # pymilvus opens a .db file through milvus_lite, and without it fails only when
        # connecting, with its own exception: checked here, before the demo starts anything
        # (the package first, so the message names the package).
        import milvus_lite
        import milvus_lite.server_manager  # noqa: F401
        from pymilvus import MilvusClient
    return MilvusClient


@contextlib.contextmanager
def milvus_lite(path: Path) -> Iterator[Any]:
    """A ``MilvusClient`` on a Milvus Lite database at ``path`` (a ``.db`` name in an existing
    directory). On exit the client is closed and the server Milvus Lite runs for that file in
    this process is stopped: closing the client alone leaves it serving until the process
    exits, holding the file's lock (and threads of a CLI run inside a test)."""
    client_class = require_milvus()
    from milvus_lite.server_manager import server_manager_instance

    try:
        client = client_class(str(path))
        try:
            yield client
        finally:
            client.close()
    finally:
        server_manager_instance.release_server(str(path))


def build_collection(
    client: Any,
    documents: Sequence[str],
    vectors: Sequence[NDArray[np.float32]],
    *,
    collection: str = COLLECTION,
) -> None:
    """(Re)create ``collection`` (COSINE) and insert each document with its vector, its id
    its position in ``documents``."""
    if client.has_collection(collection):
        client.drop_collection(collection)
    client.create_collection(collection, dimension=len(vectors[0]), metric_type="COSINE")
    rows = [
        {"id": i, "vector": vector, "text": text}
        for i, (text, vector) in enumerate(zip(documents, vectors, strict=True))
    ]
    client.insert(collection, rows)


def search(
    client: Any,
    queries: Sequence[str],
    vectors: Sequence[NDArray[np.float32]],
    *,
    collection: str = COLLECTION,
    limit: int = TOP_K,
) -> list[QueryResult]:
    """The ``limit`` best hits in ``collection`` of each query's vector."""
    found = client.search(collection, data=list(vectors), limit=limit, output_fields=["text"])
    return [
        QueryResult(
            query,
            tuple(
                Hit(int(hit["id"]), str(hit["entity"]["text"]), float(hit["distance"]))
                for hit in hits
            ),
        )
        for query, hits in zip(queries, found, strict=True)
    ]
