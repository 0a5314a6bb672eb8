"""The workload of ``bench/proxy_load.py`` and its cases: the request sequence every server
is sent, and how a run against each server is done and counted."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from loadclient import MAX_TEXTS, LoadResult, body_of, load
from loadservers import Emulator, Server, metrics, run_wrk, start_proxy
from numpy.typing import NDArray
from workload import make_texts

# The workload


@dataclass(frozen=True)
class Workload:
    """The request bodies, in the order they are issued, and what is known of each."""

    bodies: list[bytes]
    sizes: NDArray[np.int64]  # texts per request
    hot_only: NDArray[np.bool_]  # every text of the request is prewarmed
    hot_texts: list[str]  # the prewarmed set


def make_workload(requests: int, hot: int, new: int, hit_share: float, seed: int) -> Workload:
    """``requests`` bodies of 1-8 distinct texts each. A text is new with probability
    ``1 - hit_share``; request ``j`` draws its new texts from a window of the new set that
    starts at ``j * new / requests``, so the new set is walked once, and each new text is
    wanted by several requests issued close together."""
    texts = make_texts(hot + new, seed)
    hot_texts, new_texts = texts[:hot], texts[hot:]
    rng = np.random.default_rng(seed)
    window = min(new, 3 * MAX_TEXTS)
    bodies: list[bytes] = []
    sizes = rng.integers(1, MAX_TEXTS + 1, size=requests)
    hot_only = np.zeros(requests, dtype=bool)
    for j, size in enumerate(sizes.tolist()):
        fresh = int(rng.binomial(size, 1 - hit_share))
        start = min(j * new // requests, new - window)
        chosen = [hot_texts[i] for i in rng.choice(hot, size - fresh, replace=False)]
        chosen += [new_texts[start + i] for i in rng.choice(window, fresh, replace=False)]
        rng.shuffle(chosen)
        bodies.append(body_of(chosen))
        hot_only[j] = fresh == 0
    return Workload(bodies, sizes, hot_only, hot_texts)


def one_text_bodies(texts: Sequence[str], count: int) -> list[bytes]:
    """``count`` one-text bodies, rotating over ``texts``."""
    return [body_of([texts[i % len(texts)]]) for i in range(count)]


# The cases


@dataclass
class Case:
    """One server's mixed-workload run, with the upstream's view of it."""

    name: str
    load: LoadResult
    upstream_requests: int = 0
    upstream_tokens: int = 0
    entries: dict[str, int] = field(default_factory=dict)  # from the proxy's /metrics
    notes: list[str] = field(default_factory=list)


@dataclass
class Settings:
    requests: int
    clients: int
    hot: int
    new: int
    hit_share: float
    latency: float
    time_limit: float
    hit_requests: int
    wrk_seconds: int
    seed: int


def warm_up(server: Server, workload: Workload, clients: int) -> None:
    """A few hundred one-text requests of prewarmed texts: connections, imports, caches."""
    bodies = one_text_bodies(workload.hot_texts, 4 * clients)
    load(server.port, bodies, [1] * len(bodies), clients, 60)


def prewarm(server: Server, texts: Sequence[str], clients: int) -> None:
    """Fill the proxy's cache with ``texts`` through the proxy itself, 64 per request."""
    batches = [texts[i : i + 64] for i in range(0, len(texts), 64)]
    result = load(
        server.port, [body_of(b) for b in batches], [len(b) for b in batches], min(clients, 8), 300
    )
    if result.errors or result.unsent:
        raise RuntimeError(f"prewarm failed: {dict(result.errors)}")


def measured(
    name: str, server: Server, emulator: Emulator, workload: Workload, s: Settings
) -> Case:
    """Run the mixed workload against ``server``; count what reached the emulator."""
    before = emulator.count()
    result = load(server.port, workload.bodies, workload.sizes.tolist(), s.clients, s.time_limit)
    after = emulator.count()
    case = Case(name, result, after[0] - before[0], after[1] - before[1])
    if result.unsent:
        case.notes.append(f"stopped at the {s.time_limit:.0f} s limit: {result.unsent} unsent")
    if result.errors:
        case.notes.append(f"errors: {dict(result.errors)}")
    return case


def proxy_case(
    root: Path,
    emulator: Emulator,
    workload: Workload,
    s: Settings,
    flags: Sequence[str],
    then: Callable[[Server], None] | None = None,
) -> Case:
    """A fresh proxy on a fresh cache: prewarm, warm up, the mixed workload, then ``then``."""
    name = "proxy" + "".join(flags).replace("--", "-")
    server = start_proxy(root, name, emulator.url, *flags)
    try:
        server.wait_healthy()
        prewarm(server, workload.hot_texts, s.clients)
        warm_up(server, workload, s.clients)
        before = metrics(server.port)
        case = measured(server.name, server, emulator, workload, s)
        after = metrics(server.port)
        delta = {sample: after[sample] - before.get(sample, 0.0) for sample in after}
        case.entries = {
            r: int(delta[f'embedcache_entries_total{{result="{r}"}}'])
            for r in ("hit", "miss", "coalesced")
        }
        counted = int(delta["embedcache_upstream_requests_total"])
        if counted != case.upstream_requests:
            case.notes.append(
                f"/metrics counts {counted} upstream requests, the emulator "
                f"{case.upstream_requests}"
            )
        if then is not None:
            then(server)
    finally:
        server.stop()
    case.notes += [f"log: {line}" for line in server.log_problems()[:5]]
    return case


def other_case(name: str, server: Server, emulator: Emulator, w: Workload, s: Settings) -> Case:
    """The floor or the peer: no prewarm, the same warm-up and workload."""
    warm_up(server, w, s.clients)
    return measured(name, server, emulator, w, s)


@dataclass
class HitRow:
    generator: str
    server: str
    rps: float
    p50_ms: float
    p99_ms: float
    bad: int


def pure_hits(
    server: Server, texts: Sequence[str], s: Settings, script: Path | None
) -> list[HitRow]:
    """One-text hits on ``server``: the Python client, then wrk when available."""
    bodies = one_text_bodies(texts[:100], s.hit_requests)
    result = load(server.port, bodies, [1] * len(bodies), s.clients, s.time_limit)
    bad = sum(result.errors.values()) + result.unsent
    rows = [HitRow("Python client", server.name, result.rps, *result.percentiles(), bad)]
    if script is not None:
        wrk = run_wrk(server.port, script, s.wrk_seconds, s.clients)
        rows.append(
            HitRow(
                f"wrk -t1 -c{s.clients} -d{s.wrk_seconds}s",
                server.name,
                wrk.rps,
                wrk.p50_ms,
                wrk.p99_ms,
                wrk.bad,
            )
        )
    return rows
