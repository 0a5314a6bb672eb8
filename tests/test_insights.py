"""What ``/admin/stats`` says beyond the request counters: per caller and per model/task
(:mod:`embedcache.proxy.usage`, ``usage.db``), the upstream's health and pacing, and the
cache's size (:mod:`embedcache.proxy.insights`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from embedcache.testing import Fault, JinaEmulator

from .conftest import API_KEY, MakeProxy, MakeServed

ADMIN = "insights-admin-secret"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
MODEL = "jina-embeddings-v3"


def _stats(proxy: Any) -> dict[str, Any]:
    response = proxy.http.get("/admin/stats", headers=ADMIN_HEADERS)
    assert response.status_code == 200
    stats: dict[str, Any] = response.json()
    return stats


def _by(rows: list[dict[str, Any]], name: str) -> dict[Any, dict[str, Any]]:
    return {row[name]: row for row in rows}


# Upstream health and pacing, cache size, through a live proxy ---------------------------


def test_admin_stats_counts_upstream_retries_and_failures_by_kind(
    make_proxy: MakeProxy, emulator: JinaEmulator
) -> None:
    proxy = make_proxy(env={"EMBEDCACHE_ADMIN_TOKEN": ADMIN})
    emulator.inject(Fault(status=429, retry_after="0"))  # then a success: one retry
    assert proxy.embed({"model": MODEL, "input": ["one"]}, API_KEY).status_code == 200
    emulator.inject(Fault(status=503, retry_after="0", times=10))  # every attempt fails
    assert proxy.embed({"model": MODEL, "input": ["two"]}, API_KEY).status_code == 503
    upstream = _stats(proxy)["upstream"]
    assert upstream["retries"] >= 2
    assert upstream["sent"] == 1 + upstream["retries"] + 1
    assert upstream["failures"]["rate_limited"] == 1
    assert upstream["failures"]["server_error"] == upstream["sent"] - 2
    assert (upstream["failures"]["transport"], upstream["failures"]["client_error"]) == (0, 0)
    assert upstream["mean_ms"] > 0
    last = upstream["last_failure"]
    assert last["status"] == 503
    assert "503" in last["message"]
    assert "\n" not in last["message"]
    assert upstream["state"] == "failing"  # a 5xx in the last minute


def test_admin_stats_shows_an_upstream_that_gives_no_answer(
    make_proxy: MakeProxy, emulator: JinaEmulator
) -> None:
    proxy = make_proxy(env={"EMBEDCACHE_ADMIN_TOKEN": ADMIN})
    emulator.inject(Fault(drop=True, times=10))
    assert proxy.embed({"model": MODEL, "input": ["one"]}, API_KEY).status_code == 502
    upstream = _stats(proxy)["upstream"]
    assert upstream["failures"]["transport"] == upstream["sent"] >= 1
    assert upstream["last_failure"]["status"] is None
    assert API_KEY not in str(upstream)


def test_admin_stats_shows_the_rate_limiters_limits_and_backoff(
    make_proxy: MakeProxy, emulator: JinaEmulator
) -> None:
    proxy = make_proxy(env={"EMBEDCACHE_ADMIN_TOKEN": ADMIN, "EMBEDCACHE_RPM": "1000"})
    emulator.inject(Fault(status=429, retry_after="0"))
    assert proxy.embed({"model": MODEL, "input": ["one"]}, API_KEY).status_code == 200
    stats = _stats(proxy)
    pacing = stats["upstream"]["pacing"]
    assert (pacing["rpm"], pacing["tpm"], pacing["window_seconds"]) == (1000, None, 60.0)
    assert pacing["rate_limited"] == 1
    assert pacing["window_requests"] == 2  # the 429 and the success, in this minute
    assert pacing["scale"] < 1  # backed off after the 429, not yet recovered
    assert stats["upstream"]["state"] == "degraded"


def test_admin_stats_says_nothing_is_paced_without_limits(make_proxy: MakeProxy) -> None:
    upstream = _stats(make_proxy(env={"EMBEDCACHE_ADMIN_TOKEN": ADMIN}))["upstream"]
    assert upstream["pacing"] is None
    assert (upstream["sent"], upstream["last_failure"], upstream["state"]) == (0, None, "ok")


def test_admin_stats_shows_the_cache_size_on_disk(make_proxy: MakeProxy, cache_dir: Path) -> None:
    proxy = make_proxy(env={"EMBEDCACHE_ADMIN_TOKEN": ADMIN})
    texts = [f"text {i}" for i in range(5)]
    assert proxy.embed({"model": MODEL, "input": texts}, API_KEY).status_code == 200
    cache = _stats(proxy)["cache"]
    assert cache["entries"] == 5
    assert cache["vector_bytes"] == 5 * 1024 * 4
    on_disk = sum(p.stat().st_size for p in cache_dir.rglob("*") if p.is_file())
    assert cache["vector_bytes"] < cache["bytes_on_disk"] <= on_disk * 2
    assert cache["size_limit"] is None
    assert cache["shared"] is None


def test_upstream_figures_are_the_whole_servers_across_two_workers(
    make_served: MakeServed, emulator: JinaEmulator
) -> None:
    proxy = make_served("--workers", "2", env={"EMBEDCACHE_ADMIN_TOKEN": ADMIN})
    emulator.inject(Fault(status=503, retry_after="0", times=3))
    for i in range(8):  # new connections: the kernel spreads them over both workers
        with httpx.Client(base_url=proxy.url) as client:
            body = {"model": MODEL, "input": [f"text {i}"]}
            headers = {"Authorization": f"Bearer {API_KEY}"}
            assert client.post("/v1/embeddings", json=body, headers=headers).status_code == 200
    sent = len(emulator.requests)
    # A worker's figures reach the board within a fraction of a second: ask until they do.
    for _ in range(50):
        upstream = _stats(proxy)["upstream"]
        if upstream["sent"] == sent:
            break
        time.sleep(0.1)
    assert upstream["sent"] == sent == 8 + 3
    assert upstream["retries"] == 3
    assert upstream["failures"]["server_error"] == 3
    assert upstream["last_failure"]["status"] == 503


def test_metrics_count_upstream_failures_by_kind(
    make_proxy: MakeProxy, emulator: JinaEmulator
) -> None:
    proxy = make_proxy(env={"EMBEDCACHE_ADMIN_TOKEN": ADMIN})
    emulator.inject(Fault(status=429, retry_after="0"))
    assert proxy.embed({"model": MODEL, "input": ["one"]}, API_KEY).status_code == 200
    text = proxy.http.get("/metrics", headers=ADMIN_HEADERS).text
    assert 'embedcache_upstream_failures_total{kind="rate_limited"} 1' in text
    assert "embedcache_upstream_retries_total 1" in text
