"""Validation of a ``POST /v1/embeddings`` body against the per-model table.

Statuses follow the reference: schema violations are 422, an unknown model, too many items
and over-long texts are 400. Where the reference is UNCONFIRMED, the choice is named in a
comment next to the check.

Image and PDF items are turned into bytes (``media.py``: base64 decoded, URLs fetched) and
checked: an image must be a PNG, JPEG, GIF or WEBP whose header gives its size (its tokens
are its tiles, ``images.py``), a PDF must start with ``%PDF-`` (``pdfs.py``); either
failing is a 400. An item's vector is seeded by the SHA-256 of its bytes, so the same image
sent as base64, as legacy ``{"bytes"}`` or by URL gets the same vector. PDFs go to
jina-embeddings-v4 alone, as ``"input": {"pdf": ...}``, never in a list (S1's list items
are text and image documents only): a PDF in a list is a 422. Multi-vector options and the
ColBERT models are in ``multivector.py``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from ..config import EMBEDDINGS_PATH
from ..models import MODELS, ModelSpec, spec_for
from ..tokens import estimate_tokens
from .images import TILES, image_size, image_tokens
from .media import MediaLoader
from .multivector import (
    COLBERT_FIELDS,
    COLBERT_MODELS,
    MULTI_VECTOR_PATH,
    V4_MULTIVECTOR_FIELDS,
    check_v4_multivector,
    colbert_options,
)
from .pdfs import TOKENS_PER_PAGE, pdf_pages, pdf_tokens
from .protocol import (
    INPUT_ITEM_LIMIT_EXCEEDED,
    INPUT_MODEL_NOT_FOUND,
    INPUT_TOKEN_LIMIT_EXCEEDED,
    INPUT_VALIDATION_ERROR,
    ApiError,
    validation_error,
)
from .vectors import EMBEDDING_TYPES

__all__ = [
    "IMAGE_MODELS",
    "EmbeddingRequest",
    "InputItem",
    "count_inputs",
    "parse_request",
    "truncate_to_tokens",
]

#: Models that take image items (reference §2.2). ``ModelSpec`` has no modality field.
IMAGE_MODELS = frozenset(TILES)
# Both spellings of the image field: ``image`` (2026 spec) and ``url``/``bytes`` (2025
# schema, still sent by LangChain and LlamaIndex). Accepting the old ones is a choice; the
# old ones keep their meaning: ``url`` takes only a URL, ``bytes`` only base64.
_IMAGE_KEYS = ("image", "url", "bytes")
_FIELDS = frozenset(
    {
        "model",
        "input",
        "embedding_type",
        "encoding_type",
        "task",
        "dimensions",
        "normalized",
        "late_chunking",
        "truncate",
    }
)
_V4 = "jina-embeddings-v4"


@dataclass(frozen=True)
class InputItem:
    """One input: ``kind`` is ``"text"``, ``"image"`` or ``"pdf"``; ``content`` the text
    (already cut to the model's limit under ``truncate``), the hex SHA-256 of an image's or
    PDF's bytes, or ``url:<URL>`` for a URL image left opaque (``media.py``).
    ``media_tokens`` is what an image or PDF costs, ``pages`` a PDF's page count."""

    kind: str
    content: str
    media_tokens: int = 0
    pages: int = 1

    @property
    def tokens(self) -> int:
        return estimate_tokens(self.content) if self.kind == "text" else self.media_tokens


@dataclass(frozen=True)
class EmbeddingRequest:
    """A validated request: everything needed to build the answer.

    ``task`` is ``None`` for models without a task field (a task sent to them is ignored);
    ``dimensions`` likewise. ``normalize`` already folds in that models without a
    ``normalized`` field always normalise.
    """

    spec: ModelSpec
    items: tuple[InputItem, ...]
    task: str | None
    dimensions: int | None
    normalize: bool
    late_chunking: bool
    embedding_types: tuple[str, ...]
    #: True when ``embedding_type`` was a list: ``embedding`` is then a dict keyed by type.
    types_as_dict: bool
    #: One row per token (v4 ``return_multivector``, ColBERT) instead of one vector.
    multivector: bool = False
    #: ColBERT's ``input_type`` (``query``/``document``); ``None`` for other models.
    input_type: str | None = None

    @property
    def tokens(self) -> int:
        return sum(item.tokens for item in self.items)

    @property
    def image_tokens(self) -> int:
        """The part of :attr:`tokens` that images and PDFs cost."""
        return sum(item.tokens for item in self.items if item.kind != "text")

    @property
    def has_media(self) -> bool:
        """Whether any item is an image or a PDF (the answer then has ``image_tokens``)."""
        return any(item.kind != "text" for item in self.items)


def count_inputs(body: object) -> int:
    """Number of input items in a (possibly invalid) body, 0 when it cannot be told."""
    if not isinstance(body, dict):
        return 0
    value = body.get("input", body.get("documents"))  # a rerank counts its documents
    if isinstance(value, list):
        return len(value)
    return 1 if isinstance(value, (str, dict)) else 0


def truncate_to_tokens(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose estimated token count is within ``limit``.

    The estimate of a prefix never exceeds that of a longer prefix, so a binary search
    over the cut position finds it.
    """
    if estimate_tokens(text) <= limit:
        return text
    low, high = 0, len(text)  # estimate(text[:low]) <= limit < estimate(text[:high])
    while high - low > 1:
        middle = (low + high) // 2
        if estimate_tokens(text[:middle]) <= limit:
            low = middle
        else:
            high = middle
    return text[:low]


def parse_request(
    body: object, loader: MediaLoader | None = None, *, path: str = EMBEDDINGS_PATH
) -> EmbeddingRequest:
    """Validate a parsed JSON body sent to ``path`` (``/v1/embeddings`` or
    ``/v1/multi-vector``), loading its images and PDFs through ``loader`` (a fresh
    :class:`MediaLoader` when ``None``).

    :raises ApiError: 422 for schema violations, 400 for an unknown model, too many items,
        an over-long text or an image or PDF that cannot be loaded, with Jina's wording where
        the reference quotes it.
    """
    if not isinstance(body, dict):
        raise validation_error("body", "Input should be a valid dictionary", "dict_type")
    loader = loader if loader is not None else MediaLoader()
    spec = _model(body, colbert_only=path == MULTI_VECTOR_PATH)
    if spec.name in COLBERT_MODELS:
        return _parse_colbert(spec, body, loader)
    fields = _FIELDS | V4_MULTIVECTOR_FIELDS if spec.name == _V4 else _FIELDS
    extra = sorted(key for key in body if key not in fields)
    if extra:
        # Choice: the 2025 schemas forbade extra fields; the 2026 spec says nothing.
        raise validation_error(
            ", ".join(extra), "Extra inputs are not permitted", "extra_forbidden"
        )
    types, as_dict = _embedding_types(body)
    task = _task(spec, body.get("task"))
    dimensions = _dimensions(spec, body.get("dimensions"))
    normalized = _flag(body, "normalized", default=True)
    late_chunking = _flag(body, "late_chunking", default=False)
    truncate = _flag(body, "truncate", default=False)
    if late_chunking and not spec.late_chunking:
        raise validation_error(
            "late_chunking", f"late_chunking is not supported by {spec.name}", "unsupported"
        )
    multivector = _flag(body, "return_multivector", default=False)
    tokenized = _flag(body, "return_tokenized_input", default=False)
    check_v4_multivector(
        body, multivector=multivector, tokenized=tokenized, late_chunking=late_chunking
    )
    items = _items(spec, body, loader)
    if late_chunking and any(item.kind != "text" for item in items):
        raise validation_error("late_chunking", "late_chunking only works with text inputs")
    if len(items) > spec.max_items:
        raise _too_many_items(spec, len(items))
    items = _enforce_token_limit(spec, items, truncate=truncate)
    return EmbeddingRequest(
        spec=spec,
        items=items,
        task=task,
        dimensions=dimensions,
        normalize=normalized or not spec.normalized,
        late_chunking=late_chunking,
        embedding_types=types,
        types_as_dict=as_dict,
        multivector=multivector,
    )


def _parse_colbert(spec: ModelSpec, body: dict[str, Any], loader: MediaLoader) -> EmbeddingRequest:
    extra = sorted(key for key in body if key not in COLBERT_FIELDS)
    if extra:
        raise validation_error(
            ", ".join(extra), "Extra inputs are not permitted", "extra_forbidden"
        )
    types, as_dict = _embedding_types(body)
    input_type, dimensions = colbert_options(spec, body)
    truncate = _flag(body, "truncate", default=False)
    items = _items(spec, body, loader)
    if len(items) > spec.max_items:
        raise _too_many_items(spec, len(items))
    return EmbeddingRequest(
        spec=spec,
        items=_enforce_token_limit(spec, items, truncate=truncate),
        task=None,
        dimensions=dimensions,
        normalize=True,
        late_chunking=False,
        embedding_types=types,
        types_as_dict=as_dict,
        multivector=True,
        input_type=input_type,
    )


def _model(body: dict[str, Any], *, colbert_only: bool) -> ModelSpec:
    if "model" not in body:
        raise validation_error("model", "Field required", "missing")
    model = body["model"]
    if not isinstance(model, str):
        raise validation_error("model", "Input should be a valid string", "string_type")
    spec = COLBERT_MODELS.get(model) if colbert_only else spec_for(model)
    if spec is None and not colbert_only:
        spec = COLBERT_MODELS.get(model)  # the 2026 spec serves them here too (§1)
    if spec is None:
        available = ", ".join(COLBERT_MODELS if colbert_only else [*MODELS, *COLBERT_MODELS])
        raise ApiError(
            400, INPUT_MODEL_NOT_FOUND, f"Model '{model}' not found. Available models: {available}"
        )
    return spec


def _embedding_types(body: dict[str, Any]) -> tuple[tuple[str, ...], bool]:
    # ``encoding_type`` is the pydantic field name and ``embedding_type`` its alias (S3);
    # both spellings in one body must agree (a choice).
    names = [name for name in ("embedding_type", "encoding_type") if body.get(name) is not None]
    if len(names) == 2 and body[names[0]] != body[names[1]]:
        raise validation_error("embedding_type", "embedding_type and encoding_type disagree")
    if not names:
        return ("float",), False
    field = names[0]
    value = body[field]
    allowed = "Input should be " + ", ".join(f"'{t}'" for t in EMBEDDING_TYPES)
    if isinstance(value, str):
        if value not in EMBEDDING_TYPES:
            raise validation_error(field, allowed, "enum")
        return (value,), False
    if isinstance(value, list) and value:
        if not all(isinstance(v, str) and v in EMBEDDING_TYPES for v in value):
            raise validation_error(field, allowed, "enum")
        return tuple(dict.fromkeys(value)), True
    raise validation_error(field, allowed, "enum")


def _task(spec: ModelSpec, task: object) -> str | None:
    if task is not None and not isinstance(task, str):
        raise validation_error("task", "Input should be a valid string", "string_type")
    if spec.tasks is None:
        # The 2025 schema took ``task`` for every text model and pymilvus always sends it;
        # ignoring it on models without the field is a choice (reference §2.2: UNCONFIRMED).
        return None
    if task is not None and task not in spec.tasks:
        valid = ", ".join(f"'{t}'" for t in spec.tasks)
        raise validation_error("task", f"Input should be {valid}", "enum")
    return task


def _dimensions(spec: ModelSpec, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise validation_error("dimensions", "Input should be a valid integer", "int_type")
    if spec.dimensions is None:
        return None  # pymilvus sends the native size to every model: ignored, as for task
    low, high = spec.dimensions
    if value < low:
        raise validation_error(
            "dimensions", f"Input should be greater than or equal to {low}", "greater_than_equal"
        )
    if value > high:
        raise validation_error(
            "dimensions", f"Input should be less than or equal to {high}", "less_than_equal"
        )
    return value


def _flag(body: dict[str, Any], name: str, *, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    # Strict booleans (a choice): pydantic's lax mode would also take 0/1 and "true".
    if not isinstance(value, bool):
        raise validation_error(name, "Input should be a valid boolean", "bool_type")
    return value


def _items(spec: ModelSpec, body: dict[str, Any], loader: MediaLoader) -> tuple[InputItem, ...]:
    if "input" not in body:
        raise validation_error("input", "Field required", "missing")
    value = body["input"]
    if isinstance(value, list):
        if not value:
            # Choice: the reference does not say what an empty list gets.
            raise validation_error("input", "List should have at least 1 item", "too_short")
        # Every item is checked for its form before any URL is fetched: a malformed request
        # fetches nothing.
        forms = [_form(spec, entry, f"input.{i}", listed=True) for i, entry in enumerate(value)]
        return tuple(_load(spec, form, loader) for form in forms)
    return (_load(spec, _form(spec, value, "input", listed=False), loader),)


_Form = tuple[str, str, str]  # (key, value, where)


def _form(spec: ModelSpec, value: object, where: str, *, listed: bool) -> _Form:
    if isinstance(value, str):
        return "text", value, where
    if isinstance(value, dict) and len(value) == 1:
        ((key, content),) = value.items()
        if not isinstance(content, str):
            raise validation_error(
                f"{where}.{key}", "Input should be a valid string", "string_type"
            )
        if key == "text":
            return key, content, where
        if key in _IMAGE_KEYS:
            if spec.name not in IMAGE_MODELS:
                raise validation_error(where, f"{spec.name} accepts text inputs only", "model_type")
            return key, content, f"{where}.{key}"
        if key == "pdf":
            if spec.name != _V4:
                raise validation_error(where, f"{spec.name} accepts no PDF inputs", "model_type")
            if listed:
                raise validation_error(
                    where,
                    "PDFs must be sent individually: 'input' must be the one "
                    "{'pdf': ...} object, not a list",
                    "pdf_in_list",
                )
            return key, content, f"{where}.{key}"
    raise validation_error(
        where, "Input should be a string or an object with one of 'text', 'image'", "union_type"
    )


def _load(spec: ModelSpec, form: _Form, loader: MediaLoader) -> InputItem:
    key, value, where = form
    if key == "text":
        return InputItem("text", value)
    data = loader.load(value, where, url=key != "bytes", raw=key != "url")
    if key == "pdf":
        if data is None:  # a URL left opaque: one page, seeded by the URL text
            return InputItem("pdf", f"url:{value}", TOKENS_PER_PAGE)
        try:
            return InputItem("pdf", _digest(data), pdf_tokens(data), pdf_pages(data))
        except ValueError as error:
            raise ApiError(400, INPUT_VALIDATION_ERROR, f"{where}: {error}") from None
    tile = image_tokens(1, 1, spec.name)
    if data is None:  # a URL left opaque: one tile, seeded by the URL text
        return InputItem("image", f"url:{value}", tile)
    try:
        width, height = image_size(data)
    except ValueError as error:
        raise ApiError(400, INPUT_VALIDATION_ERROR, f"{where}: {error}") from None
    return InputItem("image", _digest(data), image_tokens(width, height, spec.name))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _too_many_items(spec: ModelSpec, count: int) -> ApiError:
    if spec.name == _V4:
        detail = (
            f"Validation error: 'body -> {_V4}' Each input list can contain at most "
            f"{spec.max_items} items."
        )
    else:
        detail = f'"input" length {count} is larger than the largest allowed size {spec.max_items}'
    return ApiError(400, INPUT_ITEM_LIMIT_EXCEEDED, detail)


def _enforce_token_limit(
    spec: ModelSpec, items: tuple[InputItem, ...], *, truncate: bool
) -> tuple[InputItem, ...]:
    limit = spec.max_input_tokens
    if limit is None:
        return items
    out = []
    for i, item in enumerate(items):
        if item.kind == "text" and item.tokens > limit:
            if not truncate:
                # Code and wording from the 2026 error table; the status there is 400, and
                # the index and count are additions (reference §10: UNCONFIRMED).
                raise ApiError(
                    400,
                    INPUT_TOKEN_LIMIT_EXCEEDED,
                    f"Input text exceeds the model's maximum of {limit} tokens "
                    f"(input {i} has {item.tokens} tokens); set truncate to true to cut it",
                )
            item = InputItem("text", truncate_to_tokens(item.content, limit))
        out.append(item)
    # Choice: a late-chunking request is checked item by item, not as one concatenation
    # (what the API does with an over-long concatenation is UNCONFIRMED, reference §4).
    return tuple(out)
