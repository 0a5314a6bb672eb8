"""What the per-caller figures (``usage.db``, fed every request's record) cost cache hits:
``embedcache serve`` as it is against the same server at an older revision, in one run.

Usage::

    python bench/usage_cost.py --baseline REV [--rounds 3] [--seconds 5]

Both servers (one worker each, so the comparison is not the kernel's spreading) answer the
same prewarmed one-text requests (``bench/proxy_hits.py``'s "one text" case) under ``wrk
-t2 -c32``, in turns: each round measures both, and the medians of the rounds are
reported, so a machine whose load drifts affects both alike. Prints a Markdown section; with
``--write`` it becomes the "usage-cost" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from loadcases import make_workload
from loadclient import body_of
from loadservers import Emulator, wrk_script
from proxy_hits import measure, prewarm, start_proxy
from results import baseline_tree, write_section

from embedcache.models import RequestOptions
from embedcache.proxy.outcomes import Outcomes
from embedcache.proxy.requestlog import RequestRecord
from embedcache.proxy.usage import Usage

HERE = Path(__file__).parent
SECTION = "usage-cost"


def run(root: Path, baseline: str, rounds: int, seconds: int) -> dict[str, list[float]]:
    texts = make_workload(1, 6400, 0, 1.0, 7).hot_texts
    bodies = [body_of([texts[i]]) for i in range(100)]
    script = wrk_script(root, bodies, "one")
    tree = baseline_tree(root, baseline)
    emulator = Emulator(0.0, root / "emulator.log")
    names = {"today": "embedcache serve (today)", "baseline": f"embedcache serve at {baseline}"}
    servers = {
        "today": start_proxy(root, emulator, names["today"], "--workers", "1"),
        "baseline": start_proxy(root, emulator, names["baseline"], "--workers", "1", source=tree),
    }
    rates: dict[str, list[float]] = {name: [] for name in names.values()}
    try:
        for server in servers.values():
            server.wait_healthy()
            prewarm(server, bodies, [1] * len(bodies))
        for _ in range(rounds):
            for server in servers.values():
                rates[server.name].append(measure(server, script, seconds, "one text").rps)
    finally:
        for server in servers.values():
            server.stop()
        emulator.stop()
    return rates


def in_process(hits: int = 50_000, rounds: int = 5) -> dict[str, tuple[float, float]]:
    """CPU per hit, in this process: the hit path's append, and the records thread's work
    (a record made, handed to the consumers), with no consumer's work and with
    :class:`Usage`'s; medians of ``rounds``, taken in turns."""
    options = RequestOptions(model="jina-embeddings-v3", task="retrieval.query")
    authorization = b"Bearer jina_" + b"x" * 60

    def once(consumers: Sequence[Callable[[Sequence[RequestRecord]], None]]) -> tuple[float, float]:
        outcomes = Outcomes(consumers, max_pending=hits)
        started = time.perf_counter()
        for _ in range(hits):
            outcomes.add_hit(authorization, options.model, "jina", options, 1, 1, 3.0, 1e-4)
        appended = time.perf_counter()
        outcomes.flush()  # what the thread does, here in this one
        done = time.perf_counter()
        return (appended - started) / hits * 1e6, (done - appended) / hits * 1e6

    with tempfile.TemporaryDirectory() as tmp:
        usage = Usage(Path(tmp), flush_seconds=3600)
        kinds: dict[str, Sequence[Callable[[Sequence[RequestRecord]], None]]] = {
            "records, no consumer": [lambda batch: None],
            "records, into Usage": [usage.add],
        }
        taken: dict[str, list[tuple[float, float]]] = {name: [] for name in kinds}
        for _ in range(rounds):
            for name, consumers in kinds.items():
                taken[name].append(once(consumers))
        usage.close()
    return {
        name: (statistics.median(a for a, _ in values), statistics.median(t for _, t in values))
        for name, values in taken.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="the per-caller figures' cost on hits")
    parser.add_argument("--baseline", required=True, metavar="REV", help="the revision before")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per measure")
    parser.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="embedcache-usage-cost-") as tmp:
        try:
            rates = run(Path(tmp), args.baseline, args.rounds, args.seconds)
        finally:
            subprocess.run(["git", "-C", str(HERE.parent), "worktree", "prune"], check=False)
    command = f"python bench/usage_cost.py {' '.join(sys.argv[1:])}".strip()
    lines = [
        "## What the per-caller figures cost hits (`bench/usage_cost.py`)",
        "",
        f"`{command}`; one worker each, `wrk -t2 -c32`, one cached text per request, load "
        f"average {load:.2f} at the start; median of {args.rounds} rounds taken in turns.",
        "",
        "| server | req/s (median) | rounds |",
        "|---|---:|---|",
    ]
    for name, values in rates.items():
        shown = ", ".join(f"{value:,.0f}" for value in values)
        lines.append(f"| {name} | {statistics.median(values):,.0f} | {shown} |")
    lines += [
        "",
        "In-process CPU per hit (`in_process()`: 50,000 hits handed over, medians of 5):",
        "",
        "| | append on the event loop, µs | records thread, µs |",
        "|---|---:|---:|",
    ]
    for name, (appended, thread) in in_process().items():
        lines.append(f"| {name} | {appended:.2f} | {thread:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
