"""The report of ``bench/proxy_load.py``: its section of bench/RESULTS.md, in markdown."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path

from loadcases import Case, HitRow, Settings, Workload
from loadclient import MAX_TEXTS

BAR_HITS_PER_SECOND = 25_000  # a compiled caching proxy, one-text 1024-d hits, 2 cores


def versions() -> str:
    import starlette
    import uvicorn

    loop = "uvloop" if _importable("uvloop") else "asyncio"
    http = "httptools" if _importable("httptools") else "h11"
    return f"uvicorn {uvicorn.__version__} ({http}, {loop}), starlette {starlette.__version__}"


def git_state() -> str:
    """The commit measured, and whether ``embedcache/`` had uncommitted changes."""
    here = Path(__file__).parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "../embedcache"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "git state unknown"
    return f"commit {commit}" + (" with uncommitted changes in embedcache/" if dirty else "")


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def mixed_table(cases: list[Case], workload: Workload) -> list[str]:
    lines = [
        "| server | requests/s | p50 ms | p99 ms | prewarmed-only requests p50 / p99 ms "
        "| upstream requests | upstream tokens | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        result = case.load
        p50, p99 = result.percentiles()
        h50, h99 = result.percentiles(workload.hot_only)
        errors = sum(result.errors.values()) + result.unsent
        lines.append(
            f"| {case.name} | {result.rps:,.0f} | {p50:.1f} | {p99:.1f} | {h50:.1f} / {h99:.1f} "
            f"| {case.upstream_requests:,} | {case.upstream_tokens:,} | {errors} |"
        )
    return lines


def coalescing_lines(on: Case, off: Case, peer: Case) -> list[str]:
    saved = off.upstream_requests - on.upstream_requests
    saved_tokens = off.upstream_tokens - on.upstream_tokens
    share = saved / off.upstream_requests if off.upstream_requests else 0.0
    lines = [
        f"- **Upstream calls saved by coalescing: {saved:,}** ({on.upstream_requests:,} with "
        f"coalescing vs {off.upstream_requests:,} without, {share:.0%} fewer); tokens: "
        f"{on.upstream_tokens:,} vs {off.upstream_tokens:,} ({saved_tokens:,} saved). Without "
        f"the cache (peer) the same requests made {peer.upstream_requests:,} upstream calls "
        f"and spent {peer.upstream_tokens:,} tokens.",
    ]
    for case in (on, off):
        e = case.entries
        lines.append(
            f"- {case.name}: distinct inputs {e['hit']:,} hits, {e['miss']:,} misses, "
            f"{e['coalesced']:,} coalesced (from /metrics; the upstream counts above are the "
            f"emulator's); {case.load.cached_inputs:,} inputs reported in X-Embedcache-Cached"
        )
    for case in (on, off, peer):
        lines += [f"- {case.name}: {note}" for note in case.notes]
    return lines


def hits_table(rows: list[HitRow]) -> list[str]:
    floor = {r.generator: r.rps for r in rows if r.server == "floor"}
    lines = [
        "| load generator | server | requests/s | p50 ms | p99 ms | x floor | bad responses |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r.rps / floor[r.generator] if r.generator in floor else float("nan")
        lines.append(
            f"| {r.generator} | {r.server} | {r.rps:,.0f} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {ratio:.2f} | {r.bad} |"
        )
    return lines


def bar_line(rows: list[HitRow]) -> str:
    wrk = [r for r in rows if r.generator.startswith("wrk")]
    if not wrk:
        return (
            f"- Bar (a compiled caching proxy: ~{BAR_HITS_PER_SECOND:,} one-text 1024-d hits/s"
            " on 2 cores): not checked, wrk is not installed; a Python client cannot load a "
            "server to that rate."
        )
    ours = next(r.rps for r in wrk if r.server != "floor")
    floor = next(r.rps for r in wrk if r.server == "floor")
    verdict = "met" if ours >= BAR_HITS_PER_SECOND else "**missed**"
    return (
        f"- Bar: a compiled caching proxy serves ~{BAR_HITS_PER_SECOND:,} one-text 1024-d "
        f"hits/s on this machine class. embedcache serve (wrk): {ours:,.0f}/s = "
        f"{ours / BAR_HITS_PER_SECOND:.0%} of the bar, {verdict}; the Starlette/uvicorn floor "
        f"reaches {floor:,.0f}/s ({floor / BAR_HITS_PER_SECOND:.0%}). This bar is an old "
        "estimate and wrk here has one thread: `bench/proxy_hits.py` measures the compiled "
        "peer itself, in the same run."
    )


def report(
    command: str,
    s: Settings,
    workload: Workload,
    cases: dict[str, Case],
    hits: list[HitRow],
    load_before: float,
) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Proxy under load (`bench/proxy_load.py`)",
        "",
        f"Run {now} on {os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
        f"{platform.release()}, CPython {platform.python_version()}, {versions()}; load "
        f"average {load_before:.2f} at the start; {git_state()}. Command: `{command}`. "
        "Loopback only; every "
        "server in its own process; the upstream is the bundled Jina emulator in another, at "
        f"{s.latency * 1000:.0f} ms per request. Load from this script's asyncio HTTP/1.1 "
        "client (uvloop, one keep-alive connection per client, opened before the clock starts, "
        f"every response parsed and checked), which shares the {os.cpu_count()} cores with the "
        "servers; compare within the run.",
        "",
        f"### Mixed workload: {s.clients} concurrent clients, {s.requests:,} requests",
        "",
        f"Each request has 1-{MAX_TEXTS} texts of 200-2,000 characters, 1024-d; "
        f"{s.hit_share:.0%} of the texts are drawn from {s.hot:,} prewarmed ones, the rest from "
        f"{s.new:,} new ones in a moving window, so concurrent requests want the same new text. "
        f"{int(workload.hot_only.sum()):,} of the requests ({workload.hot_only.mean():.0%}) "
        f"have only prewarmed texts. Same request sequence (seed {s.seed}) for every server; "
        f"limit {s.time_limit:.0f} s per server.",
        "",
        *mixed_table(list(cases.values()), workload),
        "",
        "The peer's rate is the emulator's own: a Python stand-in for the API that spends "
        "CPU on every vector it writes, so under this load it is CPU-bound on this machine; "
        "what compares with the real API is its count of upstream calls and tokens.",
        "",
        *coalescing_lines(cases["on"], cases["off"], cases["peer"]),
        "",
        f"### Pure hits: one text, 1024-d, {s.clients} connections",
        "",
        *hits_table(hits),
        "",
        bar_line(hits),
    ]
    return "\n".join(lines) + "\n"
