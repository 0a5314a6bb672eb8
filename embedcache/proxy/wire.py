"""Jina's ``/v1/embeddings`` wire format, as the proxy reads and writes it.

Pure functions, no HTTP: :func:`parse_request` turns a request body into the texts and
:class:`~embedcache.models.RequestOptions` the caching core takes, or says the request must
be passed through uncached; :func:`render_embeddings` and :func:`render_error` write the
response bodies in the API's shape (reference §2-3, §5.1).

A request is cached only when every field in it is one whose effect on the output the key
covers: texts, images and PDFs; ``float``, ``base64``, ``binary`` and ``ubinary`` outputs;
v4's ``return_multivector`` and the ColBERT models' ``input_type`` (at ``/v1/embeddings`` or
``/v1/multi-vector``). A list of several encodings (whose answer shape is unconfirmed) and
fields this version does not know go to the API as they are and are never stored.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from ..config import EMBEDDINGS_PATH
from ..errors import (
    APIError,
    CacheError,
    CacheMissError,
    EmbedcacheError,
    InvalidInputError,
    SharedCacheError,
)
from ..inputs import Input, Media, parse_item
from ..models import MULTI_VECTOR_PATH, RequestOptions, resolve_options, spec_for
from ..upstream.float_style import DEFAULT_FLOAT_STYLE

__all__ = [
    "EmbeddingsRequest",
    "dialect_of",
    "error_status",
    "parse_request",
    "redact_urls",
    "render_body",
    "render_embeddings",
    "render_error",
    "render_payload",
    "render_refusal",
    "render_vector",
]

#: Output encodings the proxy can produce exactly from a cached float32 vector.
FLOAT_EMBEDDING_TYPES = frozenset({"float", "base64"})
#: Output encodings the proxy caches: the floats' two, and packed bits (entries of their own,
#: answered as the API wrote them: integers have one JSON text).
CACHEABLE_EMBEDDING_TYPES = FLOAT_EMBEDDING_TYPES | {"binary", "ubinary"}
# An item that is an image or a PDF, in the API's forms (the older url and bytes too).
_MEDIA_KEYS = frozenset({"image", "pdf", "url", "bytes"})
_KNOWN_FIELDS = frozenset(
    {"model", "input", "task", "dimensions", "normalized", "late_chunking", "truncate"}
    | {"embedding_type", "encoding_type", "return_multivector", "input_type"}
    # OpenAI's dialect: its name for the encoding, and its end-user id, which changes
    # nothing in the output: accepted, not keyed, never sent upstream.
    | {"encoding_format", "user"}
)
_FLAGS = ("normalized", "late_chunking", "truncate", "return_multivector")
#: Jina's fields OpenAI's dialect has no equivalent of (its answers are one float vector).
_JINA_ONLY = frozenset({"return_multivector", "input_type"})


@dataclass(frozen=True)
class EmbeddingsRequest:
    """A request the cache can answer: its texts in order, the options sent upstream for
    its misses, and how the client wants the vectors written."""

    model: str
    texts: Sequence[Input]
    options: RequestOptions
    embedding_type: str


def parse_request(body: object, path: str = EMBEDDINGS_PATH) -> EmbeddingsRequest | None:
    """Read a decoded request body sent to ``path`` (``/v1/embeddings``, or the ColBERT
    models' ``/v1/multi-vector``).

    :returns: the request, or ``None`` when it must be passed through uncached.
    :raises InvalidInputError: for a request the API would refuse (bad task, dimensions out
        of range, wrong types, ``return_multivector`` with ``dimensions``): answered
        locally, before anything is spent.
    """
    if not isinstance(body, dict):
        raise InvalidInputError("the request body must be a JSON object")
    _refuse_token_ids(body.get("input"))  # in either dialect: no Jina model takes them
    if dialect_of(body) == "openai":
        _check_openai(body)  # nothing of it can be forwarded: Jina speaks another dialect
    if not body.keys() <= _KNOWN_FIELDS:
        return None
    model = body.get("model")
    if not isinstance(model, str):
        return None  # the API's own error message is the one clients expect
    texts = _texts(body.get("input"))
    embedding_type = _embedding_type(body)
    if texts is None or embedding_type is None:
        return None
    for name in _FLAGS:
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise InvalidInputError(f"{name} must be true or false, got {body[name]!r}")
    model_id, task = _model_and_task(model, body.get("task"))
    spec = spec_for(model_id)
    if path == MULTI_VECTOR_PATH and (spec is None or spec.multivector != "only"):
        return None  # not a ColBERT model there: the API's own answer
    fields = (
        model_id,
        task,
        body.get("dimensions"),
        bool(body.get("late_chunking")),
        body.get("normalized"),
        body.get("truncate"),
        "float" if embedding_type in FLOAT_EMBEDDING_TYPES else embedding_type,
        bool(body.get("return_multivector")),
        body.get("input_type"),
    )
    try:
        options = _known_options(*fields)
    except TypeError:  # an unhashable field (a list, an object): say what is wrong with it
        options = _options(*fields)
    for index, item in enumerate(texts):
        if isinstance(item, Media):  # a model that takes none, or late chunking: refused here
            options.check_media(item, f"input[{index}]" if len(texts) > 1 else "input")
    return EmbeddingsRequest(model, texts, options, embedding_type)


def dialect_of(body: object) -> str:
    """``"openai"`` for a body in OpenAI's dialect (it names ``encoding_format`` or ``user``,
    as the OpenAI SDK and Milvus's ``openai`` provider always do), else ``"jina"``."""
    if isinstance(body, dict) and ("encoding_format" in body or "user" in body):
        return "openai"
    return "jina"


def _check_openai(body: Mapping[str, Any]) -> None:
    """Refuse what an OpenAI-dialect body holds that Jina cannot be asked for."""
    unknown = sorted(set(body) - _KNOWN_FIELDS)
    if unknown:
        raise InvalidInputError(f"the field {unknown[0]!r} has no Jina equivalent")
    if not isinstance(body.get("model"), str):
        raise InvalidInputError("model must be a string, e.g. jina-embeddings-v3")
    value = body.get("input")
    if isinstance(value, list) and not value:
        raise InvalidInputError("input is empty: send a string or a list of strings")
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in items):
        raise InvalidInputError("input must be a string or a list of strings")
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in FLOAT_EMBEDDING_TYPES:
        raise InvalidInputError(f"encoding_format must be float or base64, got {encoding!r}")
    jina_only = sorted(_JINA_ONLY & set(body))
    if jina_only:
        raise InvalidInputError(f"the field {jina_only[0]!r} has no OpenAI equivalent")


def _refuse_token_ids(value: object) -> None:
    """Token ids (``[1, 2, 3]`` or ``[[1, 2], [3]]``, as OpenAI's API takes them) are no
    input of any Jina model: refused here rather than forwarded to be refused upstream."""
    if isinstance(value, list) and any(isinstance(item, (int, list)) for item in value):
        raise InvalidInputError("input holds token ids; Jina embeds text: send the strings")


def _model_and_task(model: str, task: object) -> tuple[str, object]:
    """A model name may carry its task after a colon (``jina-embeddings-v3:retrieval.query``)
    for clients that let a user set nothing but the model; it is the same request, and the
    same cache entries, as the plain name with that ``task``."""
    base, colon, suffix = model.rpartition(":")
    if not colon or spec_for(base) is None:
        return model, task
    if task is not None and task != suffix:
        raise InvalidInputError(f"the model names task {suffix!r} but task is {task!r}")
    return base, suffix


def _options(
    model: str,
    task: object,
    dimensions: object,
    late_chunking: bool,
    normalized: object,
    truncate: object,
    output: str = "float",
    multivector: bool = False,
    input_type: object = None,
) -> RequestOptions:
    return resolve_options(
        model,
        task,  # type: ignore[arg-type]  # resolve_options checks every type itself
        dimensions,  # type: ignore[arg-type]
        late_chunking=late_chunking,
        normalized=normalized,  # type: ignore[arg-type]
        truncate=truncate,  # type: ignore[arg-type]
        embedding_type=output,
        return_multivector=multivector,
        input_type=input_type,  # type: ignore[arg-type]
    )


# A proxy sees the same few settings over and over: validate each once. ``typed``, so that
# ``true`` is never taken for a cached ``1``.
_known_options = functools.lru_cache(maxsize=1024, typed=True)(_options)


def _texts(value: object) -> list[Input] | None:
    """The inputs of ``input`` (texts, images, PDFs in any of the API's forms), or ``None``
    when it holds anything else.

    :raises InvalidInputError: an image or PDF that cannot be sent (base64 that does not
        decode, a URL that is not ``http(s)``), or a PDF in a list (the API takes one PDF
        per request, as the input itself).
    """
    if isinstance(value, str):
        return [value]
    listed = isinstance(value, list)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        return None
    texts: list[Input] = []
    for index, item in enumerate(value):
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict) and item.keys() == {"text"} and isinstance(item["text"], str):
            texts.append(item["text"])
        elif isinstance(item, dict) and len(item) == 1 and item.keys() <= _MEDIA_KEYS:
            texts.append(parse_item(item, f"input[{index}]" if listed else "input"))
        else:
            return None
    if listed and any(isinstance(t, Media) and t.kind == "pdf" for t in texts):
        # The API's list items are texts and images: a PDF is the input itself.
        raise InvalidInputError('a PDF is sent alone, as the input itself: "input": {"pdf": ...}')
    return texts


def _embedding_type(body: Mapping[str, Any]) -> str | None:
    """The requested encoding (``embedding_type``, its alias ``encoding_type``, or OpenAI's
    ``encoding_format``), or ``None`` when it is not one the cache can produce."""
    names = ("embedding_type", "encoding_type", "encoding_format")
    given = [body[name] for name in names if body.get(name)]
    if not given:
        return "float"
    value = given[0]
    if not isinstance(value, str) or any(other != value for other in given):
        return None  # a list of several types, or two fields that disagree
    return value if value in CACHEABLE_EMBEDDING_TYPES else None


def render_vector(
    vector: NDArray[np.float32], embedding_type: str, float_style: str = DEFAULT_FLOAT_STYLE
) -> bytes:
    """One embedding's JSON value, as the upstream writes it.

    ``base64`` is the raw little-endian float32 bytes. ``float`` text comes in two styles
    (reference §12): ``float64``, each float32 value written with the digits that read back
    as the same float64 (what Python's ``json`` writes for ``float(np.float32(x))``), and
    ``float32``, the shortest digits that read back as the same float32. A client parsing
    JSON numbers into float64 sees the same float64 as a direct call only in the upstream's
    own style.
    """
    row = np.ascontiguousarray(vector, dtype="<f4")
    if embedding_type == "base64":
        return b'"' + base64.b64encode(row.tobytes()) + b'"'
    if float_style == "float32":
        return orjson.dumps(row.astype(np.float32), option=orjson.OPT_SERIALIZE_NUMPY)
    return orjson.dumps(row.astype(np.float64), option=orjson.OPT_SERIALIZE_NUMPY)


def render_payload(
    payload: NDArray[Any], embedding_type: str, float_style: str = DEFAULT_FLOAT_STYLE
) -> bytes:
    """One entry that is not one float vector, as the API writes it: packed bits as their
    integers (one row, or a list of rows), multi-vector float rows as a list of
    :func:`render_vector` values (``base64``: one string per row, as the emulator writes
    them)."""
    if payload.dtype.kind in "iu":
        return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    if payload.ndim == 1:
        return render_vector(payload, embedding_type, float_style)
    rows = [render_vector(row, embedding_type, float_style) for row in payload]
    return b"[" + b",".join(rows) + b"]"


def render_body(
    model: str, embeddings: Sequence[bytes], tokens_spent: int, multivector: bool = False
) -> bytes:
    """The success body around embeddings already rendered by :func:`render_vector`, in
    index order. ``usage`` counts only tokens spent upstream for this request: cached
    vectors cost nothing. ``multivector``: each item is
    ``{"object":"embeddings","index":i,"embeddings":[...]}``."""
    usage = b'"usage":{"total_tokens":%d,"prompt_tokens":%d},"data":[' % (
        tokens_spent,
        tokens_spent,
    )
    parts = [_model_head(model), usage]
    for index, embedding in enumerate(embeddings):
        # One join at the end: an embedding's text is copied once, not once per "+".
        if multivector:
            parts += (_item_head(index, b"embeddings"), embedding)
            continue
        parts += (_ITEM_HEADS[index] if index < len(_ITEM_HEADS) else _item_head(index), embedding)
    parts.append(b"}]}" if embeddings else b"]}")
    return b"".join(parts)


def _item_head(index: int, name: bytes = b"embedding") -> bytes:
    head = b'},{"object":"%s","index":%d,"%s":' % (name, index, name)
    return head[2 if index == 0 else 0 :]


_ITEM_HEADS = [_item_head(index) for index in range(2048)]


@functools.lru_cache(maxsize=256)
def _model_head(model: str) -> bytes:
    return b'{"model":' + orjson.dumps(model) + b',"object":"list",'


def render_embeddings(
    request: EmbeddingsRequest,
    vectors: NDArray[np.float32],
    tokens_spent: int,
    float_style: str = DEFAULT_FLOAT_STYLE,
) -> bytes:
    """The success body for ``vectors`` (row ``i`` for ``request.texts[i]``); see
    :func:`render_vector` and :func:`render_body`."""
    kind = request.embedding_type
    embeddings = [render_vector(row, kind, float_style) for row in vectors]
    return render_body(request.model, embeddings, tokens_spent)


def error_status(exc: EmbedcacheError) -> int:
    """The HTTP status a client sees for ``exc``: the upstream's own status for API errors,
    so clients' existing handling of 401/402/429 keeps working."""
    if isinstance(exc, APIError):
        return exc.status or 401  # no status: no key was available to send
    if isinstance(exc, InvalidInputError):
        return 422
    if isinstance(exc, (CacheMissError, SharedCacheError)):
        # Offline proxy: the upstream is deliberately unavailable; a shared tier the budgets
        # are kept in is out of reach: nothing that costs tokens is sent unmetered.
        return 503
    if isinstance(exc, CacheError):
        return 500
    return 502  # transport or response-format trouble with the upstream


def render_error(exc: EmbedcacheError | str, dialect: str = "jina", status: int = 0) -> bytes:
    """An error body in the client's dialect. Jina's: always ``detail``, plus ``code`` and
    ``request_id`` when the upstream gave them. OpenAI's: ``{"error": {"message", "type",
    "param", "code"}}``, its ``type`` following ``status``. A URL in the message is shown
    without credentials (:func:`redact_urls`)."""
    if dialect == "openai":
        message = redact_urls(exc if isinstance(exc, str) else _message(exc))
        code = exc.code if isinstance(exc, APIError) else None
        return orjson.dumps(
            {"error": {"message": message, "type": _openai_type(status), "param": None,
                       "code": code}}
        )  # fmt: skip
    if isinstance(exc, str):
        return orjson.dumps({"detail": redact_urls(exc)})
    body: dict[str, str] = {"detail": redact_urls(str(exc))}
    if isinstance(exc, APIError):
        body["detail"] = redact_urls(exc.detail or str(exc))
        if exc.code:
            body["code"] = exc.code
        if exc.request_id:
            body["request_id"] = exc.request_id
    return orjson.dumps(body)


def render_refusal(message: str, status: int) -> bytes:
    """An error body both dialects read, for a refusal made before the request's body (and
    so its dialect) is known: Jina's ``detail`` and OpenAI's ``error`` side by side."""
    error = {"message": message, "type": _openai_type(status), "param": None, "code": None}
    return orjson.dumps({"detail": message, "error": error})


# A URL's user:password@, wherever it stands in a message.
_CREDENTIALS = re.compile(r"(?<=://)[^/\s@]+@")


def redact_urls(text: str) -> str:
    """``text`` with every URL's ``user:password@`` shown as ``***@`` (as
    :func:`embedcache.config.redact_url` does for one URL): error text may quote the
    upstream's URL."""
    return _CREDENTIALS.sub("***@", text) if "@" in text else text


def _openai_type(status: int) -> str:
    return _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def _message(exc: EmbedcacheError) -> str:
    return (exc.detail or str(exc)) if isinstance(exc, APIError) else str(exc)


_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
