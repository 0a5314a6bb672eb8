"""The dashboard: ``GET /dashboard`` and the per-minute history ``/admin/stats`` feeds it,
the page itself driven in a real headless Chromium against a live proxy."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from embedcache.proxy.access import key_name
from embedcache.proxy.history import MINUTES, History

from .conftest import API_KEY, MakeProxy, MakeServed

ADMIN = "dash-admin-secret"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
#: Set to a path to have the browser test save its screenshot there (docs/dashboard.png).
SCREENSHOT_ENV = "EMBEDCACHE_DASHBOARD_SCREENSHOT"


def _body(*texts: str) -> dict[str, Any]:
    return {"model": "jina-embeddings-v3", "input": list(texts)}


def _stats(proxy: Any) -> dict[str, Any]:
    response = proxy.http.get("/admin/stats", headers=ADMIN_HEADERS)
    assert response.status_code == 200
    stats: dict[str, Any] = response.json()
    return stats


def _history_sum(stats: dict[str, Any], name: str) -> float:
    return float(sum(minute[name] for minute in stats["history"]["minutes"]))


def test_the_dashboard_is_off_without_an_admin_token(make_proxy: MakeProxy) -> None:
    off = make_proxy().http.get("/dashboard")
    assert off.status_code == 404
    assert "--admin-token" in off.json()["detail"]


def test_the_dashboard_page_is_self_contained_and_holds_no_token(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(env={"EMBEDCACHE_ADMIN_TOKEN": ADMIN})
    page = proxy.http.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["cache-control"] == "no-store"
    assert ADMIN not in page.text
    # Nothing fetched from elsewhere: no CDN, no web font, no external script or sheet.
    local = page.text.replace("http://www.w3.org/2000/svg", "")  # a namespace, not a fetch
    for reference in ("http://", "https://", "//cdn", "@import", "<script src", "stylesheet"):
        assert reference not in local


def test_the_dashboard_refuses_an_admin_token_in_the_url(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(env={"EMBEDCACHE_ADMIN_TOKEN": ADMIN})
    refused = proxy.http.get("/dashboard", params={"token": ADMIN})
    assert refused.status_code == 400
    assert ADMIN not in refused.text
    assert "URL" in refused.json()["detail"]


def test_admin_stats_counts_requests_hits_and_dollars_per_minute(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(
        env={"EMBEDCACHE_ADMIN_TOKEN": ADMIN, "EMBEDCACHE_PRICE_PER_MILLION_TOKENS": "0.02"}
    )
    assert proxy.embed(_body("one", "two"), API_KEY).status_code == 200  # 2 misses
    assert proxy.embed(_body("one", "two"), API_KEY).status_code == 200  # 2 hits
    assert proxy.embed(_body("one", "three"), API_KEY).status_code == 200  # 1 hit, 1 miss
    stats = _stats(proxy)
    since = stats["since_start"]
    assert (since["hits"], since["misses"]) == (3, 3)
    assert stats["hit_rate"] == 0.5
    assert stats["price_per_million_tokens"] == 0.02
    assert stats["usd_spent"] == round(since["tokens_spent"] * 0.02 / 1e6, 6)
    assert stats["usd_saved"] == round(since["tokens_saved"] * 0.02 / 1e6, 6)
    minutes = stats["history"]["minutes"]
    assert len(minutes) == MINUTES
    assert [m["start"] for m in minutes] == sorted({m["start"] for m in minutes})
    assert _history_sum(stats, "requests") == 3
    assert _history_sum(stats, "hits") == 3
    assert _history_sum(stats, "misses") == 3
    assert _history_sum(stats, "tokens_spent") == since["tokens_spent"]


def test_a_bad_price_stops_the_proxy_naming_the_option(make_proxy: MakeProxy) -> None:
    # The price is serve's --price-per-million, which also reads the variable.
    with pytest.raises(RuntimeError, match=r"--price-per-million.*cheap"):
        make_proxy(env={"EMBEDCACHE_PRICE_PER_MILLION_TOKENS": "cheap"})


def test_the_history_adds_up_every_workers_minutes_and_forgets_after_its_ring() -> None:
    history = History(2, minutes=3)
    first, second = history.recorder(0), history.recorder(1)
    base = 600.0  # minute 10
    counts = {"requests": 2, "hits": 1, "misses": 1, "tokens_spent": 5, "tokens_saved": 2.5}
    first.record(counts, now=base)
    second.record({**counts, "requests": 1}, now=base + 30)
    grown = {**counts, "requests": 5, "hits": 4}  # 3 more requests, 3 more hits, next minute
    first.record(grown, now=base + 60)
    report = history.report(now=base + 60)
    assert [m["start"] for m in report] == [540, 600, 660]
    assert report[0]["requests"] == 0
    assert (report[1]["requests"], report[1]["hits"], report[1]["tokens_saved"]) == (3, 2, 5.0)
    assert (report[2]["requests"], report[2]["hits"], report[2]["misses"]) == (3, 3, 0)
    # Three minutes later minute 10's slot is reused for minute 13: minute 10 is gone.
    first.record({**grown, "requests": 6}, now=base + 180)
    later = history.report(now=base + 180)
    assert [m["start"] for m in later] == [660, 720, 780]
    assert [m["requests"] for m in later] == [3, 0, 1]


def test_the_history_is_shared_by_the_workers_of_a_served_proxy(
    make_served: MakeServed,
) -> None:
    proxy = make_served("--workers", "2", env={"EMBEDCACHE_ADMIN_TOKEN": ADMIN})
    for i in range(12):  # new connections: the kernel spreads them over both workers
        with proxy.http.__class__(base_url=proxy.url) as client:
            body = _body(f"text {i % 4}")
            headers = {"Authorization": f"Bearer {API_KEY}"}
            assert client.post("/v1/embeddings", json=body, headers=headers).status_code == 200
    stats = _stats(proxy)
    assert stats["workers"] == 2
    # A worker's figures reach the board within a fraction of a second: ask until they do.
    for _ in range(50):
        if _history_sum(stats, "requests") == 12:
            break
        stats = _stats(proxy)
    assert _history_sum(stats, "requests") == 12
    assert _history_sum(stats, "hits") == stats["since_start"]["hits"]
    assert _history_sum(stats, "misses") == stats["since_start"]["misses"] == 4


# The browser test ----------------------------------------------------------------------


@contextlib.contextmanager
def _chromium() -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) and shutil.which("chromedriver")):
        pytest.skip(
            f"needs Debian's chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}): "
            "apt-get install chromium chromium-driver (.ci/run does)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1100,1250")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=shutil.which("chromedriver") or CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def _integer(value: float) -> str:
    """As the page writes a count: rounded half up, thousands separated."""
    return f"{math.floor(value + 0.5):,}"


def _usd(value: float) -> str:
    """As the page writes dollars: to the millionth, thousands separated."""
    return f"${value:,.6f}"


def _size(value: float) -> str:
    """As the page writes bytes: in the largest binary unit that keeps it at least 1."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while value >= 1024 and i < len(units) - 1:
        value /= 1024
        i += 1
    return f"{int(value)} B" if i == 0 else f"{value:.1f} {units[i]}"


def _table(driver: Any, element_id: str) -> list[list[str]]:
    """A table's body as the page shows it, cell by cell."""
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f"#{element_id} tbody tr")
    return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]


def _log_in(driver: Any, proxy: Any) -> None:
    """Open the dashboard, type the admin token, and wait for the figures."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{proxy.url}/dashboard")
    driver.find_element(By.ID, "token").send_keys(ADMIN)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "board").is_displayed())


def _no_console_errors(driver: Any) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []


def _usage_cells(row: dict[str, Any]) -> list[str]:
    """A caller's or model's figures as the page writes them, after its name(s)."""
    counts = ("requests", "texts", "hits", "misses", "tokens_spent", "tokens_saved")
    return [
        *(_integer(row[name]) for name in counts),
        _usd(row["usd_spent"]),
        _usd(row["usd_saved"]),
        _integer(row["errors"]),
        _integer(row["over_budget"]),
    ]


def test_the_dashboard_shows_the_admin_stats_in_a_real_browser(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(env={"EMBEDCACHE_ADMIN_TOKEN": ADMIN, "EMBEDCACHE_RPM": "500"})
    for texts in (("alpha", "beta", "gamma"), ("alpha", "beta"), ("alpha", "delta"), ("beta",)):
        assert proxy.embed(_body(*texts), API_KEY).status_code == 200
    for _ in range(100):  # the records reach usage.db within a second or two
        if sum(row["requests"] for row in _stats(proxy)["callers"]) == 4:
            break
        time.sleep(0.1)
    with _chromium() as driver:
        from selenium.webdriver.common.by import By

        _log_in(driver, proxy)
        stats = _stats(proxy)  # nothing asked since: the figures the page polled
        since = stats["since_start"]
        minutes = stats["history"]["minutes"][-60:]

        def shown(element_id: str) -> str:
            text: str = driver.find_element(By.ID, element_id).text
            return text

        assert shown("hit-rate") == f"{stats['hit_rate'] * 100:.1f}%"
        assert shown("hits") == _integer(since["hits"])
        assert shown("misses") == _integer(since["misses"])
        assert shown("coalesced") == _integer(since["coalesced"])
        assert shown("upstream-requests") == _integer(since["requests"])
        assert shown("tokens-spent") == _integer(since["tokens_spent"])
        assert shown("tokens-saved") == _integer(since["tokens_saved"])
        assert shown("usd-spent") == _usd(stats["usd_spent"])
        assert shown("usd-saved") == _usd(stats["usd_saved"])
        assert shown("entries") == _integer(stats["entries"])
        cache = stats["cache"]
        assert shown("bytes-on-disk") == _size(cache["bytes_on_disk"])
        assert shown("vector-bytes") == _size(cache["vector_bytes"])
        assert shown("size-limit") == "none"
        upstream = stats["upstream"]
        assert shown("upstream-state") == upstream["state"] == "ok"
        assert shown("upstream-sent") == _integer(upstream["sent"])
        assert shown("upstream-retries") == _integer(upstream["retries"])
        for kind in ("rate_limited", "server_error", "transport", "client_error"):
            shown_id = f"upstream-{kind.replace('_', '-')}"
            assert shown(shown_id) == _integer(upstream["failures"][kind])
        assert shown("upstream-mean-ms") == f"{upstream['mean_ms']:.1f} ms"
        assert shown("upstream-last-failure") == "none"
        pacing = upstream["pacing"]
        assert _table(driver, "pacing") == [
            ["requests per window", _integer(pacing["rpm"])],
            ["tokens per window", "unlimited"],
            ["concurrent requests", "unlimited"],
            ["window", f"{pacing['window_seconds']:,.0f} s"],
            ["budgets in use (after 429 backoff)", f"{pacing['scale'] * 100:.1f}%"],
            ["paused for", f"{pacing['paused_seconds']:,.0f} s"],
            ["requests in the window", _integer(pacing["window_requests"])],
            ["tokens in the window", _integer(pacing["window_tokens"])],
            ["in flight", _integer(pacing["in_flight"])],
            ["429s despite pacing", _integer(pacing["rate_limited"])],
            ["time spent waiting", f"{pacing['waited_seconds']:,.0f} s"],
        ]
        assert pacing["window_requests"] == upstream["sent"] == 2
        assert shown("budgets-default") == "no budgets"
        assert [row["requests"] for row in stats["callers"]] == [4]
        assert _table(driver, "callers") == [
            [row["key"] or "(none)", *_usage_cells(row)] for row in stats["callers"]
        ]
        assert _table(driver, "models") == [
            [row["model"] or "(none)", row["task"] or "(none)", *_usage_cells(row)]
            for row in stats["models"]
        ]
        assert _table(driver, "budgets") == []
        assert shown("workers") == _integer(stats["workers"])
        assert shown("minutes-requests") == _integer(sum(m["requests"] for m in minutes))
        assert shown("minutes-hits") == _integer(sum(m["hits"] for m in minutes))
        assert shown("minutes-requests") == "4"
        assert driver.find_elements(By.CSS_SELECTOR, "#chart-minutes rect")  # bars drawn
        assert ADMIN not in driver.page_source  # the token is not written into the page
        _no_console_errors(driver)
        if target := os.environ.get(SCREENSHOT_ENV):  # the whole page, not the window
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1100, height + 160)
            Path(target).write_bytes(driver.get_screenshot_as_png())


def test_the_dashboard_shows_the_budgets_and_their_state_in_a_real_browser(
    make_proxy: MakeProxy, tmp_path: Path
) -> None:
    budgets = tmp_path / "budgets.toml"
    budgets.write_text('[groups.team]\ntokens = 5000\nkeys = ["k_0123456789ab"]\n', "utf-8")
    proxy = make_proxy(
        "--budget-tokens", "1000", "--budget-window", "3600", "--budgets", str(budgets),
        env={"EMBEDCACHE_ADMIN_TOKEN": ADMIN},
    )  # fmt: skip
    assert proxy.embed(_body("alpha", "beta"), API_KEY).status_code == 200
    with _chromium() as driver:
        from selenium.webdriver.common.by import By

        _log_in(driver, proxy)
        stats = _stats(proxy)
        listed = stats["budgets"]["callers"]
        assert {row["name"] for row in listed} == {"group:team", key_name(API_KEY)}
        assert driver.find_element(By.ID, "pacing-off").text.startswith("Not paced")
        shown = driver.find_element(By.ID, "budgets-default").text
        assert shown == "Default: 1,000 tokens per 3,600 s for every key not listed."
        rows = _table(driver, "budgets")
        assert [row[:5] for row in rows] == [
            [b["name"], _integer(b["tokens"]), f"{b['window']:,} s", _integer(b["spent"]),
             _integer(b["remaining"])]
            for b in listed
        ]  # fmt: skip
        for row, budget in zip(rows, listed, strict=True):  # a second may pass between
            assert abs(int(row[5].removesuffix(" s").replace(",", "")) - budget["resets_in"]) <= 2
        _no_console_errors(driver)
