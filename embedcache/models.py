"""What each Jina embedding model accepts, and the validated options of one request.

The table follows the API reference (shared/docs/jina-api.md §2.2, §4). Where the reference
marks a limit UNCONFIRMED we neither reject nor promise: the field is ``None`` and the API
decides. Unknown model names pass through without task or dimension validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import DEFAULT_TASK, EMBEDDINGS_PATH
from .errors import InvalidInputError
from .inputs import Media
from .tokens import estimate_tokens

__all__ = [
    "EMBEDDING_TYPES",
    "INPUT_TYPES",
    "MODELS",
    "MODEL_DEFAULT_TASK",
    "MULTI_VECTOR_PATH",
    "RERANK_IMAGE_MODELS",
    "RERANK_LISTWISE_MODELS",
    "RERANK_POINTWISE_MODELS",
    "ModelSpec",
    "RequestOptions",
    "check_rerank_model",
    "default_task",
    "is_listwise",
    "names_jina_reranker",
    "resolve_options",
    "spec_for",
]

#: The ``task`` that stands for the model's own (see :func:`default_task`): the default of
#: ``JinaEmbeddingFunction``'s ``task``. Not a task name: none of Jina's models has a task
#: of that name, and it is never sent.
MODEL_DEFAULT_TASK = "default"

#: The only wire encoding embedcache asks the API for: raw float32, exact and 4x smaller
#: than JSON floats.
UPSTREAM_EMBEDDING_TYPE = "base64"
#: The output kinds a cached entry can be (its ``embedding_type`` field): float vectors
#: (asked for as base64, exact), and the packed sign bits of ``binary`` (int8) and
#: ``ubinary`` (uint8), which are not derivable from the floats the cache holds (the API's
#: own threshold and bit order are unconfirmed), so each is an entry of its own.
EMBEDDING_TYPES = (UPSTREAM_EMBEDDING_TYPE, "binary", "ubinary")
#: The ColBERT models' ``input_type`` values (their stand-in for ``task``).
INPUT_TYPES = ("query", "document")
#: Where the ColBERT models are served (``/v1/embeddings`` serves them too in the 2026 spec,
#: but the older specs and clients use this path, which every version has).
MULTI_VECTOR_PATH = "/v1/multi-vector"
#: The width of one per-token row of a multi-vector answer (v4 and ColBERT alike).
MULTI_VECTOR_DIM = 128
DEFAULT_MAX_ITEMS = 2048


@dataclass(frozen=True)
class ModelSpec:
    """Request limits and parameters of one model."""

    name: str
    native_dim: int
    #: Inclusive ``dimensions`` range, or ``None`` when the model has no such field.
    dimensions: tuple[int, int] | None
    #: Valid ``task`` values, or ``None`` when the model has no such field.
    tasks: tuple[str, ...] | None
    normalized: bool
    late_chunking: bool
    max_items: int = DEFAULT_MAX_ITEMS
    #: Per-input token limit, or ``None`` where the reference does not confirm one.
    max_input_tokens: int | None = 8192
    #: Tasks used by ``encode_documents`` / ``encode_queries``.
    passage_task: str | None = "retrieval.passage"
    query_task: str | None = "retrieval.query"
    #: Spellings accepted for a task, mapped to the name sent upstream.
    task_aliases: dict[str, str] = field(default_factory=dict)
    #: The kinds of input it takes: ``text``, and ``image`` and ``pdf`` on multimodal models.
    inputs: tuple[str, ...] = ("text",)
    #: Multi-vector outputs: ``"no"``; ``"option"`` (``return_multivector``, v4);
    #: ``"only"`` (the ColBERT models: one row per token, ``input_type`` instead of ``task``,
    #: served at :data:`MULTI_VECTOR_PATH`).
    multivector: str = "no"
    #: The ``dimensions`` a model takes from a fixed list (ColBERT), ``None``: the range.
    dimension_choices: tuple[int, ...] | None = None


def _v2(name: str) -> ModelSpec:
    return ModelSpec(
        name, 768, None, None, normalized=True, late_chunking=False, passage_task=None,
        query_task=None,
    )  # fmt: skip


_V5_TASKS = (
    "retrieval.query", "retrieval.passage", "text-matching", "clustering", "classification",
)  # fmt: skip
_CODE_TASKS = tuple(
    f"{kind}.{side}"
    for kind in ("nl2code", "qa", "code2code", "code2nl", "code2completion")
    for side in ("query", "passage")
)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        *(_v2(f"jina-embeddings-v2-base-{lang}") for lang in ("en", "zh", "de", "es", "code")),
        ModelSpec(
            "jina-embeddings-v3", 1024, (1, 1024),
            ("retrieval.query", "retrieval.passage", "text-matching", "classification",
             "separation"),
            normalized=True, late_chunking=True,
            # The Milvus docs name v3's clustering adapter "clustering"; the API calls it
            # "separation" (reference §11). Both spellings share cache entries.
            task_aliases={"clustering": "separation"},
        ),
        ModelSpec(
            "jina-embeddings-v4", 2048, (1, 2048),
            ("text-matching", "retrieval.query", "retrieval.passage", "code.query",
             "code.passage"),
            normalized=False, late_chunking=True, max_items=512, max_input_tokens=32768,
            inputs=("text", "image", "pdf"), multivector="option",
        ),
        ModelSpec(
            "jina-embeddings-v5-text-small", 1024, (1, 1024), _V5_TASKS,
            normalized=True, late_chunking=False, max_input_tokens=32768,
        ),
        # Context 8K vs 32K and a dimensions cap of 768 vs 1024 conflict in the sources:
        # take the permissive side and let the API decide.
        ModelSpec(
            "jina-embeddings-v5-text-nano", 768, (1, 1024), _V5_TASKS,
            normalized=True, late_chunking=False, max_input_tokens=32768,
        ),
        ModelSpec(
            "jina-clip-v1", 768, None, None, normalized=True, late_chunking=False,
            passage_task=None, query_task=None, inputs=("text", "image"),
        ),
        ModelSpec(
            "jina-clip-v2", 1024, (1, 1024), ("retrieval.query",), normalized=True,
            late_chunking=False, passage_task=None, inputs=("text", "image"),
        ),
        ModelSpec(
            "jina-code-embeddings-0.5b", 896, (1, 896), _CODE_TASKS, normalized=False,
            late_chunking=False, max_input_tokens=None, passage_task="nl2code.passage",
            query_task="nl2code.query",
        ),
        ModelSpec(
            "jina-code-embeddings-1.5b", 1536, (1, 1536), _CODE_TASKS, normalized=False,
            late_chunking=False, max_input_tokens=None, passage_task="nl2code.passage",
            query_task="nl2code.query",
        ),
        # ColBERT: multi-vector only, text only, 128-d rows; no task, no normalized field.
        ModelSpec(
            "jina-colbert-v2", MULTI_VECTOR_DIM, (64, 128), None, normalized=False,
            late_chunking=False, passage_task=None, query_task=None, multivector="only",
            dimension_choices=(128, 96, 64),
        ),
        ModelSpec(
            "jina-colbert-v1-en", MULTI_VECTOR_DIM, None, None, normalized=False,
            late_chunking=False, passage_task=None, query_task=None, multivector="only",
        ),
    )
}  # fmt: skip


def spec_for(model: str) -> ModelSpec | None:
    """The spec of a known model, or ``None`` for a model embedcache does not know."""
    return MODELS.get(model)


def default_task(model: str) -> str | None:
    """The task sent for ``model`` when none is chosen: its document task
    (``retrieval.passage`` on v3, v4 and v5, ``nl2code.passage`` on the code models); none
    for a model without tasks (v2, jina-clip-v1) or whose only task is for queries
    (jina-clip-v2); ``retrieval.passage`` for a model embedcache does not know (what it
    sent before models were told apart, so such caches keep their entries).

    >>> default_task("jina-embeddings-v3"), default_task("jina-clip-v2")
    ('retrieval.passage', None)
    """
    # A model name that is no string is refused by resolve_options, with its message.
    spec = spec_for(model) if isinstance(model, str) else None
    return spec.passage_task if spec is not None else DEFAULT_TASK


#: Rerankers whose score of a (query, document) pair does not depend on the other documents
#: (Jina's API guide, 2025-09): one cache entry per pair.
RERANK_POINTWISE_MODELS = frozenset(
    {"jina-reranker-v2-base-multilingual", "jina-reranker-m0", "jina-colbert-v2"}
)
#: Rerankers that read the query and every document in one context (a document's score
#: depends on the others): one entry per position of the whole ordered list. A model not
#: known to be pointwise is treated so too: the safe side.
RERANK_LISTWISE_MODELS = frozenset({"jina-reranker-v3"})
#: The one reranker that takes images, as the query or as documents.
RERANK_IMAGE_MODELS = frozenset({"jina-reranker-m0"})


def is_listwise(model: str) -> bool:
    """Whether ``model``'s scores depend on the whole candidate list: true for
    jina-reranker-v3 and for any model not known to be pointwise."""
    return model not in RERANK_POINTWISE_MODELS


def names_jina_reranker(model: object) -> bool:
    """Whether a rerank body's ``model`` names a Jina reranker: one embedcache knows, or
    any ``jina-reranker-*``. Where the proxy's non-Jina dialects (TEI, vLLM, Cohere) name
    anything else, or nothing, it reranks with ``serve --rerank-model``."""
    known = RERANK_POINTWISE_MODELS | RERANK_LISTWISE_MODELS
    return isinstance(model, str) and (model in known or model.startswith("jina-reranker-"))


def check_rerank_model(model: object) -> str:
    """``model`` if it can be a reranker: refused are names that are no string or empty,
    and the embedding models embedcache knows that are not rerankers.

    :raises InvalidInputError: naming the model.
    """
    if not isinstance(model, str) or not model:
        raise InvalidInputError(f"a rerank model is a non-empty string, got {model!r:.60}")
    if model in MODELS and model not in RERANK_POINTWISE_MODELS | RERANK_LISTWISE_MODELS:
        known = ", ".join(sorted(RERANK_POINTWISE_MODELS | RERANK_LISTWISE_MODELS))
        raise InvalidInputError(
            f"{model} is an embedding model, not a reranker (rerankers: {known})"
        )
    return model


@dataclass(frozen=True)
class RequestOptions:
    """Every request field except ``input``, exactly as it will be sent.

    ``None`` means the field is left out of the request, which the cache key keeps apart
    from any explicit value. Build it with :func:`resolve_options`.
    """

    model: str
    task: str | None = None
    dimensions: int | None = None
    normalized: bool | None = None
    truncate: bool | None = None
    late_chunking: bool = False
    #: The output kind (:data:`EMBEDDING_TYPES`): float vectors, asked for as ``base64``
    #: (exact), or the packed bits of ``binary`` / ``ubinary``.
    embedding_type: str = UPSTREAM_EMBEDDING_TYPE
    #: jina-embeddings-v4's ``return_multivector``: one 128-d row per token.
    return_multivector: bool = False
    #: The ColBERT models' ``query`` or ``document`` side (``None``: not sent).
    input_type: str | None = None

    def body_fields(self) -> dict[str, object]:
        """The request body without ``input``: the single source of what the key covers."""
        body: dict[str, object] = {"model": self.model, "embedding_type": self.embedding_type}
        if self.return_multivector:
            body["return_multivector"] = True
        if self.input_type is not None:
            body["input_type"] = self.input_type
        if self.task is not None:
            body["task"] = self.task
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        if self.normalized is not None:
            body["normalized"] = self.normalized
        if self.truncate is not None:
            body["truncate"] = self.truncate
        if self.late_chunking:
            body["late_chunking"] = True
        return body

    @property
    def spec(self) -> ModelSpec | None:
        return spec_for(self.model)

    @property
    def multivector(self) -> bool:
        """Whether each input's answer is rows, one per token (``return_multivector``, or
        a ColBERT model)."""
        spec = self.spec
        return self.return_multivector or (spec is not None and spec.multivector == "only")

    @property
    def plain(self) -> bool:
        """Whether each input's entry is one float32 vector (the cache's first kind, read
        and written by the vector path); else it is a payload (rows, or packed bits)."""
        return self.embedding_type == UPSTREAM_EMBEDDING_TYPE and not self.multivector

    @property
    def path(self) -> str:
        """The API path a request with these options goes to."""
        spec = self.spec
        return (
            MULTI_VECTOR_PATH
            if spec is not None and spec.multivector == "only"
            else (EMBEDDINGS_PATH)
        )

    @property
    def row_width(self) -> int | None:
        """The float width of one vector (of one row, multi-vector), when known before
        asking; packed bits hold ``ceil(row_width / 8)`` values a row."""
        if self.return_multivector:
            return MULTI_VECTOR_DIM
        return self.expected_dim

    @property
    def expected_dim(self) -> int | None:
        """The vector length the API must return, when it is known before asking."""
        if self.dimensions is not None:
            return self.dimensions
        spec = self.spec
        return spec.native_dim if spec else None

    @property
    def max_items(self) -> int:
        spec = self.spec
        return spec.max_items if spec else DEFAULT_MAX_ITEMS

    @property
    def input_limit(self) -> int | None:
        """The most tokens one input may hold, ``None`` when none applies (the model's
        limit is unknown, or the API truncates)."""
        spec = self.spec
        return None if self.truncate or spec is None else spec.max_input_tokens

    def check_media(self, media: Media, where: str) -> None:
        """Refuse an image or PDF this request cannot send (named by ``where``): a model
        that does not take its kind (a model embedcache does not know may), or late
        chunking, which takes texts only.

        :raises InvalidInputError: saying which models take it.
        """
        if self.late_chunking:
            raise InvalidInputError(f"{where}: late chunking takes texts only, not {media.noun}")
        spec = self.spec
        if spec is not None and media.kind not in spec.inputs:
            takers = ", ".join(name for name, s in MODELS.items() if media.kind in s.inputs)
            raise InvalidInputError(
                f"{where}: {spec.name} takes text only, not {media.noun} (models that do: {takers})"
            )

    def too_long(self, text: str) -> int | None:
        """``text``'s estimated tokens when over :attr:`input_limit`, else ``None``: the one
        rule the caching core, the CLI's per-line check and the proxy share."""
        limit = self.input_limit
        # Every estimated token spans at least one character: most texts need no estimate.
        if limit is None or len(text) <= limit:
            return None
        tokens = estimate_tokens(text)
        return tokens if tokens > limit else None


def resolve_options(
    model: str,
    task: str | None = None,
    dimensions: int | None = None,
    *,
    late_chunking: bool = False,
    normalized: bool | None = None,
    truncate: bool | None = None,
    embedding_type: str = "float",
    return_multivector: bool = False,
    input_type: str | None = None,
) -> RequestOptions:
    """Validate user-facing options and return what will be sent.

    For known models: task aliases are mapped (``clustering`` → ``separation`` on v3); a task
    or ``dimensions`` equal to the native size is dropped for models without that field;
    anything else the model does not take raises. ``embedding_type`` ``float`` (or
    ``base64``: the same values) is asked for as base64; ``binary``/``ubinary`` are outputs
    of their own. A ColBERT model's ``input_type`` defaults to ``document`` (the API's
    default, sent, so both spellings share entries).

    :raises InvalidInputError: naming the option and the accepted values.
    """
    if not isinstance(model, str) or not model.strip():
        raise InvalidInputError(f"model must be a non-empty string, got {model!r}")
    if task is not None and not isinstance(task, str):
        raise InvalidInputError(f"task must be a string or None, got {type(task).__name__}")
    if dimensions is not None and (
        isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
    ):
        raise InvalidInputError(f"dimensions must be a positive integer, got {dimensions!r}")
    for name, flag in (("normalized", normalized), ("truncate", truncate)):
        if flag is not None and not isinstance(flag, bool):
            raise InvalidInputError(f"{name} must be True, False or None, got {flag!r}")

    wire_type = _output_type(embedding_type)
    spec = spec_for(model)
    if spec is None:
        return RequestOptions(
            model, task, dimensions, normalized, truncate, bool(late_chunking), wire_type,
            bool(return_multivector), input_type,
        )  # fmt: skip
    input_type = _check_output(spec, dimensions, late_chunking, return_multivector, input_type)
    # A ColBERT model's answers are multi-vector without the field (which it refuses).
    return_multivector = bool(return_multivector) and spec.multivector == "option"

    if spec.tasks is None:
        task = None  # the model has no task field; sending one is at best ignored
    elif task is not None:
        task = spec.task_aliases.get(task, task)
        if task not in spec.tasks:
            valid = ", ".join(spec.tasks + tuple(spec.task_aliases))
            raise InvalidInputError(f"unknown task {task!r} for {model}; valid tasks: {valid}")

    if dimensions is not None:
        if spec.dimensions is None:
            if dimensions != spec.native_dim:
                raise InvalidInputError(
                    f"{model} has a fixed size of {spec.native_dim} dimensions, "
                    f"got dimensions={dimensions}"
                )
            dimensions = None
        elif spec.dimension_choices is not None and dimensions not in spec.dimension_choices:
            listed = ", ".join(map(str, spec.dimension_choices))
            raise InvalidInputError(f"dimensions={dimensions} is not offered by {model} ({listed})")
        elif not spec.dimensions[0] <= dimensions <= spec.dimensions[1]:
            low, high = spec.dimensions
            raise InvalidInputError(
                f"dimensions={dimensions} is out of range for {model} ({low} to {high})"
            )
    if late_chunking and not spec.late_chunking:
        raise InvalidInputError(f"{model} does not support late_chunking")
    if normalized is not None and not spec.normalized:
        raise InvalidInputError(f"{model} does not take the normalized option")
    return RequestOptions(
        model, task, dimensions, normalized, truncate, bool(late_chunking), wire_type,
        return_multivector, input_type,
    )  # fmt: skip


def _output_type(embedding_type: object) -> str:
    """The ``embedding_type`` a request asks for the output kind ``embedding_type``."""
    if embedding_type in ("float", UPSTREAM_EMBEDDING_TYPE):
        return UPSTREAM_EMBEDDING_TYPE
    if embedding_type in EMBEDDING_TYPES:
        return str(embedding_type)
    raise InvalidInputError(
        f"embedding_type must be one of float, binary, ubinary; got {embedding_type!r}"
    )


def _check_output(
    spec: ModelSpec,
    dimensions: int | None,
    late_chunking: bool,
    return_multivector: bool,
    input_type: str | None,
) -> str | None:
    """Refuse the multi-vector options ``spec`` does not take (as the API would, before
    sending); return the ``input_type`` to send."""
    model = spec.name
    if return_multivector and spec.multivector == "no":
        takers = ", ".join(name for name, s in MODELS.items() if s.multivector != "no")
        raise InvalidInputError(f"{model} has no multi-vector output (models that do: {takers})")
    if return_multivector and spec.multivector == "option":
        if dimensions is not None:
            raise InvalidInputError("return_multivector cannot be combined with dimensions")
        if late_chunking:
            raise InvalidInputError("return_multivector cannot be combined with late_chunking")
    if spec.multivector != "only":
        if input_type is not None:
            raise InvalidInputError(
                f"{model} takes no input_type (the ColBERT models do); use task instead"
            )
        return None
    if input_type is None:
        return "document"
    if input_type not in INPUT_TYPES:
        raise InvalidInputError(f"input_type must be query or document, got {input_type!r}")
    return input_type
