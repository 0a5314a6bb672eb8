"""The rerank dialects the proxy speaks, as pure functions (no HTTP, no cache).

:func:`parse_rerank` turns a request body into a :class:`RerankRequest` (model, query,
documents, ``top_n``, ``return_documents``) whichever dialect it is in; :func:`render_answer`
writes the answer from every document's score, and :func:`render_error` an error body, in
that dialect's own shape:

- **jina**, ``POST /v1/rerank``: Jina's API (``{"model", "query", "documents", "top_n"?,
  "return_documents"?}`` → ``{"model", "usage": {"total_tokens"}, "results": [{"index",
  "relevance_score", "document"}]}``); documents echoed as sent (``{"text": ...}`` for a
  string; an object as given). Images (``{"image": ...}``) as query or documents on
  jina-reranker-m0, parsed as the embeddings route parses them.
- **tei**, ``POST /rerank`` with ``texts`` (Milvus's ``tei`` provider): ``{"query",
  "texts", "truncate"?, "truncation_direction"?, "return_text"?, "raw_scores"?}`` →
  ``[{"index", "text"?, "score"}]``, highest score first; errors ``{"error", "error_type"}``.
- **vllm**, ``POST /rerank`` with ``documents`` (Milvus's ``vllm`` provider, which names no
  model): ``{"model"?, "query", "documents", "top_n"?}`` → ``{"id", "model", "usage",
  "results": [{"index", "document": {"text"}, "relevance_score"}]}``; errors in OpenAI's
  ``{"error": {...}}`` shape, as vLLM's server writes them.
- **cohere**, ``POST /v2/rerank``: ``{"model"?, "query", "documents", "top_n"?,
  "return_documents"?}`` → ``{"id", "results": [{"index", "relevance_score"}], "meta"}``;
  errors ``{"message"}``.

The model (choice): Jina's dialect names it and it is used as given. The other dialects are
answered with ``serve --rerank-model``, unless the body names a Jina reranker
(``jina-reranker-*``, ``jina-colbert-v2``), which is then used as is: another service's
model name (``rerank-v3.5``, ``BAAI/bge-reranker-base``) means nothing to Jina.

Options with no Jina equivalent are refused, never dropped silently: a score the client
did not ask for would be cached under its name. TEI's ``truncate`` and a right-hand
``truncation_direction`` change nothing (the Jina API keeps the start of a long document);
``raw_scores: true``, vLLM's ``truncate_prompt_tokens`` and Cohere's ``max_tokens_per_doc``
are refused.

Scores are written by orjson, which writes a float64's shortest round-trip digits, the same
digits as Python's ``repr``: the upstream's text whenever it writes shortest digits (the
emulator does; below 1e-4 orjson writes ``0.00001`` where Python writes ``1e-05``, the same
number).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..config import COHERE_RERANK_PATH, RERANK_PATH
from ..errors import APIError, EmbedcacheError, InvalidInputError
from ..inputs import Media, parse_item
from ..models import names_jina_reranker
from ..upstream.protocol import RerankInput
from . import tei
from .wire import redact_urls
from .wire import render_error as render_jina_error

__all__ = [
    "RerankInputError",
    "RerankRequest",
    "dialect_of",
    "parse_rerank",
    "render_answer",
    "render_error",
]

_FIELDS = {
    "jina": frozenset({"model", "query", "documents", "top_n", "return_documents"}),
    "tei": frozenset(
        {"query", "texts", "truncate", "truncation_direction", "return_text", "raw_scores"}
    ),
    "vllm": frozenset({"model", "query", "documents", "top_n", "truncate_prompt_tokens"}),
    "cohere": frozenset(
        {"model", "query", "documents", "top_n", "return_documents", "max_tokens_per_doc"}
    ),
}
#: What each dialect answers a malformed body with (TEI: its JSON extractor's 422; vLLM
#: and Cohere: 400; Jina: 422).
_BAD_REQUEST = {"jina": 422, "tei": 422, "vllm": 400, "cohere": 400}
#: Where a document sits in each dialect's body.
_DOCUMENTS = {"jina": "documents", "tei": "texts", "vllm": "documents", "cohere": "documents"}
_IMAGE_KINDS = frozenset({"image", "url", "bytes"})


class RerankInputError(ValueError):
    """A rerank body refused before anything is spent, with its status in its dialect.

    Not an :class:`~embedcache.errors.EmbedcacheError`: it never leaves the proxy, which
    answers it (as :class:`~embedcache.proxy.tei.TeiInputError`)."""

    def __init__(
        self, message: str, status: int, error_type: str = "validation", dialect: str = "jina"
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        #: The dialect the body was read in, the error's shape.
        self.dialect = dialect


@dataclass(frozen=True)
class RerankRequest:
    """A rerank body as the caching core takes it, and how its answer is shaped.

    :ivar dialect: ``jina``, ``tei``, ``vllm`` or ``cohere``.
    :ivar echoed: each document as the answer shows it (Jina: the object as sent, a string
        as ``{"text": ...}``; the others: the string).
    :ivar top_n: most results answered (``None``: all).
    :ivar return_documents: whether each result carries its document.
    """

    dialect: str
    model: str
    query: RerankInput
    documents: list[RerankInput]
    echoed: list[Any]
    top_n: int | None
    return_documents: bool

    @property
    def documents_field(self) -> str:
        """The body field the documents came in (``texts`` in TEI's)."""
        return _DOCUMENTS[self.dialect]


def dialect_of(path: str, body: object) -> str:
    """The dialect of a body sent to ``path``: ``POST /rerank`` is TEI's when the body has
    ``texts``, vLLM's otherwise."""
    if path == RERANK_PATH:
        return "jina"
    if path == COHERE_RERANK_PATH:
        return "cohere"
    return "tei" if isinstance(body, dict) and "texts" in body else "vllm"


def parse_rerank(raw: bytes, path: str, default_model: str) -> RerankRequest:
    """Read a rerank body sent to ``path``; a body naming no Jina reranker (every dialect
    but Jina's) is answered with ``default_model``.

    :raises RerankInputError: anything refused before any work, in the body's dialect
        (:func:`dialect_of`; a body that is not JSON in the path's).
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        dialect = dialect_of(path, None)
        message = "the request body is not valid JSON"
        raise RerankInputError(message, _BAD_REQUEST[dialect], dialect=dialect) from None
    dialect = dialect_of(path, body)
    if dialect == "tei" and len(raw) > tei.MAX_BODY_BYTES:
        message = f"the request body is {len(raw)} bytes; the most /rerank takes is "
        raise RerankInputError(message + str(tei.MAX_BODY_BYTES), 413, dialect="tei")
    try:
        return _parse(body, dialect, default_model)
    except InvalidInputError as exc:
        raise RerankInputError(str(exc), _BAD_REQUEST[dialect], dialect=dialect) from None
    except RerankInputError as exc:
        exc.dialect = dialect
        raise


def _parse(body: object, dialect: str, default_model: str) -> RerankRequest:
    if not isinstance(body, dict):
        raise InvalidInputError("the request body must be a JSON object")
    taken = _FIELDS[dialect]
    unknown = sorted(body.keys() - taken)
    if unknown:
        # Ignored, a field could change what the client thinks it gets: refused.
        fields = ", ".join(sorted(taken))
        raise InvalidInputError(f"unknown field {unknown[0]!r}; this endpoint takes {fields}")
    model = body.get("model")
    if dialect == "jina":
        if not isinstance(model, str) or not model:
            raise InvalidInputError("model is required: a Jina reranker's name")
    elif not names_jina_reranker(model):
        if model is not None and not isinstance(model, str):
            raise InvalidInputError(f"model must be a string, got {_kind(model)}")
        model = default_model
    assert isinstance(model, str)
    images = dialect == "jina"  # only Jina's API takes image objects
    query = _item(body.get("query"), "query", images)
    field = _DOCUMENTS[dialect]
    given = body.get(field)
    if not isinstance(given, list):
        raise InvalidInputError(f"{field} is required: a list of strings")
    if not given:
        # TEI answers an empty list 400 "empty", as its /embed does.
        status = 400 if dialect == "tei" else _BAD_REQUEST[dialect]
        raise RerankInputError(f"`{field}` cannot be empty", status, "empty")
    documents = [_item(item, f"{field}[{i}]", images) for i, item in enumerate(given)]
    echoed = [_echo(item) for item in given] if dialect == "jina" else list(given)
    top_n = _top_n(body.get("top_n"), dialect)
    return_documents = _flag(body, "return_documents", dialect in ("jina", "vllm"))
    if dialect == "tei":
        return_documents = _tei_options(body)
    for name in ("truncate_prompt_tokens", "max_tokens_per_doc"):
        if body.get(name) is not None:
            raise InvalidInputError(
                f"{name} has no Jina equivalent: leave it out (the Jina API reads each "
                "document up to its model's limit)"
            )
    return RerankRequest(dialect, model, query, documents, echoed, top_n, return_documents)


def _item(value: object, field: str, images: bool) -> RerankInput:
    """A query or document: a non-empty string, or (Jina's dialect) an object as the
    embeddings route takes it (``{"text"}``, ``{"image"}``); no PDF is reranked."""
    if isinstance(value, str):
        if not value:
            raise InvalidInputError(f"{field} is empty: send a non-empty string")
        return value
    if not images or not isinstance(value, dict):
        raise InvalidInputError(f"{field} must be a string, got {_kind(value)}")
    item = parse_item(value, field)
    if isinstance(item, Media) and item.kind != "image":
        raise InvalidInputError(f"{field} is {item.noun}: a reranker takes texts and images")
    if isinstance(item, str) and not item:
        raise InvalidInputError(f"{field}.text is empty: send a non-empty string")
    return item


def _echo(item: object) -> Any:
    """A Jina document as the answer shows it: an object as sent, a string as text."""
    return item if isinstance(item, dict) else {"text": item}


def _top_n(value: object, dialect: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"top_n must be a whole number, got {_kind(value)}")
    if dialect == "vllm" and value == 0:
        return None  # vLLM's default: every document
    if value < 1:
        raise InvalidInputError(f"top_n must be at least 1, got {value}")
    return value


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name} must be true or false, got {_kind(value)}")
    return value


def _tei_options(body: dict[str, Any]) -> bool:
    """TEI's options checked; whether the answer carries each text (``return_text``)."""
    truncate = _flag(body, "truncate", False)
    if _flag(body, "raw_scores", False):
        raise InvalidInputError(
            "raw_scores: true is not available: the Jina API answers relevance scores only"
        )
    direction = body.get("truncation_direction")
    if direction is not None:
        # Milvus sends it as its user wrote it; TEI's own spelling is "Right", "Left".
        if not isinstance(direction, str) or direction.lower() not in ("left", "right"):
            message = f"truncation_direction must be 'Left' or 'Right', got {direction!r:.40}"
            raise InvalidInputError(message)
        if truncate and direction.lower() == "left":
            raise InvalidInputError(
                "truncation_direction 'Left' is not available: the Jina API keeps the start "
                "of a document and cuts its end"
            )
    return _flag(body, "return_text", False)


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else "null")


def render_answer(
    request: RerankRequest, scores: Sequence[float], order: Sequence[int], total_tokens: int
) -> bytes:
    """The answer in ``request``'s dialect: ``order`` (document indices, highest score
    first, already cut to ``top_n``) with each one's score as the upstream wrote it;
    ``total_tokens``: what this request cost upstream (0 when all came from the cache)."""
    dialect = request.dialect
    echoed, keep = request.echoed, request.return_documents
    if dialect == "tei":
        return orjson.dumps(
            [
                {"index": i, "text": echoed[i], "score": scores[i]}
                if keep
                else {"index": i, "score": scores[i]}
                for i in order
            ]
        )
    results: list[dict[str, Any]] = []
    for i in order:
        result: dict[str, Any] = {"index": i}
        if dialect == "vllm" and keep:
            result["document"] = {"text": echoed[i]}  # vLLM writes it before the score
        result["relevance_score"] = scores[i]
        if dialect != "vllm" and keep:
            result["document"] = echoed[i] if dialect == "jina" else {"text": echoed[i]}
        results.append(result)
    usage = {"total_tokens": total_tokens}
    if dialect == "jina":
        return orjson.dumps({"model": request.model, "usage": usage, "results": results})
    if dialect == "vllm":
        answer = {"id": f"rerank-{uuid.uuid4().hex}", "model": request.model, "usage": usage}
        return orjson.dumps({**answer, "results": results})
    meta = {"api_version": {"version": "2"}, "billed_units": {"input_tokens": total_tokens}}
    return orjson.dumps({"id": str(uuid.uuid4()), "results": results, "meta": meta})


def render_error(dialect: str, problem: EmbedcacheError | RerankInputError | str,
                 status: int) -> bytes:  # fmt: skip
    """An error body in ``dialect``'s shape, on one line, any URL in it without
    credentials; an upstream's error keeps its ``code`` and ``request_id`` in Jina's."""
    if dialect == "jina" and isinstance(problem, EmbedcacheError):
        return render_jina_error(problem, "jina", status)
    message = (problem.detail or str(problem)) if isinstance(problem, APIError) else str(problem)
    text = " ".join(redact_urls(message).split())
    if dialect == "tei":
        kind = problem.error_type if isinstance(problem, RerankInputError) else ""
        return orjson.dumps({"error": text, "error_type": kind or tei.error_type(status)})
    if dialect == "vllm":
        return render_jina_error(text, "openai", status)  # vLLM writes OpenAI's shape
    if dialect == "cohere":
        return orjson.dumps({"message": text})
    return render_jina_error(text)
