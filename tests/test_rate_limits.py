"""Fills against an emulator enforcing an account's token budget: paced, and unpaced.

An earlier issue asked for timing here: a paced fill must finish within 15% of the least
time the budget allows. That check times the run, so it runs with ``-m stress`` (``tox -e
stress``), not in the default suite, which never asserts on wall-clock time. The window is
shrunk to one second so it takes a few seconds; the bound is computed from the limit and
the corpus' token count, not tuned to this machine.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from pathlib import Path

import pytest

from embedcache import JinaClient, RequestOptions, Store
from embedcache.assembly import build_embedder
from embedcache.testing import JinaEmulator, RateLimits
from embedcache.tokens import estimate_tokens
from embedcache.upstream.limiter import Limits, RateLimiter

from .cli_helpers import as_json, invoke, ok
from .conftest import API_KEY

OPTIONS = RequestOptions("jina-embeddings-v3", task="retrieval.passage")
WINDOW = 1.0
TPM = 2000  # tokens per window
BATCH = 8  # texts per request: 8 x 50 = 400 tokens, a fifth of the budget


def corpus() -> list[str]:
    """180 distinct texts of exactly 50 estimated tokens: 9,000 tokens, 4.5 windows."""

    def word(i: int) -> str:  # a distinct all-letter word of at most six letters: one token
        return "".join(chr(97 + (i // 26**k) % 26) for k in range(3))

    texts = [" ".join([word(i)] + ["lorem"] * 49) for i in range(180)]
    assert {estimate_tokens(text) for text in texts} == {50}
    return texts


def fill(emulator: JinaEmulator, cache: Path, limiter: RateLimiter | None) -> float:
    """Fill the corpus into a fresh cache; returns the seconds it took."""
    client = JinaClient(
        API_KEY, base_url=emulator.url, limiter=limiter, max_attempts=30, backoff_base=0.05
    )
    with Store(cache) as store:
        embedder = build_embedder(store, client, batch_size=BATCH)
        started = time.monotonic()
        report = embedder.warm(corpus(), OPTIONS)
        elapsed = time.monotonic() - started
        embedder.close()
    client.close()
    assert report.tokens_spent == 9000
    return elapsed


def statuses(emulator: JinaEmulator) -> Counter[int | None]:
    return Counter(request.status for request in emulator.requests)


def test_a_paced_fill_spends_the_budget_with_at_most_3_429s(
    emulator: JinaEmulator, tmp_path: Path
) -> None:
    emulator.rate_limits = RateLimits(tpm=TPM, window=WINDOW)
    fill(emulator, tmp_path / "paced", RateLimiter(Limits(tpm=TPM, window=WINDOW)))
    assert statuses(emulator)[429] <= 3
    assert statuses(emulator)[200] == 23


@pytest.mark.stress  # wall-clock bound: kept out of the default run, which never times
def test_a_paced_fill_stays_within_15_percent_of_what_the_token_limit_allows(
    emulator: JinaEmulator, tmp_path: Path
) -> None:
    emulator.rate_limits = RateLimits(tpm=TPM, window=WINDOW)
    limits = Limits(tpm=TPM, window=WINDOW)
    elapsed = fill(emulator, tmp_path / "paced", RateLimiter(limits))
    allowed = limits.seconds_for(requests=180 // BATCH, tokens=9000)
    assert allowed == 4.0  # 2,000 tokens at 0, 1, 2 and 3 s, the last 1,000 at 4 s
    assert elapsed <= allowed * 1.15, f"{elapsed:.2f}s for {allowed:.2f}s allowed"


def test_without_the_limiter_the_same_fill_provokes_a_storm_of_429s(
    emulator: JinaEmulator, tmp_path: Path
) -> None:
    emulator.rate_limits = RateLimits(tpm=TPM, window=WINDOW)
    fill(emulator, tmp_path / "unpaced", None)
    storm = statuses(emulator)[429]
    assert statuses(emulator)[200] == 23
    assert storm >= 10, f"only {storm} 429s"


def test_a_dry_run_reports_the_least_time_the_limits_allow(
    emulator: JinaEmulator, tmp_path: Path
) -> None:
    texts = tmp_path / "corpus.txt"
    texts.write_text("\n".join(corpus()) + "\n", encoding="utf-8")
    run = functools.partial(invoke, cache_dir=tmp_path / "cache", base_url=emulator.url)
    report = as_json(
        run("--tpm", "2000", "prewarm", "--dry-run", "--json", "--batch-size", "8", str(texts))
    )
    assert (report["estimated_requests"], report["estimated_tokens"]) == (23, 9000)
    assert report["estimated_seconds"] == 240.0  # 4 whole minutes after the first
    unpaced = ok(run("prewarm", "--dry-run", str(texts)))
    assert "no rate limits set" in unpaced.output
    assert emulator.requests == []


def test_a_paced_prewarm_estimates_what_is_left_at_the_limits_pace() -> None:
    from embedcache.cli.prewarm import Progress, _pace_of

    pace = _pace_of(
        Limits(tpm=1000, window=60),
        {"to_fetch": 100, "estimated_tokens": 5000, "estimated_requests": 10},
    )
    assert pace is not None
    progress = Progress(total=120, cached=20, pace=pace)
    progress.advance(50, 2500)
    assert progress.eta() == 150.0  # 2,500 tokens left at 1,000 a minute
    progress.close()
    assert _pace_of(Limits(), {"to_fetch": 100}) is None
