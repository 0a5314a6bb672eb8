"""Multi-vector outputs: jina-embeddings-v4's ``return_multivector`` and the ColBERT models.

The answer's items are ``{"object": "embeddings", "index": i, "embeddings": [[...], ...]}``
(reference §3.1), one row per token. The emulator's rules (choices where marked):

- A text gives one row per estimated token (``embedcache.tokens.estimate_tokens``), at
  least 1; an image gives :data:`IMAGE_ROWS` rows and a PDF that many per page (choice: a
  fixed count per picture, as a patch grid would give).
- Each row is 128 floats drawn from a seed of (model, task or ``input_type``, the item's
  content, the row's position), cut to ``dimensions`` (ColBERT v2), L2-normalised, float32.
- v4: ``return_multivector`` cannot be combined with ``dimensions`` (422, reference §2.1);
  ``return_tokenized_input: true`` is refused with a 422 (choice: the emulator has no real
  tokenizer to show), ``false`` is accepted; ``late_chunking`` with ``return_multivector``
  is a 422 (choice: what the API does is unconfirmed).
- ``POST /v1/multi-vector`` serves jina-colbert-v2 and jina-colbert-v1-en (and, as the 2026
  spec selects them by ``model``, so does ``/v1/embeddings``). ``input_type`` is ``query`` or
  ``document`` (default), ``dimensions`` 128, 96 or 64 on v2 and only 128 on v1-en (422
  otherwise); the fields are ``model``, ``input``, ``input_type``, ``embedding_type`` (or
  ``encoding_type``), ``dimensions`` and ``truncate``; text inputs only.
- ``embedding_type`` applies to each row: ``base64`` gives a list of strings, one per row
  (choice: the sources do not show base64 multi-vectors), ``binary``/``ubinary`` a list of
  ``ceil(d / 8)`` integers per row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xxhash
from numpy.typing import NDArray

from ..models import ModelSpec
from .protocol import validation_error

__all__ = [
    "COLBERT_DIMENSIONS",
    "COLBERT_FIELDS",
    "COLBERT_MODELS",
    "IMAGE_ROWS",
    "MULTI_VECTOR_DIM",
    "MULTI_VECTOR_PATH",
    "V4_MULTIVECTOR_FIELDS",
    "check_v4_multivector",
    "colbert_options",
    "multivector_rows",
]

#: The path of the ColBERT models in the older specs (still what embcli-jina calls).
MULTI_VECTOR_PATH = "/v1/multi-vector"
#: Width of one per-token row.
MULTI_VECTOR_DIM = 128
#: Rows of one image (and of each PDF page) in a multi-vector answer (a choice).
IMAGE_ROWS = 16
#: ``dimensions`` each ColBERT model takes.
COLBERT_DIMENSIONS: dict[str, tuple[int, ...]] = {
    "jina-colbert-v2": (128, 96, 64),
    "jina-colbert-v1-en": (128,),
}
#: The ColBERT models as the validator sees them (not in ``embedcache.models``, which lists
#: what the cache serves today): text only, 8,192 tokens an input (the v2 card's context).
COLBERT_MODELS: dict[str, ModelSpec] = {
    name: ModelSpec(
        name, MULTI_VECTOR_DIM, None, None, normalized=True, late_chunking=False,
        passage_task=None, query_task=None,
    )
    for name in COLBERT_DIMENSIONS
}  # fmt: skip
COLBERT_FIELDS = frozenset(
    {"model", "input", "input_type", "embedding_type", "encoding_type", "dimensions", "truncate"}
)
#: Fields jina-embeddings-v4 takes besides the common ones.
V4_MULTIVECTOR_FIELDS = frozenset({"return_multivector", "return_tokenized_input"})
_INPUT_TYPES = ("query", "document")


def check_v4_multivector(
    body: dict[str, Any], *, multivector: bool, tokenized: bool, late_chunking: bool
) -> None:
    """Refuse what jina-embeddings-v4's ``return_multivector`` (``multivector``) and
    ``return_tokenized_input`` (``tokenized``) cannot be combined with.

    :raises ApiError: 422 for ``return_multivector`` with ``dimensions`` or
        ``late_chunking``, and for ``return_tokenized_input: true``.
    """
    if tokenized and not multivector:
        raise validation_error(
            "return_tokenized_input", "return_tokenized_input requires return_multivector"
        )
    if tokenized:
        raise validation_error(
            "return_tokenized_input", "not supported by the emulator (it has no tokenizer)"
        )
    if multivector and body.get("dimensions") is not None:
        raise validation_error(
            "dimensions", "Cannot be used with return_multivector", "unsupported"
        )
    if multivector and late_chunking:
        raise validation_error(
            "late_chunking", "Cannot be used with return_multivector", "unsupported"
        )


def colbert_options(spec: ModelSpec, body: dict[str, Any]) -> tuple[str, int]:
    """``(input_type, dimensions)`` of a ColBERT body.

    :raises ApiError: 422 for an unknown ``input_type`` or a ``dimensions`` the model does
        not offer.
    """
    input_type = body.get("input_type")
    if input_type is None:
        input_type = "document"
    if input_type not in _INPUT_TYPES:
        raise validation_error("input_type", "Input should be 'query' or 'document'", "enum")
    dimensions = body.get("dimensions")
    allowed = COLBERT_DIMENSIONS[spec.name]
    if dimensions is None:
        return str(input_type), MULTI_VECTOR_DIM
    if isinstance(dimensions, bool) or dimensions not in allowed:
        listed = ", ".join(str(d) for d in allowed)
        raise validation_error("dimensions", f"Input should be one of {listed}", "enum")
    return str(input_type), int(dimensions)


def multivector_rows(seed: int, rows: int, dimensions: int) -> NDArray[np.float32]:
    """``rows`` L2-normalised rows of ``dimensions`` floats (a ``(rows, dimensions)``
    float32 array); row ``i`` depends only on ``seed`` and ``i``, so an item's rows do not
    depend on the rest of the request."""
    out = np.empty((rows, dimensions), dtype=np.float32)
    for position in range(rows):
        digest = xxhash.xxh3_64()
        digest.update(seed.to_bytes(8, "little"))
        digest.update(position.to_bytes(8, "little"))
        row = np.random.default_rng(digest.intdigest()).standard_normal(MULTI_VECTOR_DIM)
        row = row[:dimensions]
        out[position] = (row / float(np.linalg.norm(row))).astype(np.float32)
    return out
