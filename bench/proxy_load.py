"""Load test of ``embedcache serve``, with its floor and peer in the same run (loopback only).

Usage (or ``tox -e bench-proxy``)::

    python bench/proxy_load.py            # the full run, about two minutes; writes its
                                          # section of bench/RESULTS.md
    python bench/proxy_load.py --quick    # small counts, to check the script in seconds

Every server runs in its own process, the Jina emulator (the upstream, ``--latency`` per
request, default 50 ms, like the real API's round trip) in another, and the load comes from
this process: so the load generator shares the machine's cores with the server under test.

What is measured
----------------
1. **Mixed workload**: ``--clients`` (50) concurrent clients send ``--requests`` (3,000)
   requests, bounded by ``--time-limit`` seconds. Each request carries 1-8 texts of 200-2,000
   characters: about 80% (``--hit-share``) drawn from a prewarmed set, the rest from new texts
   that the request sequence walks through in a narrow moving window, so that several
   in-flight requests ask for the same new text at once (which is what coalescing is for).
   The same request sequence (``--seed``) goes to four servers:

   - *floor*: a minimal Starlette app under uvicorn (uvicorn's default http and loop
     implementations, as the proxy; access log off) that parses the JSON body and returns a
     precomputed response of as many 1024-d float vectors: the cost of the ASGI stack alone,
     and of this client, with no cache and no upstream;
   - *embedcache serve* with coalescing (the default), on a fresh cache prewarmed through it;
   - *embedcache serve --no-coalesce*, likewise;
   - *peer*: no cache, every request sent straight to the emulator.

   Reported: requests/s, p50/p99 latency (over all requests, and over the requests whose
   texts were all prewarmed), upstream requests and tokens (counted by the emulator, and
   checked against the proxy's ``/metrics``), and the proxy's entry counters. *Upstream
   calls saved by coalescing* is the difference in upstream requests between the two proxy
   runs.
2. **Pure hits**: one prewarmed text per request (rotating over 100), 1024-d, 50 keep-alive
   connections; the proxy against the floor. With ``wrk -t1 -c50`` when ``wrk`` is on PATH
   (it is not a dependency; the part is skipped without it), and always with this script's
   Python client. The bar: a compiled caching proxy serves ~25,000 such hits/s on this
   2-core machine class.

How to read it
--------------
The client is a minimal asyncio HTTP/1.1 client (uvloop when installed, one keep-alive
connection per client, opened before the clock starts; every response is parsed and
checked). httpx's AsyncClient was measured at ~210 requests/s against the floor on this
machine with 50 connections, 20x less than this client, so it would have measured itself.
Each server under test is one process, whose Python code runs on at most one core; the
client takes about the other one. On this machine both this client and wrk saturate the
floor and the proxy on pure hits (their figures agree within noise), but the machine is
shared and noisy: compare within one run, not across runs. The report records the load
average at the start and the git state of ``embedcache/`` that was measured.

The code
--------
This file runs the cases in order and holds the command line; the rest is in its siblings:
``loadcases.py`` (the workload, and how each server is run and counted), ``loadclient.py``
(the HTTP client), ``loadservers.py`` (the server processes, among them this script's
``_emulator`` and ``_floor`` sub-commands, and wrk) and ``loadreport.py`` (the report).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from loadcases import (
    Case,
    HitRow,
    Settings,
    Workload,
    make_workload,
    one_text_bodies,
    other_case,
    proxy_case,
    pure_hits,
)
from loadreport import report
from loadservers import Emulator, serve_emulator, serve_floor, start_floor, wrk_script
from results import write_section

SECTION = "proxy-load"


def settings(args: argparse.Namespace) -> Settings:
    if args.quick:
        return Settings(
            requests=300,
            clients=args.clients,
            hot=200,
            new=60,
            hit_share=args.hit_share,
            latency=args.latency,
            time_limit=30,
            hit_requests=300,
            wrk_seconds=2,
            seed=args.seed,
        )
    return Settings(
        requests=args.requests,
        clients=args.clients,
        hot=2000,
        new=500,
        hit_share=args.hit_share,
        latency=args.latency,
        time_limit=args.time_limit,
        hit_requests=5000,
        wrk_seconds=args.wrk_seconds,
        seed=args.seed,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="load test of embedcache serve")
    parser.add_argument("--quick", action="store_true", help="small counts, to test the script")
    parser.add_argument("--requests", type=int, default=3000, help="mixed-workload requests")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--hit-share", type=float, default=0.8, help="share of prewarmed texts")
    parser.add_argument("--latency", type=float, default=0.05, help="emulator s per request")
    parser.add_argument("--time-limit", type=float, default=120, help="s per server and phase")
    parser.add_argument("--wrk-seconds", type=int, default=10)
    parser.add_argument("--no-wrk", action="store_true", help="skip wrk even if installed")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    return parser.parse_args(argv)


def run(s: Settings, root: Path, use_wrk: bool) -> tuple[Workload, dict[str, Case], list[HitRow]]:
    workload = make_workload(s.requests, s.hot, s.new, s.hit_share, s.seed)
    script = wrk_script(root, one_text_bodies(workload.hot_texts[:100], 100)) if use_wrk else None
    cases: dict[str, Case] = {}
    hits: list[HitRow] = []
    emulator = Emulator(s.latency, root / "emulator.log")
    try:
        print("floor ...", flush=True)
        floor = start_floor(root)
        try:
            floor.wait_healthy()
            cases["floor"] = other_case(
                "floor: Starlette + uvicorn, precomputed answer", floor, emulator, workload, s
            )
            hits += pure_hits(floor, workload.hot_texts, s, script)
        finally:
            floor.stop()
        print("peer (no cache) ...", flush=True)
        cases["peer"] = other_case(
            "peer: no cache (straight to the emulator)", emulator, emulator, workload, s
        )
        print("embedcache serve ...", flush=True)
        cases["on"] = proxy_case(
            root,
            emulator,
            workload,
            s,
            [],
            lambda proxy: hits.extend(pure_hits(proxy, workload.hot_texts, s, script)),
        )
        print("embedcache serve --no-coalesce ...", flush=True)
        cases["off"] = proxy_case(root, emulator, workload, s, ["--no-coalesce"])
    finally:
        emulator.stop()
    cases["on"].name = f"**{cases['on'].name}**"
    order = ("floor", "on", "off", "peer")
    return workload, {k: cases[k] for k in order}, hits


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    s = settings(args)
    use_wrk = not args.no_wrk and shutil.which("wrk") is not None
    if not use_wrk:
        print("wrk not used: the pure-hit part runs with the Python client only", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks run
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="embedcache-proxy-load-") as tmp:
        workload, cases, hits = run(s, Path(tmp), use_wrk)
    command = "python bench/proxy_load.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(command.strip(), s, workload, cases, hits, load_before)
    print(text)
    if not (args.quick or args.no_write):
        write_section(SECTION, text)
        print(f"written to the {SECTION} section of bench/RESULTS.md")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_emulator":
        serve_emulator(float(sys.argv[2]))
    elif len(sys.argv) > 2 and sys.argv[1] == "_floor":
        serve_floor(int(sys.argv[2]))
    else:
        main()
