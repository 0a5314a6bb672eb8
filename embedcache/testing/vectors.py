"""Deterministic fake embeddings and their wire encodings.

A vector is a standard-normal draw seeded by a hash of (model, task, content: a text, or the
SHA-256 of an image's or PDF's bytes), so the same request gives bit-identical float32
values in every process, and different models, tasks or texts give unrelated vectors. Every
row is computed on its own with 1-D operations, so a text's vector does not depend on the
rest of a (non-late-chunking) batch, not even in its last bit, and
:meth:`JinaEmulator.expected_embedding` reproduces it exactly.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
import xxhash
from numpy.typing import NDArray

__all__ = ["EMBEDDING_TYPES", "FLOAT_STYLES", "compute_vectors", "content_seed", "encode"]

EMBEDDING_TYPES = ("float", "base64", "binary", "ubinary")
#: How ``float`` values can be written (reference §12): each float32 value with the digits
#: that read back as the same float64, or the shortest digits that read back as the same
#: float32. The evidence disagrees on which the API writes, so the emulator does both.
FLOAT_STYLES = ("float64", "float32")


def content_seed(kind: str, model: str, task: str | None, content: str) -> int:
    """The RNG seed of one input item.

    Each part is length-prefixed, so no choice of texts can make two different
    (model, task, content) triples hash the same input bytes.
    """
    digest = xxhash.xxh3_64()
    for part in (kind, model, task or "", content):
        # surrogatepass: JSON may carry lone surrogates ("\\ud800"), which plain UTF-8 rejects.
        raw = part.encode("utf-8", "surrogatepass")
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.intdigest()


def compute_vectors(
    seeds: Sequence[int],
    native_dim: int,
    *,
    dimensions: int | None,
    normalize: bool,
    late_chunking: bool,
) -> list[NDArray[np.float32]]:
    """One float32 vector per seed.

    Order of operations: draw in float64, mix with the rest of the request under late
    chunking (see :func:`_contextualise`), keep the first ``dimensions`` components
    (Matryoshka), L2-normalise, cast to float32.
    Re-normalising after truncation is an emulator choice (reference §9.9: UNCONFIRMED).
    """
    raw = [np.random.default_rng(seed).standard_normal(native_dim) for seed in seeds]
    if late_chunking and raw:
        raw = list(_contextualise(np.stack(raw)))
    out: list[NDArray[np.float32]] = []
    for vector in raw:
        if dimensions is not None:
            vector = vector[:dimensions]
        if normalize:
            norm = float(np.linalg.norm(vector))
            if norm > 0.0:
                vector = vector / norm
        out.append(vector.astype(np.float32))
    return out


def _contextualise(own: NDArray[np.float64]) -> NDArray[np.float64]:
    """Stand-in for late chunking: ``0.5 * own[i] + 0.3 * before[i] + 0.2 * after[i]``.

    ``before[i]`` is a position-weighted mean of rows ``0..i`` (weights ``j + 1``) and
    ``after[i]`` one of rows ``i..n-1`` (weights ``n - j``). So, like a real long-context
    model, each vector depends on every other item of the request *and on their order*
    (reference §8). A plain ``0.5 * own + 0.5 * mean(all)`` would give a text the same
    vector in every permutation of its group, and equal weights on both sides the same
    vector in the reversed group. A one-item request gets exactly its own vector.
    O(n·d) through cumulative sums.
    """
    count = own.shape[0]
    if count == 1:
        return own  # exactly, not 0.5x + 0.3x + 0.2x rounded
    ahead = np.arange(1, count + 1, dtype=np.float64)[:, None]  # weight j + 1
    behind = ahead[::-1]  # weight n - j
    prefix = np.cumsum(ahead * own, axis=0) / np.cumsum(ahead, axis=0)
    suffix = (np.cumsum((behind * own)[::-1], axis=0) / np.cumsum(behind[::-1], axis=0))[::-1]
    mixed: NDArray[np.float64] = 0.5 * own + 0.3 * prefix + 0.2 * suffix
    return mixed


def encode(
    vector: NDArray[np.float32],
    embedding_type: str,
    *,
    short_base64: bool = False,
    float_style: str = "float64",
) -> Any:
    """One vector as the API writes it for ``embedding_type``.

    ``float`` values are Python floats that ``json`` writes in ``float_style`` (see
    :data:`FLOAT_STYLES`). ``binary``/``ubinary`` are sign bits (``> 0``) packed MSB-first
    by ``np.packbits``; bit order and threshold are emulator choices (reference §3.2:
    UNCONFIRMED).
    """
    if embedding_type == "float":
        if float_style == "float32":
            # numpy's str of a float32 is its shortest decimal, which json writes back as is
            # (the docs playground capture's ~8 significant digits).
            return [float(str(value)) for value in vector]
        # The float64 of each float32 value, which json writes with float64's round-trip
        # digits (the Milvus page's printed output).
        return vector.astype(np.float64).tolist()
    if embedding_type == "base64":
        raw = vector.astype("<f4").tobytes()
        if short_base64:
            raw = raw[:-2]
        return base64.b64encode(raw).decode("ascii")
    packed = np.packbits(vector > 0)
    if embedding_type == "ubinary":
        return packed.tolist()
    if embedding_type == "binary":
        return (packed.astype(np.int16) - 128).tolist()
    raise ValueError(f"unknown embedding type {embedding_type!r}")
