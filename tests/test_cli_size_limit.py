"""A size limit set without Python: ``embedcache limit`` and the global ``--size-limit``.

The limit is kept in the cache directory, so every writer honours it: the library, the CLI's
writing commands and the proxy. A limit below what the cache holds evicts the excess at
once, asking first when that is most of the cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from click.testing import CliRunner, Result

from embedcache import JinaEmbeddingFunction
from embedcache.cli import main
from embedcache.storage.store import Store
from embedcache.testing import JinaEmulator

from .cli_helpers import as_json, ok, one_line_error
from .conftest import API_KEY, MakeProxy

ENTRY = 1024 * 4  # bytes a jina-embeddings-v3 vector counts for
TWO_ENTRIES = "8KiB"
TEXTS = ["the oldest", "the middle one", "the newest"]


def cli(cache_dir: Path, *args: str, stdin: str | None = None, url: str | None = None) -> Result:
    options = ["--cache-dir", str(cache_dir)] + (["--base-url", url] if url else [])
    return CliRunner().invoke(main, [*options, *args], env={"JINA_API_KEY": API_KEY}, input=stdin)


def limit_of(cache_dir: Path) -> int | None:
    with Store(cache_dir) as store:
        return store.size_limit


def cached(cache_dir: Path, text: str, url: str) -> bool:
    """Whether ``text`` is cached as the upstream at ``url`` answered it."""
    return bool(as_json(cli(cache_dir, "inspect", text, "--json", url=url))["cached"])


def fill(make_ef: Callable[..., JinaEmbeddingFunction], texts: list[str]) -> None:
    """One write per text, so each is stored after the one before it."""
    with make_ef() as ef:
        for text in texts:
            ef.encode_documents([text])


def test_limit_sets_shows_and_removes_the_limit_kept_in_the_directory(cache_dir: Path) -> None:
    ok(cli(cache_dir, "limit", "10GB"))  # a new cache: made to hold the setting
    assert limit_of(cache_dir) == 10 * 1000**3
    shown = as_json(cli(cache_dir, "limit", "--json"))
    assert shown["size_limit"] == 10 * 1000**3
    assert shown["entries"] == 0
    assert "size limit   10.0 GB (10,000,000,000 bytes)" in ok(cli(cache_dir, "limit")).stdout

    ok(cli(cache_dir, "limit", "512MiB"))
    assert limit_of(cache_dir) == 512 * 1024**2
    report = as_json(cli(cache_dir, "limit", "none", "--json"))
    assert report["size_limit"] is None
    assert report["previous_size_limit"] == 512 * 1024**2
    assert limit_of(cache_dir) is None


def test_a_size_without_its_unit_is_refused_by_limit_and_by_size_limit(cache_dir: Path) -> None:
    for args in (["limit", "6"], ["--size-limit", "6", "get", "x"]):
        error = one_line_error(cli(cache_dir, *args), code=2)
        assert "'6' has no unit: say 6GB, 6MiB or 6B (bytes)" in error
    assert not cache_dir.exists()


def test_a_limit_set_by_the_cli_makes_the_library_evict_the_oldest(
    make_ef: Callable[..., JinaEmbeddingFunction], emulator: JinaEmulator, cache_dir: Path
) -> None:
    ok(cli(cache_dir, "limit", TWO_ENTRIES))
    fill(make_ef, TEXTS)

    with Store(cache_dir) as store:
        assert len(store) == 2
        assert store.vector_bytes() == 2 * ENTRY
    sent = len(emulator.received_texts())
    fill(make_ef, TEXTS[1:])  # kept: no request
    assert len(emulator.received_texts()) == sent
    fill(make_ef, TEXTS[:1])  # evicted: fetched again
    assert emulator.received_texts()[sent:] == TEXTS[:1]


def proxy_embeds(url: str, texts: list[str]) -> None:
    """One request per text, so each is stored after the one before it."""
    for text in texts:
        response = httpx.post(
            f"{url}/v1/embeddings",
            json={"model": "jina-embeddings-v3", "input": [text]},
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text


def refetched_by_a_fresh_proxy(
    make_proxy: MakeProxy, emulator: JinaEmulator, texts: list[str]
) -> list[str]:
    """The texts a proxy that holds nothing in memory yet sends upstream for ``texts``:
    those the cache directory lacks."""
    proxy = make_proxy()
    sent = len(emulator.received_texts())
    proxy_embeds(proxy.url, texts)
    proxy.stop()
    return emulator.received_texts()[sent:]


def test_a_limit_set_by_the_cli_is_honoured_by_the_proxy(
    make_proxy: MakeProxy, emulator: JinaEmulator, cache_dir: Path
) -> None:
    ok(cli(cache_dir, "limit", TWO_ENTRIES))
    proxy = make_proxy()
    proxy_embeds(proxy.url, TEXTS)
    proxy.stop()

    with Store(cache_dir) as store:
        assert len(store) == 2
        assert store.vector_bytes() == 2 * ENTRY
    assert refetched_by_a_fresh_proxy(make_proxy, emulator, TEXTS[1:]) == []
    assert refetched_by_a_fresh_proxy(make_proxy, emulator, TEXTS[:1]) == TEXTS[:1]


def test_serve_size_limit_records_the_limit_the_proxy_evicts_by(
    make_proxy: MakeProxy, emulator: JinaEmulator, cache_dir: Path
) -> None:
    proxy = make_proxy("--size-limit", TWO_ENTRIES)
    proxy_embeds(proxy.url, TEXTS)
    proxy.stop()

    assert limit_of(cache_dir) == 2 * ENTRY  # kept for every later writer
    with Store(cache_dir) as store:
        assert len(store) == 2
        assert store.vector_bytes() == 2 * ENTRY
    assert refetched_by_a_fresh_proxy(make_proxy, emulator, TEXTS[1:]) == []


def test_get_with_size_limit_records_it_and_evicts_past_it(
    emulator: JinaEmulator, cache_dir: Path
) -> None:
    for text in TEXTS:  # the global option before or after the command name
        ok(cli(cache_dir, "get", text, "--size-limit", TWO_ENTRIES, url=emulator.url))
    assert limit_of(cache_dir) == 2 * ENTRY
    assert [cached(cache_dir, text, emulator.url) for text in TEXTS] == [False, True, True]


def test_a_limit_below_the_cache_evicts_the_oldest_now_after_asking(
    make_ef: Callable[..., JinaEmbeddingFunction], cache_dir: Path, emulator: JinaEmulator
) -> None:
    fill(make_ef, [*TEXTS, "a fourth"])

    refused = cli(cache_dir, "limit", "4KiB", stdin="n\n")
    assert refused.exit_code == 1
    assert "Evict 3 of 4 entries (12.3 KB of 16.4 KB)" in refused.output
    assert limit_of(cache_dir) is None  # nothing changed
    with Store(cache_dir) as store:
        assert len(store) == 4

    report = as_json(cli(cache_dir, "limit", "4KiB", "--yes", "--json"))
    assert report["evicted"] == 3
    assert report["evicted_bytes"] == 3 * ENTRY
    assert report["entries"] == 1
    assert report["vector_bytes"] == ENTRY
    assert limit_of(cache_dir) == ENTRY
    assert [cached(cache_dir, text, emulator.url) for text in [*TEXTS, "a fourth"]] == [
        False
    ] * 3 + [True]


def test_a_limit_that_evicts_less_than_half_does_not_ask(
    make_ef: Callable[..., JinaEmbeddingFunction], cache_dir: Path, emulator: JinaEmulator
) -> None:
    fill(make_ef, TEXTS)
    text = ok(cli(cache_dir, "limit", TWO_ENTRIES)).stdout  # no input: it must not ask
    assert "evicted      1 entry, the oldest" in text
    assert [cached(cache_dir, t, emulator.url) for t in TEXTS] == [False, True, True]


def test_limit_dry_run_changes_nothing_and_creates_no_cache(
    make_ef: Callable[..., JinaEmbeddingFunction], cache_dir: Path, tmp_path: Path
) -> None:
    fill(make_ef, TEXTS)
    report = as_json(cli(cache_dir, "limit", "4KiB", "--dry-run", "--json"))
    assert report["dry_run"] is True
    assert report["evicted"] == 2
    assert limit_of(cache_dir) is None
    with Store(cache_dir) as store:
        assert len(store) == 3

    nowhere = tmp_path / "nowhere"
    assert as_json(cli(nowhere, "limit", "4KiB", "--dry-run", "--json"))["evicted"] == 0
    assert not nowhere.exists()


def test_reading_commands_refuse_size_limit_and_leave_the_limit_alone(
    make_ef: Callable[..., JinaEmbeddingFunction], cache_dir: Path
) -> None:
    fill(make_ef, TEXTS[:1])
    error = one_line_error(cli(cache_dir, "stats", "--size-limit", "1GB"), code=2)
    assert "--size-limit is set by commands that write entries" in error
    assert limit_of(cache_dir) is None
