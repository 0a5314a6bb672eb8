"""The benchmark workload: the texts and vectors of shared/docs/perf-baseline.md."""

from __future__ import annotations

import numpy as np
import xxhash

ASCII_WORDS = ["vector", "database", "embedding", "cache", "query", "chunk", "milvus",
               "retrieval", "late", "model", "token", "disk", "search", "index"]  # fmt: skip
OTHER_WORDS = ["naïve", "Größe", "検索", "données", "поиск"]


def make_texts(n: int, seed: int = 7) -> list[str]:
    """Distinct texts of 200-2000 characters (mean ~1,100), a fifth with non-ASCII words."""
    rng = np.random.default_rng(seed)
    texts = []
    for i in range(n):
        length = int(rng.integers(200, 2000))
        words = ASCII_WORDS + OTHER_WORDS if i % 5 == 0 else ASCII_WORDS
        picks = rng.integers(0, len(words), size=length // 6 + 1)
        texts.append(f"{i} " + " ".join(words[p] for p in picks)[:length])
    return texts


def vector_of(text: str, dim: int) -> np.ndarray:
    """A deterministic unit vector for a text (for peers that need an embedding model)."""
    rng = np.random.default_rng(xxhash.xxh3_64_intdigest(text.encode()))
    vector = rng.standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)
