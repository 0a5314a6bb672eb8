"""Warm-read cost of embedcache against the floor, in one run on one machine.

Usage::

    python bench/warm_read.py [--n 20000] [--dim 1024] [--repeats 3]

Fills a temporary cache through the bundled emulator, then reads every text back through
the public API (``JinaEmbeddingFunction.embed`` in a fresh object, offline) and compares
with the floor from shared/docs/perf-baseline.md: xxh3-128 of each text, a dict lookup and
a copy of each vector from memory. Prints a table and writes ``bench/RESULTS-warm-read.md``.
Compare ratios, not absolute times: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xxhash

from embedcache import JinaEmbeddingFunction
from embedcache.testing import JinaEmulator

KEY = "jina_bench_key_for_the_bundled_emulator_only"
RESULTS = Path(__file__).with_name("RESULTS-warm-read.md")


def make_texts(n: int, seed: int = 7) -> list[str]:
    """Distinct texts of 200-2000 characters (mean 1,100), a fifth of them with non-ASCII
    words: the workload of shared/docs/perf-baseline.md."""
    rng = np.random.default_rng(seed)
    ascii_words = ["vector", "database", "embedding", "cache", "query", "chunk", "milvus",
                   "retrieval", "late", "model", "token", "disk", "search", "index"]  # fmt: skip
    other_words = ["naïve", "Größe", "検索", "données", "поиск"]
    texts = []
    for i in range(n):
        length = int(rng.integers(200, 2000))
        words = ascii_words + other_words if i % 5 == 0 else ascii_words
        picks = rng.integers(0, len(words), size=length // 6 + 1)
        texts.append(f"{i} " + " ".join(words[p] for p in picks)[:length])
    return texts


def best_of(repeats: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    texts = make_texts(args.n)

    with tempfile.TemporaryDirectory() as tmp, JinaEmulator(api_key=KEY) as emulator:
        cache = Path(tmp) / "cache"
        fill_start = time.perf_counter()
        with JinaEmbeddingFunction(
            api_key=KEY, base_url=emulator.url, cache_dir=cache, dimensions=args.dim
        ) as ef:
            reference = ef.embed(texts)
        fill = time.perf_counter() - fill_start

        table = {xxhash.xxh3_128_digest(t.encode()): reference[i] for i, t in enumerate(texts)}

        def floor() -> np.ndarray:
            out = np.empty((len(texts), args.dim), dtype=np.float32)
            for i, text in enumerate(texts):
                out[i] = table[xxhash.xxh3_128_digest(text.encode())]
            return out

        def warm() -> np.ndarray:
            with JinaEmbeddingFunction(cache_dir=cache, dimensions=args.dim, offline=True) as ef:
                return ef.embed(texts)

        assert warm().tobytes() == reference.tobytes()
        floor_s = best_of(args.repeats, floor)
        warm_s = best_of(args.repeats, warm)

    per = 1e6 / args.n
    rows = [
        ("floor: xxh3_128 + dict + copy", floor_s),
        ("embedcache warm read (public API, offline)", warm_s),
    ]
    lines = [
        f"# Warm read, {args.n:,} texts x {args.dim}-d float32",
        "",
        f"Machine: {platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()}. Median of {args.repeats} runs. "
        f"Command: `python bench/warm_read.py --n {args.n} --dim {args.dim}`.",
        "",
        "| method | total s | µs/text | x floor |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {s:.3f} | {s * per:.1f} | {s / floor_s:.1f} |" for name, s in rows),
        "",
        f"Cold fill through the emulator (not a target here): {fill:.2f} s.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
