"""What the removed in-memory tier saved: repeated small hits, memory against disk.

    python bench/memory_tier.py          # old code 69b1153 beside today's, 5 rounds

Issue 24 removed ``MemoryTier`` (``CacheSettings.memory_bytes``, off by default, reachable
by no user path). This measures what it bought, in one run: the median wall time of
``CachedEmbedder.embed`` on the same cached texts, repeated, with the old code's memory tier
on, with it off (disk), and with today's code (disk). Each code runs in a process of its own
against its own cache (filled from the bundled emulator, never timed); the figures go to the
``memory-tier`` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from results import baseline_tree, write_section

ROOT = Path(__file__).resolve().parent.parent

#: Run in the measured process, with the measured code first on its path. A string, so
#: the old API (``memory_bytes``) is not type-checked against today's.
MEASURE = r"""
import json, statistics, sys, time
from embedcache import JinaClient, RequestOptions, Store
from embedcache.testing import JinaEmulator
try:
    from embedcache.assembly import build_embedder as make  # today's
except ImportError:
    from embedcache import CachedEmbedder as make  # the old code
cache, sizes = sys.argv[1], json.loads(sys.argv[2])
repeats, memory = int(sys.argv[3]), int(sys.argv[4])
options = RequestOptions("jina-embeddings-v3", task="retrieval.passage")
out = {}
with JinaEmulator() as emulator, Store(cache) as store:
    client = JinaClient("bench", base_url=emulator.url)
    filler = make(store, client)
    filler.embed([f"filler {i}" for i in range(20_000)], options)  # an index of some size
    for size in sizes:
        texts = [f"asked again {i}" for i in range(size)]
        filler.embed(texts, options)
        embedder = make(store, client, memory_bytes=memory) if memory else make(store, client)
        embedder.embed(texts, options)  # the memory tier holds them from here
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            embedder.embed(texts, options)
            times.append(time.perf_counter() - start)
        out[size] = statistics.median(times) * 1e6
        embedder.close()
    filler.close()
print(json.dumps(out))
"""


NOTE = (
    "Why it went (issue 24): the tier saved a few tenths of a millisecond per repeated "
    "call, which no user path could turn on; a library caller spends more than that on what"
    " it does with a vector (a vector search, a network hop), and the proxy, where repeated"
    " small requests dominate, answers them from `RenderedAnswers` (the rendered text: no "
    "vector read, no float written). It also served entries another process had removed "
    "until they aged out, and was a second 'memory' cache beside `serve --memory`."
)


def measure(code: Path, sizes: list[int], repeats: int, memory: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PYTHONPATH": str(code)}
        args = [cache, json.dumps(sizes), str(repeats), str(memory)]
        done = subprocess.run(
            [sys.executable, "-c", MEASURE, *args], env=env, check=True, capture_output=True,
            text=True,
        )  # fmt: skip
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="69b1153", help="the code with the memory tier")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as trees:
        old = baseline_tree(Path(trees), args.baseline)
        codes = {
            f"old {args.baseline}, memory tier on (64 MiB)": (old, 64 << 20),
            f"old {args.baseline}, disk": (old, 0),
            "today, disk": (ROOT, 0),
        }
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in codes}
        # Rounds, each code once per round in a rotating order, so a change in the
        # machine's load falls on every code alike.
        for turn in range(args.rounds):
            labels = list(codes)
            for label in labels[turn % 3 :] + labels[: turn % 3]:
                code, memory = codes[label]
                runs[label].append(measure(code, args.sizes, args.repeats, memory))
    # The baseline's work tree is gone with its directory: forget it.
    subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)
    rows = {
        label: {str(n): statistics.median(run[str(n)] for run in found) for n in args.sizes}
        for label, found in runs.items()
    }
    sizes = args.sizes
    lines = [
        "## The removed memory tier: repeated small hits (`bench/memory_tier.py`)",
        "",
        f"Command: `python bench/memory_tier.py --baseline {args.baseline} --repeats "
        f"{args.repeats} --rounds {args.rounds}`, load average (1 min) {load:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after, on 2 cores shared with other work.",
        "",
        "Median wall time of one `CachedEmbedder.embed` of the same cached texts, repeated "
        f"{args.repeats:,} times (1024-d, a cache of 20,000 other entries); each code in its "
        f"own process and cache; the median of {args.rounds} rounds, the codes in a rotating "
        "order.",
        "",
        "| code | " + " | ".join(f"{n} text{'s' if n > 1 else ''}" for n in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for label, figures in rows.items():
        cells = " | ".join(f"{figures[str(n)]:.0f} µs" for n in sizes)
        lines.append(f"| {label} | {cells} |")
    lines += ["", NOTE]
    write_section("memory-tier", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
