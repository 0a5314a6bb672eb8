"""What ``/admin/stats`` says beyond the request counters: per caller and per model/task
(:mod:`embedcache.proxy.usage`, ``usage.db``), the upstream's health and pacing, and the
cache's size (:mod:`embedcache.proxy.insights`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from embedcache.proxy.requestlog import caller_hash
from embedcache.testing import Fault, JinaEmulator

from .conftest import API_KEY, MakeProxy, MakeServed
from .serving import Served

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


# Per caller and per model/task, through live proxies ----------------------------------

OTHER_KEY = "jina_" + "AnotherCallersKey01" * 3


@pytest.fixture
def open_emulator() -> Iterator[JinaEmulator]:
    """An upstream that takes any key: each caller pays with its own."""
    with JinaEmulator() as emu:
        yield emu


def _send(proxy: Served, key: str, texts: list[str], task: str | None = None) -> httpx.Response:
    """One request on a new connection (the kernel spreads them over the workers)."""
    body: dict[str, Any] = {"model": MODEL, "input": texts}
    if task is not None:
        body["task"] = task
    with httpx.Client(base_url=proxy.url) as client:
        return client.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key}"})


def _stats_with(proxy: Served, requests: int) -> dict[str, Any]:
    """``/admin/stats`` once its callers add up to ``requests`` (each worker hands its
    records over within a fraction of a second, and adds them to usage.db once a second)."""
    for _ in range(100):
        stats = _stats(proxy)
        if sum(row["requests"] for row in stats["callers"]) >= requests:
            return stats
        time.sleep(0.1)
    return stats


def _expected(answers: list[httpx.Response]) -> dict[str, int]:
    """A caller's figures as its answers' headers tell them."""
    return {
        "requests": len(answers),
        "hits": sum(int(a.headers.get("X-Embedcache-Hits", 0)) for a in answers),
        "misses": sum(int(a.headers.get("X-Embedcache-Misses", 0)) for a in answers),
        "errors": sum(a.status_code >= 400 for a in answers),
    }


def test_admin_stats_counts_each_caller_and_model_across_two_workers(
    make_served: MakeServed, open_emulator: JinaEmulator, cache_dir: Path
) -> None:
    proxy = make_served(
        "--workers", "2", upstream=open_emulator.url, env={"EMBEDCACHE_ADMIN_TOKEN": ADMIN}
    )
    first = [
        _send(proxy, API_KEY, ["alpha", "beta"], "retrieval.query"),  # two misses
        _send(proxy, API_KEY, ["alpha", "beta"], "retrieval.query"),  # two hits
        _send(proxy, API_KEY, ["alpha", "gamma"], "retrieval.query"),  # partial
    ]
    other = [
        _send(proxy, OTHER_KEY, ["alpha"], "text-matching"),  # a miss: another task
        _send(proxy, OTHER_KEY, ["alpha"], "no-such-task"),  # refused: an error
    ]
    assert [a.status_code for a in first + other] == [200, 200, 200, 200, 422]
    stats = _stats_with(proxy, 5)
    callers = _by(stats["callers"], "key")
    for key, answers in ((API_KEY, first), (OTHER_KEY, other)):
        row = callers[caller_hash(key)]
        assert {name: row[name] for name in ("requests", "hits", "misses", "errors")} == (
            _expected(answers)
        )
    assert callers[caller_hash(API_KEY)]["texts"] == 6
    # The tokens add up to the whole server's (every worker's, on the board).
    since = stats["since_start"]
    assert sum(row["tokens_spent"] for row in stats["callers"]) == since["tokens_spent"]
    assert sum(row["tokens_saved"] for row in stats["callers"]) == pytest.approx(
        since["tokens_saved"]
    )
    models = {(row["model"], row["task"]): row for row in stats["models"]}
    assert models[(MODEL, "retrieval.query")]["requests"] == 3
    assert models[(MODEL, "text-matching")]["misses"] == 1  # another task: another key
    assert stats["usage"]["callers_count"] == 2
    # Never a key: only its hash, in the report and in the table's files.
    for key in (API_KEY, OTHER_KEY):
        assert key not in _text(proxy)
        for path in cache_dir.glob("usage.db*"):
            assert key.encode() not in path.read_bytes()


def test_caller_figures_add_up_over_two_proxies_on_one_directory_and_survive_a_restart(
    make_proxy: MakeProxy, open_emulator: JinaEmulator
) -> None:
    env = {"EMBEDCACHE_ADMIN_TOKEN": ADMIN}
    one = make_proxy(upstream=open_emulator.url, env=env)
    two = make_proxy(upstream=open_emulator.url, env=env)
    assert _send(one, API_KEY, ["one"]).status_code == 200
    assert _send(one, API_KEY, ["one"]).status_code == 200
    assert _send(two, API_KEY, ["one", "two"]).status_code == 200
    assert _send(two, OTHER_KEY, ["three"]).status_code == 200
    callers = _by(_stats_with(one, 4)["callers"], "key")
    assert callers[caller_hash(API_KEY)]["requests"] == 3
    assert callers[caller_hash(API_KEY)]["texts"] == 4
    assert callers[caller_hash(OTHER_KEY)]["requests"] == 1
    one.stop()
    two.stop()
    again = _by(_stats(make_proxy(upstream=open_emulator.url, env=env))["callers"], "key")
    assert again == callers


def _text(proxy: Served) -> str:
    return proxy.http.get("/admin/stats", headers=ADMIN_HEADERS).text


def test_a_damaged_usage_db_leaves_the_proxy_serving_without_per_caller_figures(
    make_proxy: MakeProxy, cache_dir: Path
) -> None:
    make_proxy().stop()  # the cache directory, and its usage.db
    for path in cache_dir.glob("usage.db*"):
        path.unlink()
    (cache_dir / "usage.db").write_bytes(b"not a database, " * 512)
    proxy = make_proxy(env={"EMBEDCACHE_ADMIN_TOKEN": ADMIN})
    assert proxy.embed({"model": MODEL, "input": ["one"]}, API_KEY).status_code == 200
    stats = _stats(proxy)
    assert (stats["usage"], stats["callers"], stats["models"]) == (None, [], [])
    assert "no per-caller figures" in proxy.output()


def test_a_caller_refused_over_budget_is_counted_so(make_proxy: MakeProxy) -> None:
    proxy = make_proxy("--budget-tokens", "5", env={"EMBEDCACHE_ADMIN_TOKEN": ADMIN})
    long_text = "many words in a text too long for the budget " * 4
    assert _send(proxy, API_KEY, [long_text]).status_code == 429
    assert _send(proxy, API_KEY, ["ok"]).status_code == 200
    row = _by(_stats_with(proxy, 2)["callers"], "key")[caller_hash(API_KEY)]
    assert (row["requests"], row["errors"], row["over_budget"]) == (2, 1, 1)
