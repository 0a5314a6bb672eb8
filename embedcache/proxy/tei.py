"""The Text Embeddings Inference (TEI) dialect: ``POST /embed`` and ``GET /info``.

Pure functions, no HTTP: :func:`parse_embed` turns a TEI request body into groups of texts
that share one :class:`~embedcache.models.RequestOptions` (one group per task), and
:func:`render_embed`, :func:`render_error`, :func:`render_failure` and :func:`render_info`
write TEI's response bodies: a bare JSON array of float arrays, in input order, and
``{"error": ..., "error_type": ...}``.

TEI requests name no model or task: those come from the server's settings
(``--tei-model``, ``--tei-task``). Milvus's ``tei`` provider can only tell documents from
queries by a prompt it prepends to every text, so a text that starts with ``<task>: `` for a
task the model knows (``retrieval.query: ``) is embedded with that task, the prefix removed
before it is keyed and sent. Any other prefix is just text.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from ..config import VERSION
from ..errors import APIError, EmbedcacheError, InvalidInputError
from ..models import RequestOptions, resolve_options, spec_for
from .wire import error_status, redact_urls

__all__ = [
    "INFO_PATH",
    "MAX_BODY_BYTES",
    "TEI_PATH",
    "TeiInputError",
    "TeiRequest",
    "parse_embed",
    "render_embed",
    "render_error",
    "render_failure",
    "render_info",
    "task_prefixes",
]

TEI_PATH = "/embed"
INFO_PATH = "/info"
#: TEI's own default ``--payload-limit``: TEI clients are written to stay under it, and a
#: body over it is refused before it is parsed.
MAX_BODY_BYTES = 2_000_000
_FIELDS = frozenset({"inputs", "normalize", "truncate", "truncation_direction", "prompt_name"})
_DIRECTIONS = frozenset({"left", "right"})


class TeiInputError(ValueError):
    """A request TEI's API would refuse, with TEI's status and ``error_type`` for it.

    TEI answers 413 ``validation`` for a request over its limits, 400 ``empty`` for no
    inputs; a body of the wrong shape gets 422, as TEI's JSON extractor answers it. Not an
    :class:`~embedcache.errors.EmbedcacheError`: it never leaves the proxy, which answers
    it (the library's errors all live in :mod:`embedcache.errors`).
    """

    def __init__(self, message: str, status: int = 422, error_type: str = "validation") -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


@dataclass(frozen=True)
class TeiGroup:
    """The texts of one request that share a task: sent and keyed with ``options``;
    ``positions[i]`` is where ``texts[i]`` stands in the request's inputs."""

    options: RequestOptions
    texts: list[str]
    positions: list[int]


@dataclass(frozen=True)
class TeiRequest:
    """A parsed ``POST /embed``: its groups in the order their first text appears."""

    groups: list[TeiGroup]
    count: int


@functools.lru_cache(maxsize=64)
def task_prefixes(model: str) -> dict[str, str]:
    """The prompt names the model takes as a task, mapped to the task sent: every task of
    the model and its aliases (``clustering`` is v3's ``separation``). Empty for models
    without a task field, and for models embedcache does not know."""
    spec = spec_for(model)
    if spec is None or spec.tasks is None:
        return {}
    names = {task: task for task in spec.tasks}
    names.update(spec.task_aliases)
    return names


def parse_embed(raw: bytes, model: str, task: str | None) -> TeiRequest:
    """Read a ``POST /embed`` body for ``model``, its texts embedded with ``task`` unless a
    ``prompt_name`` or a text's own ``<task>: `` prefix names another.

    :raises TeiInputError: for anything TEI or the Jina API would refuse, before anything
        is spent: not a JSON object, unknown fields, wrong types, no inputs, too many or
        too much, an option the model does not take.
    """
    if len(raw) > MAX_BODY_BYTES:
        raise TeiInputError(
            f"the request body is {len(raw)} bytes; the most /embed takes is {MAX_BODY_BYTES}",
            413,
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise TeiInputError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise TeiInputError("the request body must be a JSON object")
    unknown = sorted(body.keys() - _FIELDS)
    if unknown:
        # An ignored field could change what the client thinks it gets: refuse rather than
        # serve a vector the key does not describe.
        taken = ", ".join(sorted(_FIELDS))
        raise TeiInputError(f"unknown field {unknown[0]!r}; /embed takes {taken}")
    texts = _inputs(body.get("inputs"))
    normalize = _flag(body, "normalize")
    truncate = _flag(body, "truncate")
    # Milvus sends the direction as its user wrote it ("right", "left"); TEI's own
    # spelling is "Right", "Left".
    direction = body.get("truncation_direction")
    if direction is not None:
        if not isinstance(direction, str) or direction.lower() not in _DIRECTIONS:
            message = f"truncation_direction must be 'Left' or 'Right', got {direction!r}"
            raise TeiInputError(message)
        direction = direction.lower()
    if truncate and direction == "left":
        raise TeiInputError(
            "truncation_direction 'Left' is not available: the Jina API keeps the start of a "
            "text and cuts its end"
        )
    prefixes = task_prefixes(model)
    prompt = body.get("prompt_name")
    if prompt is not None:
        if not isinstance(prompt, str) or prompt not in prefixes:
            valid = ", ".join(prefixes) or "none"
            raise TeiInputError(f"prompt_name {prompt!r} is not a task of {model}; valid: {valid}")
        task = prefixes[prompt]
    spec = spec_for(model)
    most = spec.max_items if spec else None
    if most is not None and len(texts) > most:
        raise TeiInputError(f"batch size {len(texts)} > maximum allowed batch size {most}", 413)
    # Absent and TEI's defaults map to the Jina field left out (the API's own defaults:
    # normalized, not truncated), so every client's requests share entries.
    normalized = False if normalize is False else None
    truncated = True if truncate else None
    groups: dict[str | None, TeiGroup] = {}
    for position, text in enumerate(texts):
        text_task = task
        head, colon, rest = text.partition(": ")
        if colon and head in prefixes:
            text_task, text = prefixes[head], rest
        group = groups.get(text_task)
        if group is None:
            options = _options(model, text_task, normalized, truncated)
            group = groups[text_task] = TeiGroup(options, [], [])
        group.texts.append(text)
        group.positions.append(position)
    return TeiRequest(list(groups.values()), len(texts))


@functools.lru_cache(maxsize=256)
def _options(
    model: str, task: str | None, normalized: bool | None, truncate: bool | None
) -> RequestOptions:
    try:
        return resolve_options(model, task, normalized=normalized, truncate=truncate)
    except InvalidInputError as exc:
        if normalized is False and "normalized" in str(exc):
            raise TeiInputError(f"normalize: false is not available: {exc}") from None
        raise TeiInputError(str(exc)) from None


def _inputs(value: object) -> list[str]:
    if value is None:
        raise TeiInputError("inputs is required: a string or a list of strings")
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise TeiInputError(f"inputs must be a string or a list of strings, got {_kind(value)}")
    if not value:
        raise TeiInputError("`inputs` cannot be empty", 400, "empty")
    texts: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            # TEI also takes token ids; the Jina API takes only text.
            raise TeiInputError(f"inputs[{index}] must be a string, got {_kind(item)}")
        texts.append(item)
    return texts


def _flag(body: dict[str, object], name: str) -> bool | None:
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise TeiInputError(f"{name} must be true or false, got {_kind(value)}")


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else "null")


def render_embed(embeddings: Sequence[bytes]) -> bytes:
    """TEI's success body: the embeddings' JSON text (each from
    :func:`~embedcache.proxy.wire.render_vector`), as one array in input order."""
    return b"[" + b",".join(embeddings) + b"]"


def render_error(message: str, error_type: str = "validation") -> bytes:
    """An error body in TEI's shape, its message on one line (any URL in it without
    credentials)."""
    return orjson.dumps({"error": " ".join(redact_urls(message).split()), "error_type": error_type})


def render_failure(exc: EmbedcacheError | TeiInputError) -> tuple[int, bytes]:
    """The status and TEI-shaped body for ``exc``: TEI's own for bad input, else the
    status the Jina dialect gives it (the upstream's for API errors)."""
    if isinstance(exc, TeiInputError):
        return exc.status, render_error(str(exc), exc.error_type)
    status = error_status(exc)
    message = (exc.detail or str(exc)) if isinstance(exc, APIError) else str(exc)
    return status, render_error(message, error_type(status))


def error_type(status: int) -> str:
    """TEI's ``error_type`` closest to an HTTP status (TEI names no auth errors of its
    own: a refused key is the request's fault, so ``validation``)."""
    if status == 429:
        return "overloaded"
    if status == 503:
        return "unhealthy"
    return "backend" if status >= 500 else "validation"


def render_info(model: str, task: str | None, max_concurrent_requests: int) -> bytes:
    """``GET /info``: TEI's description of the served model, plus what embedcache adds
    (the default task and the prompts taken as tasks)."""
    spec = spec_for(model)
    prefixes = task_prefixes(model)
    info = {
        "model_id": model,
        "model_sha": None,
        "model_dtype": "float32",
        "model_type": {"embedding": {"pooling": "mean"}},
        "max_concurrent_requests": max_concurrent_requests,
        "max_input_length": spec.max_input_tokens if spec else None,
        "max_batch_tokens": None,
        "max_batch_requests": None,
        "max_client_batch_size": spec.max_items if spec else None,
        "auto_truncate": False,
        "tokenization_workers": None,
        "version": VERSION,
        "sha": None,
        "docker_label": None,
        "embedcache": {"task": task, "task_prefixes": [f"{name}: " for name in prefixes]},
    }
    return orjson.dumps(info)
