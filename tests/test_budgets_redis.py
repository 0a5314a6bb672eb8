"""Budgets kept in a shared tier's Redis (one server, or a real Redis Cluster): shared by
proxies on different cache directories, kept across a restart on a fresh disk, refusing
misses (never sending them unmetered) while Redis is out of reach, invisible to the tier's
``stats`` and ``sync``; and the ``budgets`` section of ``/admin/stats`` with either ledger."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from embedcache.errors import SharedCacheError
from embedcache.proxy import budgets as budgets_module
from embedcache.proxy.budgets import Budget, BudgetPolicy, Budgets, key_name
from embedcache.testing import JinaEmulator
from embedcache.tokens import estimate_tokens

from .cli_helpers import Invoke, as_json
from .conftest import API_KEY
from .redis_server import RedisCluster, RedisServer
from .serving import ProxyInProcess
from .test_budgets import (
    AUTH,
    MID,
    _assert_within_budget,
    _spend_in_parallel,
    jina,
    openai,
    remaining,
)
from .test_redis_cluster import _cluster

ADMIN = "admin-token-for-budget-tests"
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    made = _cluster(tmp_path_factory.mktemp("budget-cluster"))
    yield made
    made.stop()


@pytest.fixture(params=["server", "cluster"])
def tier(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """``--redis-url URL --redis-prefix P``: one redis-server, or the 3-node cluster (a
    prefix of the test's own)."""
    if request.param == "server":
        url = request.getfixturevalue("redis_server").url
    else:
        url = request.getfixturevalue("cluster").url
    return ("--redis-url", url, "--redis-prefix", f"budgets-test-{next(_prefixes)}")


@pytest.fixture
def start(emulator: JinaEmulator, tmp_path: Path) -> Iterator[Any]:
    """``start(MACHINE, ARGS)``: ``embedcache serve ARGS`` on the cache directory
    ``<tmp>/MACHINE``, upstream the emulator; all stopped after the test."""
    started: list[ProxyInProcess] = []

    def make(machine: str, *args: str) -> ProxyInProcess:
        proxy = ProxyInProcess(emulator.url, tmp_path / machine, *args)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()
        assert API_KEY not in proxy.output()


def test_two_proxies_on_different_cache_directories_share_one_budget_through_redis(
    start: Any, tier: tuple[str, ...]
) -> None:
    alice = start("alice", *tier, "--budget-tokens", "40")
    bob = start("bob", *tier, "--budget-tokens", "40")
    spent = alice.embed(jina(["alpha beta gamma"]), API_KEY)
    assert spent.status_code == 200
    left = remaining(spent)
    assert left == 40 - spent.json()["usage"]["total_tokens"]

    refused = bob.embed(openai([MID]), API_KEY)  # fits a fresh budget, not alice's leftover
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "budget_exceeded"
    assert (error["tokens_needed"], error["tokens_remaining"]) == (estimate_tokens(MID), left)
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
    assert remaining(refused) == left
    tei = bob.http.post("/embed", json={"inputs": [MID]}, headers=AUTH)
    assert tei.status_code == 429

    hit = bob.embed(jina(["alpha beta gamma"]), API_KEY)  # alice's fetch, from the tier
    assert hit.status_code == 200
    assert hit.headers["X-Embedcache-Status"] == "hit"
    assert remaining(hit) == left


def test_concurrent_misses_on_two_proxies_never_reserve_past_the_budget_together(
    start: Any, tier: tuple[str, ...]
) -> None:
    proxies = [start(name, *tier, "--budget-tokens", "60") for name in ("alice", "bob")]
    answers = _spend_in_parallel(proxies, 40)  # each 3 tokens: 120 asked of 60
    _assert_within_budget(answers, 60)


def test_spending_in_redis_survives_a_restart_on_a_fresh_cache_directory(
    start: Any, redis_server: RedisServer
) -> None:
    tier = ("--redis-url", redis_server.url)
    first = start("before", *tier, "--budget-tokens", "30")
    left = remaining(first.embed(jina(["one two three four"]), API_KEY))
    assert left < 30
    first.stop()
    again = start("after", *tier, "--budget-tokens", "30")  # a new container: empty disk
    answer = again.embed(jina(["one two three four"]), API_KEY)  # a hit from the tier
    assert answer.headers["X-Embedcache-Status"] == "hit"
    assert remaining(answer) == left
    assert again.embed(jina([MID]), API_KEY).status_code == 429


def test_with_redis_down_budgeted_misses_are_refused_503_in_each_dialect_and_hits_served(
    start: Any, redis_server: RedisServer
) -> None:
    proxy = start("alone", "--redis-url", redis_server.url, "--budget-tokens", "1000")
    fetched = proxy.embed(jina(["kept on local disk"]), API_KEY)
    left = remaining(fetched)
    redis_server.kill()

    answers = {
        "jina": proxy.embed(jina(["never fetched"]), API_KEY),
        "openai": proxy.embed(openai(["never fetched"]), API_KEY),
        "tei": proxy.http.post("/embed", json={"inputs": ["never fetched"]}, headers=AUTH),
    }
    assert {dialect: a.status_code for dialect, a in answers.items()} == dict.fromkeys(answers, 503)
    messages = [
        answers["jina"].json()["detail"],
        answers["openai"].json()["error"]["message"],
        answers["tei"].json()["error"],
    ]
    for message in messages:
        assert f"shared tier {redis_server.url}" in message
        assert "\n" not in message
    assert answers["tei"].json()["error_type"] == "unhealthy"

    for _ in range(2):  # from disk, then from memory: a hit costs nothing, so it is served
        hit = proxy.embed(jina(["kept on local disk"]), API_KEY)
        assert hit.status_code == 200
        assert remaining(hit) == left  # the last figure known
    stranger = proxy.embed(jina(["kept on local disk"]), "jina_a_caller_never_seen")
    assert stranger.status_code == 200
    assert remaining(stranger) == 0  # nothing known, and no miss can be paid for now
    bigger = proxy.http.post(  # a hit past the inline path: admitted in a fill thread
        "/v1/embeddings", json=jina(["kept on local disk"] * 40), headers=AUTH
    )
    assert bigger.status_code == 200


def test_a_redis_ledger_out_of_reach_names_the_tier_without_its_password() -> None:
    from embedcache.storage.ledgers import RedisLedger

    with socketless_port() as port:
        ledger = RedisLedger(f"redis://:hunter2secret@127.0.0.1:{port}/0", prefix="p")
        with pytest.raises(SharedCacheError) as caught:
            ledger.reserve("k_0123456789ab", 0.0, 60.0, 5, 100)
        ledger.close()
    message = str(caught.value)
    assert f"shared tier redis://127.0.0.1:{port}/0" in message
    assert "hunter2secret" not in message
    assert "\n" not in message


class socketless_port:
    """A loopback port nothing listens on (bound, never listening, while in use)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        port: int = self._sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def test_budget_keys_are_neither_counted_by_stats_nor_copied_by_sync(
    start: Any, redis_server: RedisServer, machine_cli: Invoke
) -> None:
    proxy = start("alice", "--redis-url", redis_server.url, "--budget-tokens", "1000")
    assert proxy.embed(jina(["one shared text"]), API_KEY).status_code == 200
    proxy.stop()  # its writes to the tier finished
    raw = redis.Redis.from_url(redis_server.url)
    budget_keys = [k for k in raw.keys("*") if b":budgets:" in k]
    assert len(budget_keys) == 1  # the spending is in Redis, gone a minute after its window
    assert 0 < raw.ttl(budget_keys[0]) <= 3600 + 60
    raw.close()
    stats = as_json(machine_cli("alice", "stats", "--json", url=redis_server.url))
    assert stats["shared"]["entries"] == 1  # ...but not an entry of the tier
    pulled = as_json(machine_cli("bob", "sync", "--pull", "--json", url=redis_server.url))
    assert (pulled["copied"], pulled["skipped"]) == (1, 0)


def _admin_stats(proxy: ProxyInProcess) -> Any:
    answer = proxy.http.get("/admin/stats", headers={"Authorization": f"Bearer {ADMIN}"})
    assert answer.status_code == 200
    return answer.json()


@pytest.mark.parametrize("ledger", ["budgets.db", "redis"])
def test_admin_stats_reports_each_budget_spent_and_listed_with_either_ledger(
    start: Any, tmp_path: Path, request: pytest.FixtureRequest, ledger: str
) -> None:
    tier: tuple[str, ...] = ()
    if ledger == "redis":
        tier = ("--redis-url", request.getfixturevalue("redis_server").url)
    budgets = tmp_path / "budgets.toml"
    budgets.write_text(
        "[keys]\nk_0123456789ab = { tokens = 500 }\n\n[groups.research]\ntokens = 900\n"
        'keys = ["k_aaaaaaaaaaaa"]\n',
        encoding="utf-8",
    )
    args: tuple[str, ...] = ("--admin-token", ADMIN, "--budgets", str(budgets))
    args += ("--budget-tokens", "100", "--budget-window", "600")
    proxy = start("alice", *tier, *args)
    spent = proxy.embed(jina(["spend some tokens here"]), API_KEY).json()["usage"]["total_tokens"]
    # Another proxy, on another directory: with Redis it reports alice's spending too.
    reporter = proxy if ledger == "budgets.db" else start("bob", *tier, *args)

    section = _admin_stats(reporter)["budgets"]
    assert section["default"] == {"tokens": 100, "window": 600}
    callers = section["callers"]
    assert [c["name"] for c in callers] == [key_name(API_KEY), "group:research", "k_0123456789ab"]
    first = callers[0]
    assert (first["tokens"], first["window"], first["spent"]) == (100, 600, spent)
    assert first["remaining"] == 100 - spent
    assert 0 < first["resets_in"] <= 600
    assert callers[1] == {
        "name": "group:research", "tokens": 900, "window": 600, "spent": 0,
        "remaining": 900, "resets_in": callers[1]["resets_in"],
    }  # fmt: skip
    assert callers[2]["remaining"] == 500


def test_admin_stats_budgets_is_null_without_budgets_and_limited_with_many(
    start: Any, tmp_path: Path
) -> None:
    plain = start("plain", "--admin-token", ADMIN)
    assert _admin_stats(plain)["budgets"] is None
    budgets = Budgets(BudgetPolicy({}, (1000, 60.0)), tmp_path)
    try:
        for number in range(5):
            budget = budgets.budget_of(f"caller-{number}")
            assert budget is not None
            budgets.reserve(budget, 10 + number)
        report = budgets.report(limit=3)
    finally:
        budgets.close()
    assert [c["spent"] for c in report["callers"]] == [14, 13, 12]  # most spent first


class _SlowLedger:
    """A ledger whose reads wait until the test lets them go (as a Redis round trip may)."""

    location = "test"
    healthy = True

    def __init__(self) -> None:
        self.spent_now = 10.0
        self.gate = threading.Event()
        self.gate.set()
        self.reads = 0

    def reserve(
        self, name: str, start: float, window: float, tokens: float, limit: float
    ) -> tuple[bool, float]:
        raise AssertionError("not reserved here")

    def settle(self, name: str, start: float, window: float, delta: float) -> float:
        raise AssertionError("not settled here")

    def spent(self, name: str, start: float) -> float:
        assert self.gate.wait(30)
        self.reads += 1
        return self.spent_now

    def spending(self) -> Iterator[tuple[str, float, float]]:
        return iter(())

    def close(self) -> None:
        self.gate.set()


def test_the_hit_paths_figure_never_waits_for_the_ledger_and_is_refreshed_in_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(budgets_module, "_SHOWN_SECONDS", 0.0)  # every figure stale at once
    ledger = _SlowLedger()
    budgets = Budgets(BudgetPolicy({}, (100, 3600.0)), ledger)
    budget = Budget(key_name(API_KEY), 100, 3600.0)
    try:
        assert budgets.shown(budget) == 90  # never seen: read once, here
        ledger.spent_now = 30.0
        ledger.gate.clear()  # a read now waits: the caller would hang (and time out)
        assert budgets.shown(budget) == 90  # the last figure, at once
        assert budgets.shown(budget) == 90
        ledger.gate.set()
        for _ in range(3000):  # the thread's read lands
            if budgets.shown(budget) == 70:
                break
            time.sleep(0.01)
        assert budgets.shown(budget) == 70
    finally:
        budgets.close()
