"""Rerank scores from the cache (issue 27): the library's hit path, the proxy's, and the
bytes a cached score costs, each against its floor in the same run.

Usage (or ``tox -e bench-rerank``)::

    python bench/rerank.py            # a few minutes; writes its section of RESULTS.md
    python bench/rerank.py --quick    # a smoke run: small sizes, 2 s per server, no writing

1. **Library hits**: ``JinaRerankFunction.rerank_scores(query, documents)``, every score
   cached, for 10, 100 and 1,000 documents, in µs per document, against

   - *floor*: the same keys (:func:`embedcache.rerank_keys.pair_keys`) and a dict lookup of
     each score's 8 bytes, unpacked to floats, in this process;
   - *no cache*: the same request sent straight to the bundled emulator
     (``python -m embedcache.testing`` in its own process, ``httpx`` ``POST /v1/rerank``):
     what a repeat costs without the cache on loopback (the real API adds the network and
     its model).

   Methods interleaved, each timed over enough calls for ~50 ms, median of the runs.
2. **Proxy hits**: ``embedcache serve`` answering cached rerank requests of one query and 32
   documents (Milvus's batch): Jina's ``/v1/rerank`` as pymilvus's ``JinaRerankFunction``
   posts it (``top_n`` 5) and TEI's ``/rerank`` as Milvus's ``tei`` Model Ranker posts it
   (``{"query", "texts"}``), and the same proxy's one-text ``/v1/embeddings`` hits for
   scale; loaded by ``wrk -t2 -c32`` as ``bench/proxy_hits.py`` does, against its protocol
   floor (uvloop + httptools, the JSON parsed, each pair hashed, pre-rendered scores looked
   up, sorted and written). The Go peer has no rerank support, so there is no peer.
3. **Storage**: a child process fills a cache with 100,000 pointwise scores (100 queries x
   1,000 documents through ``JinaRerankFunction`` and the emulator); bytes on disk per score
   (every file, the index's log checkpointed) against the raw 8 bytes and against an
   embedding entry's cost in RESULTS.md's payload-storage section, and the filling process's
   peak RSS (its own ``ru_maxrss``) against a process that reranks 10 documents.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
import orjson
from loadclient import HOST, KEY, body_of
from loadservers import Server, WrkResult, free_port, run_wrk, wrk_script
from payload_storage import _disk
from proxy_hits import Row as Hits
from proxy_hits import prewarm, start_proxy
from rerank_roles import (
    CALL_SECONDS,
    LIBRARY_SEED,
    MODEL,
    Emulator,
    calls_for,
    per_document,
    queries,
)
from results import RESULTS, baseline_tree, write_section
from workload import make_texts

from embedcache import JinaRerankFunction
from embedcache.config import upstream_id
from embedcache.rerank_keys import pair_keys, rerank_fingerprint

SECTION = "rerank"
HERE = Path(__file__).resolve().parent
TOP_N = 5  # pymilvus's JinaRerankFunction's default top_k, sent as top_n
BATCH = 32  # documents per proxy request: Milvus's Model Ranker's default
ROLES = str(HERE / "rerank_roles.py")
JINA, TEI, EMBED = "Jina /v1/rerank, top_n 5", "TEI /rerank", "/v1/embeddings, one text"
PATHS = {JINA: "/v1/rerank", TEI: "/rerank", EMBED: "/v1/embeddings"}


# 1. The library's hit path


def library(emulator: Emulator, root: Path, sizes: Sequence[int], runs: int) -> dict:
    """µs per document of each method and size: the median of ``runs`` interleaved runs."""
    query = queries(1)[0]
    texts = make_texts(max(sizes), LIBRARY_SEED)
    reranker = JinaRerankFunction(
        MODEL, KEY, base_url=emulator.url, cache_dir=root / "library-cache"
    )
    http = httpx.Client(base_url=emulator.url, timeout=60)
    try:
        reranker.rerank_scores(query, texts)  # every pair of every size now cached
        fp = rerank_fingerprint(MODEL, upstream_id(emulator.url))  # the library's own keys
        keys = pair_keys(fp, query, texts)
        scores = reranker.rerank_scores(query, texts)
        table = {key: struct.pack("<d", score) for key, score in zip(keys, scores, strict=True)}
        headers = {"Authorization": f"Bearer {KEY}"}

        def methods(docs: list[str]) -> dict[str, Callable[[], object]]:
            unpack = struct.Struct(f"<{len(docs)}d").unpack
            body = orjson.dumps(
                {"model": MODEL, "query": query, "documents": docs, "return_documents": False}
            )

            def floor() -> object:
                return unpack(b"".join(map(table.__getitem__, pair_keys(fp, query, docs))))

            def direct() -> object:
                answer = http.post("/v1/rerank", content=body, headers=headers)
                answer.raise_for_status()
                return answer.json()["results"]

            return {
                "floor": floor,
                "embedcache": lambda: reranker.rerank_scores(query, docs),
                "no cache": direct,
            }

        samples: dict[tuple[int, str], list[float]] = {}
        before = reranker.stats.requests
        for n in sizes:
            docs = texts[:n]
            chosen = methods(docs)
            assert list(chosen["floor"]()) == reranker.rerank_scores(query, docs)
            calls = {name: calls_for(call) for name, call in chosen.items()}
            for run in range(runs):
                names = list(chosen)
                names = names[run % 3 :] + names[: run % 3]  # each first in turn
                for name in names:
                    sample = per_document(chosen[name], calls[name], n)
                    samples.setdefault((n, name), []).append(sample)
        timed_requests = reranker.stats.requests - before
    finally:
        http.close()
        reranker.close()
    medians = {key: statistics.median(values) for key, values in samples.items()}
    return {"medians": medians, "requests_timed": timed_requests}


def against_baseline(
    emulator: Emulator, root: Path, sizes: Sequence[int], runs: int, rev: str, tree: Path
) -> dict[str, dict[int, float]]:
    """``rerank_scores`` hits of today's code and of ``rev``'s (checked out at ``tree``), each
    in a fresh process on the library part's cache, alternated ``runs`` times: the medians
    of each size's per-process medians."""
    trees = {"today": HERE.parent, rev: tree}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(runs):
        for name, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": str(tree)}
            found = subprocess.run(
                [sys.executable, "-c", "import embedcache; print(embedcache.__file__)"],
                env=env, cwd=tree, capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            if not Path(found).is_relative_to(tree):  # a comparison with itself proves nothing
                raise RuntimeError(f"{name} would run {found}, not the code in {tree}")
            command = [sys.executable, ROLES, "_hits", emulator.url, str(root / "library-cache")]
            command += [",".join(map(str, sizes)), "5"]
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            samples[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        name: {n: statistics.median(run[str(n)] for run in found) for n in sizes}
        for name, found in samples.items()
    }


# 2. The proxy's hit path


def _rerank_bodies(texts: list[str], count: int) -> dict[str, list[bytes]]:
    asked = queries(count)
    jina, tei = [], []
    for i, query in enumerate(asked):
        docs = [texts[(i * 7 + j) % len(texts)] for j in range(BATCH)]  # lists overlap
        jina.append(
            orjson.dumps({"query": query, "documents": docs, "model": MODEL, "top_n": TOP_N})
        )
        tei.append(orjson.dumps({"query": query, "texts": docs}))
    return {JINA: jina, TEI: tei, EMBED: [body_of([text]) for text in texts[:count]]}


def _prewarm_reranks(port: int, path: str, bodies: list[bytes]) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=60) as http:
        for body in bodies:
            answer = http.post(path, content=body, headers=headers)
            if answer.status_code != 200:
                raise RuntimeError(f"prewarm of {path} failed: {answer.text[:200]}")


def proxy(
    emulator: Emulator,
    root: Path,
    seconds: int,
    bodies_each: int,
    rounds: int,
    baseline: tuple[str, Path] | None = None,
) -> list[Hits]:
    """Hits per second of each server and case: the run of median req/s of ``rounds``."""
    texts = make_texts(400, 7)  # the floor pre-renders these (proxy_hits.py)
    bodies = _rerank_bodies(texts, bodies_each)
    scripts = {case: wrk_script(root, found, f"case{n}") for n, (case, found) in
               enumerate(bodies.items())}  # fmt: skip
    floor_port = free_port()
    servers = [
        start_proxy(root, emulator, "embedcache serve"),  # type: ignore[arg-type]
        Server(
            "floor: uvloop + httptools protocol, pre-rendered scores",
            [sys.executable, ROLES, "_floor", str(floor_port)],
            floor_port,
            root / "floor.log",
        ),
    ]
    if baseline is not None:
        rev, tree = baseline
        servers.insert(1, start_proxy(root, emulator, f"embedcache serve at {rev}", source=tree))  # type: ignore[arg-type]
    samples: dict[tuple[str, str], list[WrkResult]] = {}
    try:
        for server in servers:
            print(f"{server.name} ...", flush=True)
            server.wait_healthy()
            if not server.name.startswith("floor"):
                prewarm(server, bodies[EMBED], [1] * len(bodies[EMBED]))
                for case in (JINA, TEI):
                    _prewarm_reranks(server.port, PATHS[case], bodies[case])
        # Every server up at once and measured in turn, round after round, so a burst of
        # the shared machine's other work falls on each of them alike.
        for _ in range(rounds):
            for case, script in scripts.items():
                for server in servers:
                    run_wrk(server.port, script, 1, 32, threads=2, path=PATHS[case])  # warm
                    got = run_wrk(server.port, script, seconds, 32, threads=2, path=PATHS[case])
                    samples.setdefault((server.name, case), []).append(got)
    finally:
        for server in servers:
            server.stop()
    rows = []
    for (name, case), runs in samples.items():
        median = sorted(runs, key=lambda r: r.rps)[(len(runs) - 1) // 2]  # with its latencies
        bad = sum(r.bad for r in runs)
        rows.append(Hits(name, case, median.rps, median.p50_ms, median.p99_ms, bad))
    return rows


# 3. Storage


def _filled(root: Path, name: str, url: str, count: int, documents: int) -> dict:
    directory = root / name
    command = [sys.executable, ROLES, "_fill", str(directory), url]
    out = subprocess.run(
        [*command, str(count), str(documents)], capture_output=True, text=True, check=True
    ).stdout
    found: dict = json.loads(out.strip().splitlines()[-1])
    found["disk"] = _disk(directory)
    return found


def storage(emulator: Emulator, root: Path, count: int, documents: int) -> dict:
    return {
        "filled": _filled(root, "storage-cache", emulator.url, count, documents),
        "small": _filled(root, "small-cache", emulator.url, 1, 10),
    }


# The report


def _embedding_entry() -> str:
    """An embedding entry's bytes on disk as RESULTS.md's payload-storage section has it."""
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else ""
    found = re.search(r"\| reference: today's vector[^\n]*?\| ([\d,.]+) B a vector", text)
    return f"{found.group(1)} B" if found else "(not in RESULTS.md)"


def _machine(load: float) -> str:
    import numpy
    import uvicorn

    commit = subprocess.run(
        ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return (
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores, "
        f"{platform.machine()}, Linux {platform.release()}, CPython "
        f"{platform.python_version()}, numpy {numpy.__version__}, uvicorn {uvicorn.__version__}; "
        f"load average {load:.2f} at the start; commit {commit}."
    )


def _baseline_lines(found: dict[str, dict[int, float]] | None, runs: int) -> list[str]:
    if not found:
        return []
    rev = next(name for name in found if name != "today")
    out = [
        f"Today against {rev} (`--baseline {rev}`): `rerank_scores` hits on the same cache, "
        "each code in a fresh process (5 samples of ~200 ms per size), the two alternated "
        f"{runs} times; µs per document, median of the processes' medians.",
        "",
        f"| documents | at {rev} | today | {rev} / today |",
        "|---:|---:|---:|---:|",
    ]
    for n, now in found["today"].items():
        old = found[rev][n]
        out.append(f"| {n:,} | {old:.2f} | {now:.2f} | {old / now:.2f}x |")
    return [*out, ""]


def report(command: str, load: float, lib: dict, rows: list[Hits], stored: dict) -> str:
    medians = lib["medians"]
    sizes = sorted({n for n, _ in medians})
    out = [
        "## Reranking (`bench/rerank.py`)",
        "",
        f"{_machine(load)} Command: `{command}`. Loopback only; the emulator "
        "(`python -m embedcache.testing`) and every server in their own processes. The "
        "machine is shared: compare within the run.",
        "",
        "### Library hits: `JinaRerankFunction.rerank_scores`, every score cached",
        "",
        f"{MODEL}, documents of 200-2,000 characters; µs per document, median of "
        f"{lib['runs']} interleaved runs (each ~{CALL_SECONDS * 1000:.0f} ms of calls). "
        "Floor: the same keys (`rerank_keys.pair_keys`) and a dict of each score's 8 bytes, "
        "unpacked. No cache: the same request sent to the emulator with httpx (`POST "
        "/v1/rerank`, `return_documents: false`), what a repeat costs without the cache on "
        "loopback; the real API adds the network and its model.",
        "",
        "| documents | floor µs/doc | **embedcache** µs/doc | x floor | no cache µs/doc "
        "| no cache / embedcache |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        floor, ours, direct = (medians[(n, m)] for m in ("floor", "embedcache", "no cache"))
        out.append(
            f"| {n:,} | {floor:.2f} | {ours:.2f} | {ours / floor:.1f} | {direct:.2f} "
            f"| {direct / ours:.1f}x |"
        )
    out += [
        "",
        f"Upstream requests during the timed hits: {lib['requests_timed']}.",
        "",
        *_baseline_lines(lib.get("baseline"), lib["runs"]),
        "### Proxy hits: one query and 32 documents per request (Milvus's batch), cached",
        "",
        "`embedcache serve` (default workers, one per core) against the protocol floor of "
        "`bench/proxy_hits.py` answering the same bodies (uvloop + httptools: the JSON "
        "parsed, each pair hashed, a pre-rendered score looked up, sorted, written); `wrk "
        "-t2 -c32` on the same 2 cores, rotating over "
        f"{lib['bodies']} bodies per case; every server up at once, each measured in turn for "
        f"{lib['seconds']} s (after 1 s of warm-up), {lib['rounds']} rounds: the round of "
        f"median req/s, and the errors of all. {JINA}: the body pymilvus's "
        "`JinaRerankFunction` posts (`top_n` 5, documents echoed); TEI: Milvus's `tei` "
        'Model Ranker\'s (`{"query", "texts"}`, every score answered). No peer: the Go '
        "peer has no rerank support. The one-text `/v1/embeddings` hits of the same proxy "
        "are for scale.",
        "",
        "| case | server | req/s | x floor | scores/s | p50 | p99 | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(row.server, row.case): row for row in rows}
    floor_name = next(row.server for row in rows if row.server.startswith("floor"))
    for case in (JINA, TEI, EMBED):
        base = by[(floor_name, case)]
        for row in (r for r in rows if r.case == case):
            per = f"{row.rps * BATCH:,.0f}" if case != EMBED else ""
            out.append(
                f"| {case} | {row.server} | {row.rps:,.0f} | {row.rps / base.rps:.2f} | {per} "
                f"| {row.p50_ms:.2f} ms | {row.p99_ms:.2f} ms | {row.bad} |"
            )
    filled, small = stored["filled"], stored["small"]
    entries = filled["misses"]
    disk = sum(filled["disk"].values())
    parts = filled["disk"]
    out += [
        "",
        f"### Storage: {entries:,} pointwise scores",
        "",
        f"One process filled a cache through `JinaRerankFunction` and the emulator "
        f"({stored['queries']} queries x {stored['documents']:,} documents, "
        f"{filled['requests']:,} requests of at most 64 documents, {filled['seconds']:.1f} s). "
        "On disk is every file once the index's log is checkpointed.",
        "",
        "| | bytes |",
        "|---|---:|",
        f"| on disk in all | {disk:,} |",
        f"| of which data (`.heap`) / `index.db` / snapshot / other | {parts['data']:,} / "
        f"{parts['index.db']:,} / {parts['snapshot']:,} / {parts['other']:,} |",
        f"| **per score** | **{disk / entries:,.1f}** |",
        "| raw score (float64) | 8 |",
        f"| per score / raw | {disk / entries / 8:.1f}x |",
        f"| an embedding entry (1024-d float32, payload-storage section) | {_embedding_entry()} |",
        "",
        f"Peak RSS (`ru_maxrss`) of the filling process: {filled['peak'] / 2**20:,.0f} MiB; "
        f"of a process that reranks 10 documents the same way: {small['peak'] / 2**20:,.0f} "
        f"MiB (the fill added {(filled['peak'] - small['peak']) / 2**20:,.0f} MiB).",
    ]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run; no RESULTS.md")
    parser.add_argument("--seconds", type=int, default=4, help="wrk duration per server and case")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per server and case")
    parser.add_argument("--runs", type=int, default=7, help="interleaved runs of the library")
    parser.add_argument("--queries", type=int, default=100, help="storage: queries")
    parser.add_argument("--documents", type=int, default=1000, help="storage: documents each")
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure the library's and the proxy's hits as the code was at this git "
        "revision (e.g. before a change)",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk): nothing to measure with")
    quick = args.quick
    sizes = (10, 100) if quick else (10, 100, 1000)
    runs, seconds, rounds = (3, 2, 1) if quick else (args.runs, args.seconds, args.rounds)
    asked, documents = (5, 100) if quick else (args.queries, args.documents)
    bodies = 20 if quick else 100
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="embedcache-rerank-") as tmp:
        root = Path(tmp)
        emulator = Emulator(root / "emulator.log")
        try:
            print("library ...", flush=True)
            lib = library(emulator, root, sizes, runs)
            baseline = None
            if args.baseline:
                rev = args.baseline
                baseline = (rev, baseline_tree(root, rev))
                print(f"library, today against {rev} ...", flush=True)
                lib["baseline"] = against_baseline(emulator, root, sizes, runs, *baseline)
            rows = proxy(emulator, root, seconds, bodies, rounds, baseline)
            print("storage ...", flush=True)
            stored = storage(emulator, root, asked, documents)
        finally:
            emulator.stop()
            subprocess.run(["git", "-C", str(HERE.parent), "worktree", "prune"], check=False)
    lib.update(runs=runs, bodies=bodies, rounds=rounds, seconds=seconds)
    stored.update(queries=asked, documents=documents)
    command = "python bench/rerank.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(command.strip(), load, lib, rows, stored)
    print(text)
    if not (quick or args.no_write):
        write_section(SECTION, text)
        print(f"written to the {SECTION} section of bench/RESULTS.md")


if __name__ == "__main__":
    main()
