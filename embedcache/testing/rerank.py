"""Jina's ``POST /v1/rerank``, deterministically: a pointwise model's score depends on the
(query, document) pair alone; a listwise model's on the whole ordered list too.

Request (issue 27's facts, Jina's API guide 2025-09): ``{"model", "query", "documents",
"top_n" (default: all), "return_documents" (default true)}``. Answer: ``{"model", "usage":
{"total_tokens"}, "results": [{"index", "relevance_score", "document": {"text"}}]}``, sorted
by score (highest first), ``index`` the document's position, cut to ``top_n``; without
``document`` when ``return_documents`` is false.

The emulator's rules (choices where marked):

- Models: jina-reranker-v2-base-multilingual, jina-reranker-m0 and jina-colbert-v2
  (pointwise), jina-reranker-v3 (listwise: the query and every document in one context).
  jina-reranker-m0 also takes ``{"image": ...}`` documents and queries, seeded by the string
  as given (choice: rerank images are not fetched or decoded here).
- A pointwise score is ``sigmoid(z)`` of a normal draw seeded by (model, query, document):
  in (0, 1), the same in any list. A listwise score adds to it a term seeded by the whole
  ordered list and the document's position (choice), so the same pair scores differently in
  another list.
- Usage (choice): pointwise, the query's tokens and the document's for each document (the
  query is read with each); listwise, the query's once plus every document's.
- Refused (422): an unknown model, a missing or empty ``query`` or ``documents``, a
  document that is not a string (or, on m0, an image object), ``top_n`` below 1, a
  non-boolean ``return_documents``, an unknown field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from ..tokens import estimate_tokens
from .protocol import validation_error
from .vectors import content_seed

__all__ = [
    "LISTWISE_MODELS",
    "POINTWISE_MODELS",
    "RERANK_PATH",
    "RerankRequest",
    "parse_rerank",
    "rerank_payload",
    "rerank_scores",
]

RERANK_PATH = "/v1/rerank"
#: Models whose score of a (query, document) pair does not depend on the other documents.
POINTWISE_MODELS = frozenset(
    {"jina-reranker-v2-base-multilingual", "jina-reranker-m0", "jina-colbert-v2"}
)
#: Models that read the query and every document in one context.
LISTWISE_MODELS = frozenset({"jina-reranker-v3"})
_IMAGE_MODELS = frozenset({"jina-reranker-m0"})
_FIELDS = frozenset({"model", "query", "documents", "top_n", "return_documents"})
# How much the list moves a listwise score (a choice: enough to tell, never past (0, 1)).
_LIST_WEIGHT = 0.5


@dataclass(frozen=True)
class RerankRequest:
    """A validated rerank request."""

    model: str
    query: str
    documents: tuple[str, ...]
    #: The documents as the answer echoes them (a text, or an image object on m0).
    echoed: tuple[Any, ...]
    top_n: int
    return_documents: bool

    @property
    def listwise(self) -> bool:
        return self.model in LISTWISE_MODELS

    @property
    def tokens(self) -> int:
        query = estimate_tokens(self.query)
        documents = sum(estimate_tokens(document) for document in self.documents)
        if self.listwise:
            return query + documents
        return query * len(self.documents) + documents


def parse_rerank(body: object) -> RerankRequest:
    """Validate a ``/v1/rerank`` body.

    :raises ApiError: a 422 naming the field.
    """
    if not isinstance(body, dict):
        raise validation_error("body", "Input should be a valid dictionary", "dict_type")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise validation_error(unknown[0], "Extra inputs are not permitted", "extra_forbidden")
    model = body.get("model")
    if model not in POINTWISE_MODELS | LISTWISE_MODELS:
        known = ", ".join(sorted(POINTWISE_MODELS | LISTWISE_MODELS))
        raise validation_error("model", f"Input should be one of {known}", "enum")
    query = _item(body.get("query"), "query", model)
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents:
        raise validation_error("documents", "List should have at least 1 item", "too_short")
    texts = tuple(_item(doc, f"documents.{i}", model) for i, doc in enumerate(documents))
    top_n = body.get("top_n", len(texts))
    if top_n is None:
        top_n = len(texts)
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise validation_error("top_n", "Input should be greater than or equal to 1")
    flag = body.get("return_documents", True)
    if not isinstance(flag, bool):
        raise validation_error("return_documents", "Input should be a valid boolean", "bool_type")
    return RerankRequest(model, query, texts, tuple(documents), min(top_n, len(texts)), flag)


def rerank_scores(request: RerankRequest) -> list[float]:
    """Each document's score, in document order."""
    scores = []
    whole = _list_seed(request) if request.listwise else 0
    for position, document in enumerate(request.documents):
        z = _normal(content_seed("rerank", request.model, request.query, document))
        if request.listwise:
            z += _LIST_WEIGHT * _normal(whole + position)
        scores.append(float(np.float32(1 / (1 + math.exp(-z)))))
    return scores


def rerank_payload(request: RerankRequest) -> dict[str, Any]:
    """The answer: results by score, highest first (ties by index), cut to ``top_n``."""
    scores = rerank_scores(request)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: request.top_n]
    results = []
    for index in order:
        result: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
        if request.return_documents:
            echoed = request.echoed[index]
            result["document"] = echoed if isinstance(echoed, dict) else {"text": echoed}
        results.append(result)
    tokens = request.tokens
    return {"model": request.model, "usage": {"total_tokens": tokens}, "results": results}


def _item(value: object, field: str, model: str) -> str:
    """A query or document as the text its score is seeded by."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((key, content),) = value.items()
        if key == "text" and isinstance(content, str):
            return content
        if key == "image" and isinstance(content, str) and model in _IMAGE_MODELS:
            return "image:" + content
    raise validation_error(field, "Input should be a non-empty string", "string_type")


def _list_seed(request: RerankRequest) -> int:
    digest = xxhash.xxh3_64()
    for document in request.documents:
        raw = document.encode("utf-8", "surrogatepass")
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.intdigest()


def _normal(seed: int) -> float:
    return float(np.random.default_rng(seed % 2**64).standard_normal())
