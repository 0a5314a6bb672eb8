"""What ``/admin/stats`` says beyond the request counters: per caller and per model/task
(:mod:`embedcache.proxy.usage`, ``usage.db``), the upstream's health and pacing, and the
cache's size (:mod:`embedcache.proxy.insights`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from embedcache.proxy.requestlog import RequestRecord, caller_hash
from embedcache.proxy.usage import OTHERS, USAGE_FILE, Usage
from embedcache.testing import Fault, JinaEmulator

from .conftest import API_KEY, MakeProxy, MakeServed

ADMIN = "insights-admin-secret"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
MODEL = "jina-embeddings-v3"


def _record(
    key: str | None, *, model: str = MODEL, task: str | None = None, **fields: Any
) -> RequestRecord:
    record = RequestRecord("/v1/embeddings", "jina", key, model, task)
    for name, value in {"texts": 2, "hits": 1, "misses": 1, "tokens_spent": 10,
                        "tokens_saved": 4.5, "status": 200, **fields}.items():  # fmt: skip
        setattr(record, name, value)
    return record


def _stats(proxy: Any) -> dict[str, Any]:
    response = proxy.http.get("/admin/stats", headers=ADMIN_HEADERS)
    assert response.status_code == 200
    stats: dict[str, Any] = response.json()
    return stats


def _by(rows: list[dict[str, Any]], name: str) -> dict[Any, dict[str, Any]]:
    return {row[name]: row for row in rows}


# Usage, fed records directly -----------------------------------------------------------


def test_usage_adds_up_each_caller_and_each_model_and_task(tmp_path: Path) -> None:
    usage = Usage(tmp_path, budgets_on=True)
    usage.add([
        _record("k_aaaaaaaaaaaa", task="retrieval.query"),
        _record("k_aaaaaaaaaaaa", task="retrieval.query", hits=2, misses=0, tokens_spent=0),
        _record("k_bbbbbbbbbbbb", task="retrieval.passage", status=429, hits=0, misses=0,
                tokens_spent=0, tokens_saved=0.0),
        _record(None, model="jina-clip-v2", status=502, hits=0, tokens_spent=0),
    ])  # fmt: skip
    report = usage.report(price=0.02)
    usage.close()
    callers = _by(report["callers"], "key")
    first = callers["k_aaaaaaaaaaaa"]
    assert (first["requests"], first["texts"], first["hits"], first["misses"]) == (2, 4, 3, 1)
    assert (first["tokens_spent"], first["tokens_saved"]) == (10, 9.0)
    assert first["usd_spent"] == round(10 * 0.02 / 1e6, 6)
    assert (first["errors"], first["over_budget"]) == (0, 0)
    assert (callers["k_bbbbbbbbbbbb"]["errors"], callers["k_bbbbbbbbbbbb"]["over_budget"]) == (1, 1)
    assert (callers[None]["errors"], callers[None]["over_budget"]) == (1, 0)  # a 502: no budget
    models = {(row["model"], row["task"]): row for row in report["models"]}
    assert models[(MODEL, "retrieval.query")]["requests"] == 2
    assert models[(MODEL, "retrieval.passage")]["over_budget"] == 1
    assert models[("jina-clip-v2", None)]["errors"] == 1
    assert report["usage"]["period"] == "lifetime"
    assert report["usage"]["callers_count"] == 3


def test_usage_is_shared_by_two_writers_on_one_directory_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    first, second = Usage(tmp_path), Usage(tmp_path)
    first.add([_record("k_aaaaaaaaaaaa")])
    second.add([_record("k_aaaaaaaaaaaa"), _record("k_bbbbbbbbbbbb")])
    second.flush()  # first's figures are added by the report's own flush
    callers = _by(first.report(price=0.0)["callers"], "key")
    assert callers["k_aaaaaaaaaaaa"]["requests"] == 2
    assert callers["k_bbbbbbbbbbbb"]["requests"] == 1
    first.add([_record("k_bbbbbbbbbbbb")])
    first.close()  # held figures are written on close
    second.close()
    again = Usage(tmp_path)
    callers = _by(again.report(price=0.0)["callers"], "key")
    again.close()
    assert (callers["k_aaaaaaaaaaaa"]["requests"], callers["k_bbbbbbbbbbbb"]["requests"]) == (2, 2)


def test_usage_holds_a_bounded_number_of_callers_folding_the_smallest_into_others(
    tmp_path: Path,
) -> None:
    usage = Usage(tmp_path, max_callers=20, flush_seconds=3600)
    big = [_record("k_big000000000", tokens_spent=1000)] * 3
    usage.add(big)
    many = [_record(f"k_{i:012x}") for i in range(50)]
    usage.add(many)
    assert len(usage._tallies["callers"]) <= 20  # in memory, before any flush
    for start in range(0, 200, 25):  # and in the table, over several flushes
        usage.add([_record(f"k_{i:012x}") for i in range(1000 + start, 1025 + start)])
        usage.flush()
    report = usage.report(price=0.0, top=100)
    usage.close()
    assert report["usage"]["callers_count"] <= 20
    callers = _by(report["callers"], "key")
    assert callers["k_big000000000"]["requests"] == 3  # the largest is kept by name
    # Nothing is lost: every request is in a row, the folded ones in "others".
    assert sum(row["requests"] for row in report["callers"]) == 3 + 50 + 200
    assert callers[OTHERS]["requests"] > 0


def test_usage_reports_the_top_callers_and_the_rest_as_totals(tmp_path: Path) -> None:
    usage = Usage(tmp_path)
    usage.add([_record(f"k_{i:012x}", tokens_spent=i) for i in range(10)])
    report = usage.report(price=0.0, top=3)
    usage.close()
    assert [row["key"] for row in report["callers"]] == [f"k_{i:012x}" for i in (9, 8, 7)]
    assert report["usage"]["callers_rest"]["tokens_spent"] == sum(range(7))
    assert report["usage"]["callers_rest"]["requests"] == 7


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


def test_the_key_never_reaches_usage_db(tmp_path: Path) -> None:
    usage = Usage(tmp_path)
    usage.add([_record(caller_hash(API_KEY))])
    usage.close()
    files = list(tmp_path.glob(USAGE_FILE + "*"))
    assert files
    for path in files:
        assert API_KEY.encode() not in path.read_bytes()
    assert caller_hash(API_KEY) is not None


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
