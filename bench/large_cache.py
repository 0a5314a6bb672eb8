"""How the cache behaves at 10 million entries against 100,000, today's code beside an
older revision's in the same run.

Usage (or ``tox -e bench-large``)::

    python bench/large_cache.py --baseline 02a92bb        # 100k and 10M; writes RESULTS.md
    python bench/large_cache.py --entries 100000 3000000 --baseline 02a92bb --ops read,stats,change
    python bench/large_cache.py --build-only --entries 1000000  # just build (build rate)

Each cache holds N synthetic texts (``large-cache text <i>``) at 64-d, written through the
store's public write API (``Store.put_matrix``, 200,000 entries a call) under the keys
``cache_keys.text_keys`` gives them, so a read through ``JinaEmbeddingFunction`` finds them.
Caches are kept under ``/tmp/embedcache-large/<N>`` and reused when complete; each code
(today's, and ``--baseline REV``'s from ``results.baseline_tree``) works on its own copy,
made afresh from that pristine cache (today's first open of it adds what this version keeps
in ``index.db``, and is timed).

Every measured operation runs in its own process; its wall time and peak RSS (the child's
``ru_maxrss``) are recorded.

- open: a bare ``Store(dir)`` plus ``len()``, timed inside a fresh process
- warm read: 10,000 random existing texts through ``JinaEmbeddingFunction(offline=True)``,
  then another 10,000 in the same process, against the floor of ``bench/run.py`` (xxh3-128
  of each text, a dict lookup, one gather) and the floor of a read from disk (the same with
  one ``pread`` per vector from the cache's segment files instead of the gather)
- ``embedcache stats --json`` (median of 3); with ``--ops scan``: ``verify``, ``ls``, ``export``
- ``prune --max-size`` dropping the oldest 10%, then ``Store.compact(0.05)`` (every segment
  with 5% dead rows or more is rewritten)
- while prune and compact run: a reader process reading 100 random surviving texts at a
  time (worst latency), and a writer storing one new text per call through the public API
  (``JinaEmbeddingFunction.embed([text])`` against the bundled emulator: worst wait)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from children import RSS, Emulator, reap_hook
from large_report import report
from results import baseline_tree, write_section

DIM = 64
MODEL, TASK = "jina-embeddings-v3", "retrieval.passage"
ROOT = Path("/tmp/embedcache-large")
FIGURES = ROOT / "figures.json"
BUILD_BATCH = 200_000  # at most; n // 50 for smaller caches, so the oldest 10% are whole batches
READS = 10_000
KEY = "jina_large_cache_bench_key"
REPEATS = 3
#: ``ls --json`` of the whole cache only up to this size (it is the slowest whole-cache
#: command: ``--ls-all`` raises it).
LS_ALL_MAX = 1_000_000


def text(i: int) -> str:
    return f"large-cache text {i}"


def fp() -> Any:
    from embedcache import resolve_options
    from embedcache.cache_keys import fingerprint

    return fingerprint(resolve_options(MODEL, TASK, DIM))


# Building


def build(n: int) -> Path:
    """The cache of ``n`` entries, built unless a complete one is there; prints the rate."""
    from embedcache.cache_keys import text_keys
    from embedcache.storage.store import Store

    path = ROOT / str(n)
    done = path / "built.json"
    if done.exists():
        return path
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    rng = np.random.default_rng(n)
    print_ = functools_print(f"build {n:,}")
    start = time.perf_counter()
    the_fp = fp()
    with Store(path / "cache") as store:
        batch = min(BUILD_BATCH, max(1, n // 50))
        for begin in range(0, n, batch):
            count = min(batch, n - begin)
            keys = text_keys(the_fp, [text(i) for i in range(begin, begin + count)])
            matrix = rng.standard_normal((count, DIM)).astype(np.float32)
            store.put_matrix(the_fp, keys, matrix, [1.0] * count)
            if (begin // batch) % 5 == 4:
                print_(f"{begin + count:,} in {time.perf_counter() - start:.0f} s")
    seconds = time.perf_counter() - start
    done.write_text(json.dumps({"entries": n, "seconds": seconds}))
    print_(f"done: {n / seconds:,.0f} entries/s ({seconds:.0f} s)")
    return path


def functools_print(label: str) -> Any:
    def echo(message: str) -> None:
        print(f"[{label}] {message}", file=sys.stderr, flush=True)

    return echo


# Workers: each runs in its own process and prints one JSON line.


def work_open(cache: str) -> dict[str, float]:
    start = time.perf_counter()
    from embedcache.storage.store import Store

    imported = time.perf_counter()
    store = Store(cache)
    opened = time.perf_counter()
    count = len(store)
    counted = time.perf_counter()
    store.close()
    return {"import": imported - start, "open": opened - imported, "len": counted - opened,
            "entries": count}  # fmt: skip


def _sample(n: int, seed: int, low: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [text(int(i)) for i in rng.integers(low, n, READS)]


def work_read(cache: str, n: int, seed: int) -> dict[str, float]:
    from embedcache import JinaEmbeddingFunction

    texts = _sample(n, seed)
    ef = JinaEmbeddingFunction(cache_dir=cache, dimensions=DIM, offline=True)
    start = time.perf_counter()
    out = ef.embed(texts)
    seconds = time.perf_counter() - start
    # Another 10k in the same process: the index's pages the first read faulted in stay
    # (as in a long-running server); the first read pays for them.
    again = _sample(n, seed + 100)
    start = time.perf_counter()
    ef.embed(again)
    seconds_again = time.perf_counter() - start
    ef.close()
    assert out.shape == (READS, DIM)
    return {"seconds": seconds, "again": seconds_again}


def work_floor(n: int, seed: int) -> dict[str, float]:
    import xxhash

    texts = _sample(n, seed)
    vectors = np.random.default_rng(0).standard_normal((len(texts), DIM)).astype(np.float32)
    table = {xxhash.xxh3_128_digest(t.encode()): i for i, t in enumerate(texts)}
    digest = xxhash.xxh3_128_digest
    out = np.ones((len(texts), DIM), dtype=np.float32)
    start = time.perf_counter()
    rows = np.fromiter((table[digest(t.encode())] for t in texts), np.intp, len(texts))
    np.take(vectors, rows, axis=0, out=out)
    return {"seconds": time.perf_counter() - start}


def work_floor_disk(cache: str, n: int, seed: int) -> dict[str, float]:
    """The floor of any read that leaves the vectors on disk: ``work_floor`` with the gather
    replaced by one positioned read per vector from the cache's own segment files (where
    each is found by SQL before the clock starts), as a process that has not mapped them
    must do. On this VM one ``pread`` costs about 2 µs, four times the in-memory floor."""
    import sqlite3

    import xxhash

    from embedcache.cache_keys import text_keys

    texts = _sample(n, seed)
    high = np.frombuffer(b"".join(text_keys(fp(), texts)), dtype="<i8")[0::2].tolist()
    db = sqlite3.connect(f"file:{cache}/index.db?mode=ro", uri=True)
    found: dict[int, tuple[int, int]] = {}
    for start in range(0, len(high), 500):
        part = high[start : start + 500]
        marks = ",".join("?" * len(part))
        rows = db.execute(f"SELECT k, seg, row FROM entries WHERE k IN ({marks})", part)
        found.update((k, (seg, row)) for k, seg, row in rows)
    db.close()
    fds = {seg: os.open(f"{cache}/segments/{seg}.f32", os.O_RDONLY) for seg, _ in found.values()}
    size = DIM * 4
    where = {seg_row: (fds[seg_row[0]], seg_row[1] * size) for seg_row in found.values()}
    digest = xxhash.xxh3_128_digest
    table = {digest(t.encode()): where[found[k]] for t, k in zip(texts, high, strict=True)}
    pread = os.pread
    start = time.perf_counter()
    raw = b"".join(
        [pread(fd, size, offset) for fd, offset in (table[digest(t.encode())] for t in texts)]
    )
    out = np.frombuffer(raw, dtype=np.float32).reshape(-1, DIM)
    seconds = time.perf_counter() - start
    assert out.shape == (READS, DIM)
    return {"seconds": seconds}


def work_compact(cache: str) -> dict[str, float]:
    from embedcache.storage.store import Store

    with Store(cache) as store:
        start = time.perf_counter()
        freed = store.compact(0.05)
        return {"seconds": time.perf_counter() - start, "freed": freed}


def work_put(cache: str, limited: int) -> dict[str, float]:
    """Median time to store one new entry (as a fill does), with or without a size limit
    (one far above the cache's size: nothing is evicted, but the total is counted)."""
    from embedcache.cache_keys import text_keys
    from embedcache.storage.store import Store

    the_fp = fp()
    times = []
    with Store(cache, size_limit=(1 << 50) if limited else 0) as store:
        for i in range(7):
            key = text_keys(the_fp, [f"put {os.getpid()} {limited} {i}"])
            start = time.perf_counter()
            store.put_matrix(the_fp, key, np.ones((1, DIM), np.float32), [1.0])
            times.append(time.perf_counter() - start)
        store_limit = Store(cache, size_limit=0)  # leave the copy without a limit
        store_limit.close()
    return {"seconds": statistics.median(times)}


def work_reader(cache: str, n: int, stop: str) -> dict[str, float]:
    """Read 100 surviving texts at a time until ``stop`` exists; latencies in seconds."""
    from embedcache import JinaEmbeddingFunction

    ef = JinaEmbeddingFunction(cache_dir=cache, dimensions=DIM, offline=True)
    rng = np.random.default_rng(1)
    low = n // 5  # prune drops the oldest 10% (the first 5 of 50 batches): read above them
    ef.embed([text(low)])  # the first call's set-up is not a read's latency
    latencies = []
    while not os.path.exists(stop):
        texts = [text(int(i)) for i in rng.integers(low, n, 100)]
        start = time.perf_counter()
        ef.embed(texts)
        latencies.append(time.perf_counter() - start)
    ef.close()
    return _latencies(latencies)


def work_writer(cache: str, url: str, stop: str) -> dict[str, float]:
    """Embed one new text per call through the public API until ``stop`` exists (a fill
    against the emulator at ``url``): each call's latency, the wait for the lock included."""
    from embedcache import JinaEmbeddingFunction

    ef = JinaEmbeddingFunction(api_key=KEY, dimensions=DIM, cache_dir=cache, base_url=url)
    ef.embed([f"writer {os.getpid()} warm-up"])  # the first call's set-up is not a wait
    latencies = []
    i = 0
    while not os.path.exists(stop):
        start = time.perf_counter()
        ef.embed([f"writer {os.getpid()} {i}"])
        latencies.append(time.perf_counter() - start)
        i += 1
        time.sleep(0.01)
    ef.close()
    return _latencies(latencies)


def _latencies(values: list[float]) -> dict[str, float]:
    ordered = sorted(values) or [0.0]
    return {"count": len(values), "max": ordered[-1],
            "p50": ordered[len(ordered) // 2]}  # fmt: skip


WORKERS = {
    "open": work_open,
    "read": work_read,
    "floor": work_floor,
    "floor_disk": work_floor_disk,
    "compact": work_compact,
    "put": work_put,
    "reader": work_reader,
    "writer": work_writer,
}


# Running children


#: The checkout whose embedcache the measured processes import (today's, or a baseline's).
CODE = str(Path(__file__).resolve().parents[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = CODE + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("JINA_API_KEY", None)
    return env


def run_child(argv: list[str], stdout: Any = subprocess.PIPE) -> dict[str, Any]:
    """Run a process to completion: its wall time, peak RSS (MB) and stdout's last line."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, env=_env())
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    rss = RSS.pop(proc.pid, float("nan"))
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{argv} failed ({proc.returncode}): {err.decode()[-2000:]}")
    last = (out or b"").decode().strip().splitlines()
    return {"wall": wall, "rss_mb": rss, "out": last[-1] if last else "", "rc": proc.returncode}


def worker(name: str, *args: object) -> dict[str, Any]:
    result = run_child([sys.executable, __file__, "--worker", name, *map(str, args)])
    return {**json.loads(result["out"]), "wall": result["wall"], "rss_mb": result["rss_mb"]}


def cli(cache: Path, *args: str, stdout: Any = subprocess.PIPE) -> dict[str, Any]:
    argv = [sys.executable, "-m", "embedcache", "--cache-dir", str(cache), *args]
    return run_child(argv, stdout=stdout)


def first_line(cache: Path, *args: str) -> float:
    """Seconds from starting ``embedcache ARGS`` to its first line of output."""
    argv = [sys.executable, "-m", "embedcache", "--cache-dir", str(cache), *args]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env())
    assert proc.stdout is not None
    proc.stdout.readline()
    seconds = time.perf_counter() - start
    proc.kill()
    proc.wait()
    return seconds


#: The groups of operations ``--ops`` can pick; each run records its command per group.
OPS = ("read", "stats", "scan", "change")
GROUP_ROWS = {
    "read": ("open", "warm reads", "floor"),
    "stats": ("stats",),
    "scan": ("verify", "ls", "export"),
    "change": ("put", "prune", "compact", "concurrent reader and writer"),
}


def measure(n: int, code: str, log: Any, ops: set[str], url: str) -> dict[str, Any]:
    """The figures of the ``ops`` groups for the cache of ``n`` entries, measured with the
    embedcache of checkout ``code`` on a fresh copy of the pristine cache."""
    global CODE
    CODE = code
    base = build(n)
    cache = base / "work"
    if cache.exists():
        shutil.rmtree(cache)
    shutil.copytree(base / "cache", cache)
    got: dict[str, Any] = {"entries": n}
    got["build_rate"] = n / json.loads((base / "built.json").read_text())["seconds"]
    # The first open by this code: today's adds the tables and triggers it keeps (once).
    got["first_open_s"] = worker("open", cache)["open"]
    try:
        if "read" in ops:
            _reads(n, cache, got, log)
        if "stats" in ops:
            runs = [cli(cache, "stats", "--json") for _ in range(REPEATS)]
            got["stats_s"] = statistics.median(r["wall"] for r in runs)
            got["stats_rss_mb"] = max(r["rss_mb"] for r in runs)
            log(f"{n:,}: stats {got['stats_s']:.2f} s")
        if "scan" in ops:
            _scans(n, cache, got, log)
        if "change" in ops:
            _changes(n, cache, got, log, url)
    finally:
        shutil.rmtree(cache)
    return got


def _reads(n: int, cache: Path, got: dict[str, Any], log: Any) -> None:
    opens = [worker("open", cache) for _ in range(REPEATS)]
    got["open_only_s"] = statistics.median(o["open"] for o in opens)
    got["len_s"] = statistics.median(o["len"] for o in opens)
    got["open_wall_s"] = statistics.median(o["wall"] for o in opens)
    reads, floors, disk_floors = [], [], []
    for seed in range(REPEATS):
        floors.append(worker("floor", n, seed)["seconds"])
        disk_floors.append(worker("floor_disk", cache, n, seed)["seconds"])
        reads.append(worker("read", cache, n, seed))
    got["read_us"] = statistics.median(r["seconds"] for r in reads) / READS * 1e6
    got["read_again_us"] = statistics.median(r["again"] for r in reads) / READS * 1e6
    got["floor_us"] = statistics.median(floors) / READS * 1e6
    got["floor_disk_us"] = statistics.median(disk_floors) / READS * 1e6
    got["read_rss_mb"] = max(r["rss_mb"] for r in reads)
    log(f"{n:,}: reads {got['read_us']:.2f} then {got['read_again_us']:.2f} µs/text")


def _scans(n: int, cache: Path, got: dict[str, Any], log: Any) -> None:
    """Whole-cache reads: verify, ls and export."""
    commands = [("verify", ("verify", "--json"))]
    if n <= LS_ALL_MAX:
        commands.append(("ls_all", ("ls", "--json", "--limit", str(n))))
    for name, args in commands:
        result = cli(
            cache, *args, stdout=subprocess.PIPE if name != "ls_all" else subprocess.DEVNULL
        )
        got[f"{name}_s"], got[f"{name}_rss_mb"] = result["wall"], result["rss_mb"]
        log(f"{n:,}: {name} {result['wall']:.1f} s, {result['rss_mb']:.0f} MB")
    got["ls_first_s"] = statistics.median(first_line(cache, "ls") for _ in range(REPEATS))
    with tempfile.TemporaryDirectory(dir=ROOT) as out:
        result = cli(cache, "export", "--out", str(Path(out) / "all"))
        got["export_s"], got["export_rss_mb"] = result["wall"], result["rss_mb"]
    log(f"{n:,}: export {got['export_s']:.1f} s, {got['export_rss_mb']:.0f} MB")


def _changes(n: int, cache: Path, got: dict[str, Any], log: Any, url: str) -> None:
    """A put, then prune and compact with a reader and a writer running (on the copy)."""
    stop = cache.parent / "stop"
    idle = _with_load(cache, n, stop, url, lambda: time.sleep(5))
    got["idle_read_max_ms"], got["idle_write_max_ms"] = idle["read_max_ms"], idle["write_max_ms"]
    got["put_ms"] = worker("put", cache, 0)["seconds"] * 1e3
    got["put_limited_ms"] = worker("put", cache, 1)["seconds"] * 1e3
    log(f"{n:,}: put {got['put_ms']:.1f} ms, with a size limit {got['put_limited_ms']:.1f} ms")
    keep = int(n * DIM * 4 * 0.9)
    loaded = _with_load(
        cache, n, stop, url, lambda: cli(cache, "prune", "--max-size", f"{keep}B", "--json")
    )
    got.update({f"prune_{k}": v for k, v in loaded.items()})
    log(f"{n:,}: prune {loaded}")
    loaded = _with_load(cache, n, stop, url, lambda: worker("compact", cache))
    got.update({f"compact_{k}": v for k, v in loaded.items()})
    log(f"{n:,}: compact {loaded}")


def _with_load(cache: Path, n: int, stop: Path, url: str, action: Any) -> dict[str, Any]:
    """Run ``action`` while a reader and a writer work on ``cache``; their worst latencies."""
    stop.unlink(missing_ok=True)
    argv = [sys.executable, __file__, "--worker"]
    reader = subprocess.Popen([*argv, "reader", str(cache), str(n), str(stop)],
                              stdout=subprocess.PIPE, env=_env())  # fmt: skip
    writer = subprocess.Popen([*argv, "writer", str(cache), url, str(stop)],
                              stdout=subprocess.PIPE, env=_env())  # fmt: skip
    time.sleep(3)  # both opened and reading
    result = action()
    stop.touch()
    read = json.loads(reader.communicate()[0].decode().strip().splitlines()[-1])
    write = json.loads(writer.communicate()[0].decode().strip().splitlines()[-1])
    stop.unlink()
    out = {"read_max_ms": read["max"] * 1e3, "reads": read["count"],
           "read_p50_ms": read["p50"] * 1e3, "write_max_ms": write["max"] * 1e3,
           "writes": write["count"], "write_p50_ms": write["p50"] * 1e3}  # fmt: skip
    if isinstance(result, dict):
        out.update({"s": result["wall"], "rss_mb": result["rss_mb"]})
        if result.get("out"):
            out["out"] = result["out"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[100_000, 10_000_000])
    parser.add_argument("--baseline", help="also measure this revision's code (e.g. 02a92bb)")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    parser.add_argument("--ls-all", action="store_true", help="full `ls --json` at every size")
    parser.add_argument(
        "--ops",
        help=f"comma-separated groups to measure: {', '.join(OPS)} (default all; the "
        "others' figures are kept from the last run)",
    )
    parser.add_argument("--worker", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.worker:
        name, *rest = args.worker
        converted = [int(a) if a.isdigit() else a for a in rest]
        print(json.dumps(WORKERS[name](*converted)))
        return
    reap_hook()
    ROOT.mkdir(exist_ok=True)
    log = functools_print("large")
    sizes = sorted(args.entries)
    global LS_ALL_MAX
    if args.ls_all:
        LS_ALL_MAX = max(sizes)
    for n in sizes:
        build(n)
    if args.build_only:
        return
    ops = set(args.ops.split(",")) if args.ops else set(OPS)
    codes = {"today": CODE}
    trees = Path(tempfile.mkdtemp(dir=ROOT, prefix="trees-"))
    if args.baseline:
        codes[f"old {args.baseline}"] = str(baseline_tree(trees, args.baseline))
    emulator = Emulator(KEY)
    load_before = os.getloadavg()
    try:
        # Sizes outside, codes inside: the two codes of a size measured minutes apart.
        measured = [
            {**measure(n, code, log, ops, emulator.url), "code": label}
            for n in sizes
            for label, code in codes.items()
        ]
    finally:
        emulator.stop()
        shutil.rmtree(trees)
        subprocess.run(["git", "-C", str(Path(__file__).parent), "worktree", "prune"], check=False)
    load_after = os.getloadavg()
    load = (f"load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after, "
            f"on {os.cpu_count()} cores shared with other work")  # fmt: skip
    command = ("python bench/large_cache.py " + " ".join(sys.argv[1:])).strip()
    # Figures of groups not measured now come from the run that last measured them.
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    if "codes" not in figures:
        figures = {"codes": {}, "runs": {}}
    for got in measured:
        figures["codes"].setdefault(got["code"], {}).setdefault(str(got["entries"]), {}).update(got)
    for group in ops:
        figures["runs"][group] = {"command": command, "load": load}
    FIGURES.write_text(json.dumps(figures, indent=1))
    body = report(figures, sizes, list(codes))
    print(body)
    print(json.dumps(measured, indent=1), file=sys.stderr)
    if not args.no_write:
        write_section("large-cache", body)


if __name__ == "__main__":
    main()
