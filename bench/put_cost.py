"""What storing an entry costs (``Store.put_matrix``), today's code beside an older
revision's in the same run, and where the time goes.

``python bench/put_cost.py`` (a few minutes) writes its section of bench/RESULTS.md;
``--quick``: 20,000 keys, prints only. ``--baseline REV`` (default 69b1153, the code before
writers counted their own puts) is checked out with ``results.baseline_tree`` and run by the
same worker. Random 16-byte keys in random order, random float32 vectors (made outside the
clock), one ``put_matrix`` per batch, each case in a fresh process, the two codes
interleaved. "Into 1M" adds 100,000 keys to a copy of the 1M-entry cache the same code
filled just before. The parts are the seconds inside the methods both codes have:
``Index.insert`` (building the rows, SQL, triggers, indexes), ``Segments.write``,
``Index.refresh_snapshot``; the rest of ``put_matrix`` is "other" (checksums, keys, eviction
check, commit). CPU seconds (``time.process_time``) are given beside wall seconds: the
machine is shared, and a put is bound by its own CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results import baseline_tree, write_section

MODEL, TASK = "jina-embeddings-v3", "retrieval.passage"
PARTS = {
    "insert": ("embedcache.storage.index", "Index", "insert"),
    "segment": ("embedcache.storage.segments", "Segments", "write"),
    "snapshot": ("embedcache.storage.index", "Index", "refresh_snapshot"),
}


def work_put(cache: str, n: int, dim: int, batch: int, seed: int) -> dict[str, float]:
    """Put ``n`` random keys into the cache at ``cache``, ``batch`` per call."""
    import importlib

    from embedcache import Store, resolve_options
    from embedcache.cache_keys import fingerprint

    totals: dict[str, float] = {}

    def timed(run: Any, label: str) -> Any:
        def wrapper(*args: Any) -> Any:
            start = time.perf_counter()
            try:
                return run(*args)
            finally:
                totals[label] = totals.get(label, 0.0) + time.perf_counter() - start

        return wrapper

    for label, (module, cls_name, name) in PARTS.items():
        cls = getattr(importlib.import_module(module), cls_name)
        if hasattr(cls, name):  # (an older revision may lack one: its part reads 0)
            setattr(cls, name, timed(getattr(cls, name), label))
    fp = fingerprint(resolve_options(MODEL, TASK, None if dim == 1024 else dim))
    rng = np.random.default_rng(seed)
    seconds = cpu = 0.0
    with Store(cache) as store:
        for _ in range(0, n, batch):
            raw = rng.bytes(16 * batch)
            keys = [raw[i : i + 16] for i in range(0, len(raw), 16)]
            matrix = rng.random((batch, dim), dtype=np.float32)
            tokens = [12.5] * batch
            start, start_cpu = time.perf_counter(), time.process_time()
            store.put_matrix(fp, keys, matrix, tokens)
            seconds += time.perf_counter() - start
            cpu += time.process_time() - start_cpu
        held = len(store)
    db = sqlite3.connect(Path(cache) / "index.db")
    (rows,) = db.execute("SELECT COUNT(*) FROM entries").fetchone()
    db.close()
    assert rows == held, (rows, held)  # the totals kept match the table
    return {"seconds": seconds, "cpu": cpu, "rows": rows, **totals}


def run_worker(code: str, *args: Any) -> dict[str, float]:
    """:func:`work_put` in a fresh process importing embedcache from ``code``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([code, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, __file__, "worker", json.dumps(args)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        raise RuntimeError(f"worker failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def cases(quick: bool) -> list[tuple[str, int, int, int]]:
    """``(into, n, dim, batch)``: into "fresh" or "1M" (a copy of the fresh 1M cache)."""
    if quick:
        return [("fresh", 20_000, 64, 2048), ("fresh", 20_000, 1024, 2048)]
    return [
        ("fresh", 100_000, 64, 2048), ("fresh", 100_000, 64, 32_768),
        ("fresh", 100_000, 1024, 2048), ("fresh", 100_000, 1024, 32_768),
        ("fresh", 1_000_000, 64, 32_768),
        ("1M", 100_000, 64, 2048), ("1M", 100_000, 64, 32_768),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description="what storing an entry costs")
    parser.add_argument("--quick", action="store_true", help="20,000 keys, to test the script")
    parser.add_argument("--baseline", default="69b1153", help="the old code's revision")
    args = parser.parse_args()
    today = str(Path(__file__).resolve().parent.parent)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="embedcache-bench-put-") as tmp:
            root = Path(tmp)
            codes = {"today": today, "old": str(baseline_tree(root, args.baseline))}
            for into, n, dim, batch in cases(args.quick):
                got = {}
                for name, code in codes.items():
                    cache = root / f"{name}-{into}-{n}-{dim}-{batch}"
                    filled = root / f"{name}-fresh-1M"
                    if into == "1M":
                        shutil.copytree(filled, cache)
                    print(f"{name}: {n:,} keys into {into}, {dim}-d, {batch:,} a put", flush=True)
                    got[name] = run_worker(code, str(cache), n, dim, batch, n + batch)
                    if into == "fresh" and n == 1_000_000:
                        cache.rename(filled)  # kept for the "into 1M" cases
                    else:
                        shutil.rmtree(cache)
                rows.append(render_row(into, n, dim, batch, got))
    finally:  # the old code's work tree is gone with the directory: forget it
        subprocess.run(["git", "worktree", "prune"], cwd=Path(__file__).parent, check=False)
    report = header(args) + "\n".join(rows) + "\n"
    print(report)
    if not args.quick:
        write_section("put-cost", report)


def render_row(into: str, n: int, dim: int, batch: int, got: dict[str, dict[str, float]]) -> str:
    def us(run: dict[str, float], key: str) -> float:
        return run.get(key, 0.0) * 1e6 / n

    today, old = got["today"], got["old"]
    other = us(today, "seconds") - sum(us(today, p) for p in PARTS)
    return (
        f"| {into} | {n:,} | {dim} | {batch:,} | {us(old, 'seconds'):.1f} | "
        f"{us(today, 'seconds'):.1f} | {old['seconds'] / today['seconds']:.2f}x | "
        f"{us(old, 'cpu'):.1f} / {us(today, 'cpu'):.1f} | "
        f"{us(old, 'insert'):.1f} / {us(today, 'insert'):.1f} | "
        + " | ".join(f"{us(today, p):.1f}" for p in ("segment", "snapshot"))
        + f" | {other:.1f} |"
    )


def header(args: argparse.Namespace) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python bench/put_cost.py" + " --quick" * args.quick
    load = os.getloadavg()[0]
    return "\n".join([
        "## What a put costs (`bench/put_cost.py`)",
        "",
        *(["**Quick mode: too small to mean anything; only checks the script.**", ""] * args.quick),
        f"Run {now} on {os.cpu_count()} cores (load average {load:.1f} at the end: shared), "
        f"CPython {platform.python_version()}, SQLite {sqlite3.sqlite_version}; command "
        f"`{command}`; old code {args.baseline} in the same run. µs per entry, one run each; "
        "\"insert\" is `Index.insert` (rows, SQL, triggers and indexes), \"other\" the rest of "
        "`put_matrix` (checksums, keys, eviction check, commit).",
        "",
        "| into | keys | dim | a put | old µs | today µs | old / today | CPU µs old / today "
        "| insert old / today | segment write | snapshot | other |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        print(json.dumps(work_put(*json.loads(sys.argv[2]))))
    else:
        main()
