"""Per-caller token budgets (``serve --budget-tokens/--budget-window/--budgets``): misses
past a budget refused with a 429 in the caller's dialect, hits always served, one ledger
for every worker and process on the cache directory, kept across restarts."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from embedcache.proxy.budgets import (
    BUDGET_HEADER,
    BudgetPolicy,
    Budgets,
    key_name,
)
from embedcache.testing import JinaEmulator
from embedcache.tokens import estimate_tokens

from .cli_helpers import invoke
from .conftest import API_KEY, MakeProxy, MakeServed
from .serving import Served

MODEL = "jina-embeddings-v3"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
LONG = " ".join(f"word{n}" for n in range(60))  # far more than the budgets below
MID = " ".join(["word"] * 39)  # 39 tokens: within a window of 40, not after a first request


def jina(texts: list[str]) -> dict[str, Any]:
    return {"model": MODEL, "input": texts}


def openai(texts: list[str]) -> dict[str, Any]:
    return {"model": MODEL, "input": texts, "encoding_format": "float"}


def remaining(answer: httpx.Response) -> int:
    return int(answer.headers[BUDGET_HEADER])


def test_a_budgeted_key_gets_429_past_its_budget_in_each_dialect_and_200_on_a_hit(
    make_proxy: MakeProxy,
) -> None:
    proxy = make_proxy("--budget-tokens", "40", "--budget-window", "3600")
    first = proxy.embed(jina(["alpha beta gamma"]), API_KEY)
    assert first.status_code == 200
    left = remaining(first)
    assert left == 40 - first.json()["usage"]["total_tokens"]

    jina_answer = proxy.embed(jina([MID]), API_KEY)
    assert jina_answer.status_code == 429
    assert 0 < int(jina_answer.headers["Retry-After"]) <= 3600
    assert jina_answer.json()["code"] == "budget_exceeded"
    assert jina_answer.json()["tokens_needed"] == estimate_tokens(MID)
    assert "detail" in jina_answer.json()

    openai_answer = proxy.embed(openai([MID]), API_KEY)
    assert openai_answer.status_code == 429
    assert openai_answer.json()["error"]["type"] == "budget_exceeded"
    assert "Retry-After" in openai_answer.headers

    tei_answer = proxy.http.post("/embed", json={"inputs": [MID]}, headers=AUTH)
    assert tei_answer.status_code == 429
    assert tei_answer.json()["error_type"] == "overloaded"
    assert "budget" in tei_answer.json()["error"]

    for _ in range(2):  # the hit path's answer, then the same from memory: free
        hit = proxy.embed(jina(["alpha beta gamma"]), API_KEY)
        assert hit.status_code == 200
        assert remaining(hit) == left


def test_a_partial_hit_whose_misses_cannot_be_paid_says_what_was_cached_and_needed(
    make_proxy: MakeProxy,
) -> None:
    proxy = make_proxy("--budget-tokens", "10")
    assert proxy.embed(jina(["cached text"]), API_KEY).status_code == 200
    answer = proxy.embed(openai(["cached text", LONG]), API_KEY)
    assert answer.status_code == 429
    error = answer.json()["error"]
    assert error["cached_texts"] == 1
    assert error["tokens_needed"] == estimate_tokens(LONG)
    assert "1 of its texts are cached" in error["message"]


def test_a_request_larger_than_a_whole_window_gets_no_retry_after(make_proxy: MakeProxy) -> None:
    proxy = make_proxy("--budget-tokens", "5")
    answer = proxy.embed(jina([LONG]), API_KEY)
    assert answer.status_code == 429
    assert "Retry-After" not in answer.headers
    assert "send fewer texts" in answer.json()["detail"]


def test_spending_survives_a_restart_of_the_proxy(make_proxy: MakeProxy) -> None:
    first = make_proxy("--budget-tokens", "30")
    spent = first.embed(jina(["one two three four"]), API_KEY)
    left = remaining(spent)
    assert left < 30
    first.stop()
    again = make_proxy("--budget-tokens", "30")
    answer = again.embed(jina(["one two three four"]), API_KEY)  # a hit: shows, spends nothing
    assert remaining(answer) == left


def _spend_in_parallel(served: Sequence[Served], count: int) -> list[httpx.Response]:
    """``count`` distinct misses of 3 estimated tokens each, spread over ``served`` and
    over new connections (so a multi-worker server's workers each take some)."""

    def one(n: int) -> httpx.Response:
        with httpx.Client(base_url=served[n % len(served)].url, timeout=30) as client:
            body = jina([f"spend{n}a spend{n}b spend{n}c"])
            return client.post("/v1/embeddings", json=body, headers=AUTH)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def _assert_within_budget(answers: list[httpx.Response], budget: int) -> None:
    served = [a for a in answers if a.status_code == 200]
    assert {a.status_code for a in answers} == {200, 429}
    assert sum(a.json()["usage"]["total_tokens"] for a in served) <= budget


def test_two_workers_share_one_budget(make_served: MakeServed) -> None:
    proxy = make_served("--budget-tokens", "60", "--workers", "2")
    answers = _spend_in_parallel([proxy], 40)
    _assert_within_budget(answers, 60)


def test_two_processes_on_one_cache_directory_share_one_budget(make_served: MakeServed) -> None:
    proxies = [make_served("--budget-tokens", "60", "--workers", "1") for _ in range(2)]
    answers = _spend_in_parallel(proxies, 40)
    _assert_within_budget(answers, 60)


def test_a_budgets_file_sets_keys_groups_usd_and_the_default(
    make_proxy: MakeProxy, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    other, third, free = "jina_other_key_for_the_group", "jina_unlisted_key", "jina_free"
    budgets = tmp_path / "budgets.toml"
    budgets.write_text(
        "[default]\ntokens = 7\n\n"
        f"[keys]\n{key_name(API_KEY)} = {{ usd = 0.000001 }}\n"  # 20 tokens at $0.05/M
        f"{key_name(free)} = {{}}\n\n"  # listed without a budget: unlimited
        f'[groups.team]\ntokens = 50\nkeys = ["{key_name(other)}"]\n',
        encoding="utf-8",
    )
    open_emulator = JinaEmulator()  # takes any key: each caller pays with its own
    open_emulator.start()
    request.addfinalizer(open_emulator.stop)
    proxy = make_proxy("--budgets", str(budgets), upstream=open_emulator.url)
    assert remaining(proxy.embed(jina(["a"]), API_KEY)) <= 20 - 1
    assert remaining(proxy.embed(jina(["b"]), other)) <= 50 - 1
    assert remaining(proxy.embed(jina(["c"]), third)) <= 7 - 1
    assert proxy.embed(jina([LONG]), third).status_code == 429
    assert proxy.embed(jina([MID]), other).status_code == 200
    assert BUDGET_HEADER not in proxy.embed(jina([LONG]), free).headers
    assert API_KEY not in budgets.read_text(encoding="utf-8")


def test_requests_passed_through_are_charged_their_usage_and_refused_once_spent(
    make_proxy: MakeProxy,
) -> None:
    proxy = make_proxy("--budget-tokens", "4")
    # Several encodings at once: forwarded uncached (their answer's shape is unconfirmed).
    binary = {"model": MODEL, "input": ["one two three"], "embedding_type": ["binary"]}
    answer = proxy.embed(binary, API_KEY)
    assert answer.status_code == 200
    assert remaining(answer) == 4 - answer.json()["usage"]["total_tokens"]
    spent = proxy.embed({**binary, "input": ["four five six"]}, API_KEY)
    assert spent.status_code == 200
    assert remaining(spent) == 0
    refused = proxy.embed({**binary, "input": ["seven"]}, API_KEY)
    assert refused.status_code == 429
    assert refused.json()["code"] == "budget_exceeded"


def test_a_budgets_file_with_a_mistake_is_a_one_line_error_naming_the_file_and_entry(
    tmp_path: Path,
) -> None:
    budgets = tmp_path / "budgets.toml"
    budgets.write_text("[keys]\nk_0123456789ab = { tokens = -5 }\n", encoding="utf-8")
    result = invoke("serve", "--budgets", str(budgets), cache_dir=tmp_path / "cache")
    assert result.exit_code != 0
    assert f"{budgets}: [keys] k_0123456789ab: tokens must be a number of at least 0" in (
        result.output
    )
    assert "Traceback" not in result.output


def test_a_key_written_out_in_a_budgets_file_is_named_by_its_hash_in_an_error(
    tmp_path: Path,
) -> None:
    secret = "jina_" + "Q" * 60  # a team member's key, written out by whoever wrote the file
    budgets = tmp_path / "budgets.toml"
    budgets.write_text(f'[keys]\n"{secret}" = {{ tokens = -5 }}\n', encoding="utf-8")
    result = invoke("serve", "--budgets", str(budgets), cache_dir=tmp_path / "cache")
    assert result.exit_code != 0
    assert f"[keys] {key_name(secret)}: tokens must be a number of at least 0" in result.output
    assert secret not in result.output


def test_a_proxy_remembers_a_bounded_number_of_callers_however_many_keys_it_sees(
    tmp_path: Path,
) -> None:
    # An open or verifying proxy sees any key: with a default budget each is one more
    # budget, and what the hit path shows of it must not grow with them.
    remembered = 10_000  # callers a proxy keeps at most (budgets._REMEMBERED_KEYS)
    budgets = Budgets(BudgetPolicy({}, (1000, 3600.0)), tmp_path)
    try:
        for number in range(remembered + 50):
            budget = budgets.budget_of(f"caller-{number}")
            assert budget is not None
            assert budgets.shown(budget) == 1000
        assert len(budgets._budgets) <= remembered + 1
        assert len(budgets._shown) <= remembered + 1
    finally:
        budgets.close()
