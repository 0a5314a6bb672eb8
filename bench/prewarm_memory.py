"""Peak memory of ``embedcache prewarm`` by corpus size: it must not grow with the corpus.

Usage (or ``tox -e bench-prewarm``)::

    python bench/prewarm_memory.py                      # 1M and 2M lines; writes RESULTS.md
    python bench/prewarm_memory.py --baseline de84e5f   # also the code as it was at a revision
    python bench/prewarm_memory.py --quick              # 20k and 40k lines, to check the script

For each size a text file of that many lines is generated (about 80 bytes a line; every
tenth line repeats an earlier one, so distinct texts are 90%), and each code version runs, as
a child process of its own:

- ``embedcache prewarm FILE --dry-run --dimensions 64`` on an empty cache;
- ``embedcache prewarm FILE --dimensions 64`` on an empty cache: a real fill against the
  bundled emulator (``python -m embedcache.testing``), which runs in its own process so its
  memory does not count.

Peak RSS is the child's ``ru_maxrss`` (from ``os.wait4``), the interpreter and its imports
included. Then the snapshot rebuild alone (``Index.rebuild_snapshot``) is measured on
synthetic indexes of ``--rebuild-rows`` rows: peak RSS of a process that opens the store
and rebuilds, and what it held before rebuilding.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results import baseline_tree, write_section

SECTION = "prewarm-memory"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET_MB = 300  # issue 17: under 300 MB at 2M lines, flat from 1M to 2M
FLAT = 1.25  # "flat": the 2M peak within this factor of the 1M one
KEY = "bench-key"
DIM = 64
_WORDS = [
    "cache", "vector", "embedding", "corpus", "window", "search", "index", "query", "passage",
    "document", "token", "batch", "memory", "stream", "shard", "segment", "milvus",
    "collection", "retrieval", "model",
]  # fmt: skip


@dataclass(frozen=True)
class Row:
    run: str
    lines: int
    code: str
    peak_mib: float
    seconds: float
    note: str


def corpus(path: Path, lines: int) -> None:
    """``lines`` lines of about 80 bytes; every tenth repeats an earlier line."""
    rng = random.Random(lines)
    with path.open("w", encoding="utf-8") as handle:
        fresh: list[str] = []
        for i in range(lines):
            if i % 10 == 9:
                line = fresh[rng.randrange(len(fresh))]
            else:
                line = f"{i:09d} " + " ".join(rng.choices(_WORDS, k=9))
                if len(fresh) < 100_000:  # repeats come from the first 100,000 lines
                    fresh.append(line)
            handle.write(line + "\n")


def measured(command: list[str], source: Path, log: Path) -> tuple[float, float, str]:
    """Run ``command`` with ``source`` first on the path; its peak RSS (MiB), seconds and
    standard output."""
    env = {**os.environ, "PYTHONPATH": str(source), "JINA_API_KEY": KEY}
    with log.open("w") as err, tempfile.TemporaryFile("w+") as out:
        start = time.monotonic()
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=source)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.monotonic() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if child.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}); see {log}")
    return usage.ru_maxrss / 1024, seconds, text  # ru_maxrss is in KiB on Linux


class Emulator:
    """``python -m embedcache.testing`` in its own process."""

    def __init__(self, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "embedcache.testing", "--api-key", KEY],
            stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError(f"the emulator did not start; see {log}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def prewarm_runs(
    root: Path,
    sizes: Sequence[int],
    trees: dict[str, Path],
    emulator: Emulator,
    baseline_fills: Sequence[int],
) -> Iterator[Row]:
    for lines in sizes:
        path = root / f"corpus-{lines}.txt"
        corpus(path, lines)
        for code, tree in trees.items():
            for dry in (True, False):
                if not dry and code != "today" and lines not in baseline_fills:
                    continue  # the old code's slow, large fills only where asked for
                cache = root / "cache"
                shutil.rmtree(cache, ignore_errors=True)
                command = [
                    sys.executable, "-m", "embedcache", "--cache-dir", str(cache),
                    "--base-url", emulator.url, "prewarm", str(path), "--json",
                    "--dimensions", str(DIM), *(["--dry-run"] if dry else []),
                ]  # fmt: skip
                name = "dry run" if dry else "real fill"
                log = root / f"{name.replace(' ', '-')}-{lines}-{code.split()[0]}.log"
                peak, seconds, out = measured(command, tree, log)
                report = json.loads(out)
                note = f"{report['unique']:,} distinct"
                if "distinct_set_bytes" in report:  # the baseline had no distinct set
                    note += f" (counted in {report['distinct_set_bytes'] / 2**20:.1f} MiB)"
                if not dry:
                    if report["fetched"] != report["to_fetch"]:
                        raise RuntimeError(f"fetched {report['fetched']} of {report['to_fetch']}")
                    note += f", {report['fetched']:,} fetched in {report['requests']:,} requests"
                row = Row(name, lines, code, peak, seconds, note)
                print(row, flush=True)
                yield row


_FILL_INDEX = """
import sqlite3, sys
from embedcache.storage.store import Store
path, rows = sys.argv[1], int(sys.argv[2])
Store(path).close()  # the schema, as the store creates it
db = sqlite3.connect(f"{path}/index.db", isolation_level=None)
db.execute("BEGIN")
step = 1 << 20
for first in range(0, rows, step):
    db.executemany(
        "INSERT INTO entries VALUES (?, ?, 1, ?, 64, 1000, 0, 0, 0)",
        ((k * 2654435761 % (1 << 62), k, k) for k in range(first, min(first + step, rows))),
    )
db.execute("COMMIT")
"""
_REBUILD = """
import resource, sys, time
from embedcache.storage.store import Store
store = Store(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.monotonic()
if hasattr(store._index, "refresh_snapshot"):  # taken outside the write lock since i23
    store._index.refresh_snapshot(wait=True)
else:
    with store._index.write():
        store._index.rebuild_snapshot()
print(before, time.monotonic() - start)
"""


def rebuild_runs(root: Path, sizes: Sequence[int], trees: dict[str, Path]) -> Iterator[Row]:
    for rows in sizes:
        cache = root / f"index-{rows}"
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir()
        fill = [sys.executable, "-c", _FILL_INDEX, str(cache), str(rows)]
        measured(fill, ROOT, root / f"fill-index-{rows}.log")
        with sqlite3.connect(cache / "index.db") as db:
            assert db.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == rows
        for code, tree in trees.items():
            command = [sys.executable, "-c", _REBUILD, str(cache)]
            peak, _, out = measured(command, tree, root / f"rebuild-{rows}.log")
            before, seconds = map(float, out.split())
            row = Row("snapshot rebuild", rows, code, peak, seconds, f"{before:.0f} MiB before")
            print(row, flush=True)
            yield row


def report(command: str, rows: list[Row], load: float) -> str:
    def peak(run: str, code: str, lines: int) -> float | None:
        found = [r.peak_mib for r in rows if (r.run, r.code, r.lines) == (run, code, lines)]
        return found[0] if found else None

    out = [
        "## Prewarm memory by corpus size (`bench/prewarm_memory.py`)",
        "",
        f"Command: `{command}` (load average {load:.1f} at the start, on 2 shared cores: "
        "times are indicative only). Peak RSS is the child process's `ru_maxrss`, "
        f"interpreter and imports included; real fills at --dimensions {DIM} against the "
        "emulator in its own process. Corpus lines are ~80 bytes, 10% repeats. Target "
        f"(issue 17): under {TARGET_MB} MB at 2M lines, flat from 1M to 2M.",
        "",
        "| run | lines / index rows | code | peak RSS MiB | seconds | |",
        "|---|---:|---|---:|---:|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.run} | {r.lines:,} | {r.code} | {r.peak_mib:,.0f} | {r.seconds:,.1f} "
            f"| {r.note} |"
        )
    out += [
        "",
        "Where today's memory goes, each part bounded: the window (`--window`, 20,480 texts, "
        "with their keys and misses) and the batches in flight (`--max-concurrency`); the "
        "distinct set of the first pass (16 bytes per distinct text, at most 24 while two of "
        "its runs merge; freed before the fill); SQLite's page cache, at most 64 MiB per "
        "connection (`PRAGMA cache_size`), which a fill's random keys fill up as the index "
        "grows; and the mapped snapshot's two key columns that presence checks touch (16 bytes "
        "per cached entry, file pages the kernel can drop). The rebuild writes pages of 16,384 "
        "rows with positioned writes, so its file never counts in memory.",
    ]
    sizes = sorted({r.lines for r in rows if r.run != "snapshot rebuild"})
    if len(sizes) >= 2:
        out.append("")
        for run in ("dry run", "real fill"):
            for code in sorted({r.code for r in rows}):
                low, high = peak(run, code, sizes[0]), peak(run, code, sizes[-1])
                if low and high:
                    verdict = ""
                    if code == "today":
                        under = high * 2**20 < TARGET_MB * 1e6
                        flat = high / low <= FLAT
                        verdict = f" (under {TARGET_MB} MB: {'yes' if under else 'NO'}; " + (
                            f"flat, within {FLAT:.2f}x: {'yes' if flat else 'no'})"
                        )
                    out.append(
                        f"- {run}, {code}: {high:,.0f} MiB at {sizes[-1]:,} lines, "
                        f"{high / low:.2f}x the peak at {sizes[0]:,}{verdict}"
                    )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="peak memory of embedcache prewarm by size")
    parser.add_argument("--quick", action="store_true", help="20k and 40k lines, no RESULTS.md")
    parser.add_argument("--sizes", default="1000000,2000000", help="corpus lines, comma-separated")
    parser.add_argument(
        "--rebuild-rows", default="2000000,10000000", help="index rows for the rebuild runs"
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    parser.add_argument(
        "--baseline", metavar="REV", help="also measure the code as it was at this git revision"
    )
    parser.add_argument(
        "--baseline-fills",
        metavar="SIZES",
        help="sizes at which the baseline also does a real fill (default: the smallest; its "
        "dry runs are at every size)",
    )
    args = parser.parse_args(argv)
    sizes = [20_000, 40_000] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    fills = [int(s) for s in (args.baseline_fills or str(min(sizes))).split(",") if s]
    rebuilds = [20_000] if args.quick else [int(s) for s in args.rebuild_rows.split(",") if s]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="embedcache-prewarm-memory-") as tmp:
        root = Path(tmp)
        trees = {"today": ROOT}
        emulator = Emulator(root / "emulator.log")
        try:
            if args.baseline is not None:
                trees[f"baseline {args.baseline}"] = baseline_tree(root, args.baseline)
            rows = list(prewarm_runs(root, sizes, trees, emulator, fills))
            rows += rebuild_runs(root, rebuilds, trees)
        finally:
            emulator.stop()
    # Once the temporary directory is gone: prune drops only work trees whose files are.
    subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)
    command = "python bench/prewarm_memory.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(command.strip(), rows, load)
    print(text)
    if not (args.quick or args.no_write):
        write_section(SECTION, text)
        print(f"written to the {SECTION} section of bench/RESULTS.md")


if __name__ == "__main__":
    main()
