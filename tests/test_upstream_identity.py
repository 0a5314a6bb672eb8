"""The upstream is part of what an entry means (issue 22, defect 3): a vector fetched from one
upstream is never a hit for another, unless the user declares them equivalent; entries
written before upstreams were recorded are read as Jina's API's."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from embedcache import CacheMissError, JinaEmbeddingFunction, Store
from embedcache.cache_keys import fingerprint
from embedcache.config import DEFAULT_UPSTREAM_ID, resolve_upstream_id, upstream_id
from embedcache.models import RequestOptions
from embedcache.testing import JinaEmulator

from .cli_helpers import as_json, invoke, ok, one_line_error
from .conftest import API_KEY, MakeProxy, wait_for

TEXTS = ["the emulator's vector is random", "and must never pass for Jina's"]


def _options() -> RequestOptions:
    return RequestOptions("jina-embeddings-v3", task="retrieval.passage")


def test_upstream_ids_ignore_credentials_case_default_port_and_trailing_slash() -> None:
    assert upstream_id("HTTPS://user:pw@API.Jina.AI:443/") == "https://api.jina.ai"
    assert upstream_id("http://127.0.0.1:8080/v1/?token=x") == "http://127.0.0.1:8080/v1"
    assert upstream_id("http://localhost:80") == "http://localhost"
    assert upstream_id(" my-gateway ") == "my-gateway"  # a declared name, kept as written


def test_jina_api_fingerprint_is_the_one_every_earlier_version_wrote() -> None:
    # The compatibility rule: entries written before upstreams were recorded keep their
    # keys, and are read as Jina's API's.
    # (as 02a92bb, the last version without upstreams, writes it; and its 64-bit id)
    legacy = (
        '{"key_version":1,"request":{"embedding_type":"base64","model":"jina-embeddings-v3",'
        '"task":"retrieval.passage"}}'
    )
    fp = fingerprint(_options())
    assert fp.canonical == legacy
    assert fp.id == 13944098394810709970
    assert fp.upstream == DEFAULT_UPSTREAM_ID == "https://api.jina.ai"


def test_another_upstream_gets_another_fingerprint_that_names_it() -> None:
    jina = fingerprint(_options())
    local = fingerprint(_options(), upstream_id("http://127.0.0.1:9999"))
    assert local.id != jina.id
    assert local.upstream == "http://127.0.0.1:9999"
    assert local.fields == jina.fields


def test_declared_upstream_wins_over_the_base_url_and_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert resolve_upstream_id("http://10.0.0.5:4000/") == "http://10.0.0.5:4000"
    monkeypatch.setenv("EMBEDCACHE_UPSTREAM_AS", "https://api.jina.ai/")
    assert resolve_upstream_id("http://10.0.0.5:4000") == "https://api.jina.ai"
    assert resolve_upstream_id("http://10.0.0.5:4000", "gw") == "gw"


def _fill(emulator: JinaEmulator, cache_dir: Path, upstream_as: str | None = None) -> None:
    with JinaEmbeddingFunction(
        api_key=API_KEY, base_url=emulator.url, cache_dir=cache_dir, upstream_as=upstream_as
    ) as ef:
        ef.encode_documents(TEXTS)


def test_entries_from_the_emulator_are_not_hits_for_the_jina_api(
    emulator: JinaEmulator, cache_dir: Path
) -> None:
    _fill(emulator, cache_dir)
    with (
        JinaEmbeddingFunction(cache_dir=cache_dir, offline=True) as ef,
        pytest.raises(CacheMissError),
    ):
        ef.encode_documents(TEXTS)


def test_entries_from_one_endpoint_are_fetched_again_from_another(
    emulator: JinaEmulator, cache_dir: Path
) -> None:
    _fill(emulator, cache_dir)
    with JinaEmulator(api_key=API_KEY) as staging:
        _fill(staging, cache_dir)
        assert sum(r.inputs for r in staging.requests) == len(TEXTS)


def test_a_declared_equivalent_upstream_shares_the_entries(
    emulator: JinaEmulator, cache_dir: Path
) -> None:
    _fill(emulator, cache_dir, upstream_as="https://api.jina.ai")
    with JinaEmulator(api_key=API_KEY) as gateway:
        _fill(gateway, cache_dir, upstream_as="https://api.jina.ai")
        assert gateway.requests == []
    with JinaEmbeddingFunction(cache_dir=cache_dir, offline=True) as ef:
        assert len(ef.encode_documents(TEXTS)) == len(TEXTS)  # Jina's, as declared


def test_proxy_in_front_of_another_upstream_does_not_serve_the_first_ones_vectors(
    emulator: JinaEmulator, cache_dir: Path, make_proxy: MakeProxy
) -> None:
    _fill(emulator, cache_dir)
    with JinaEmulator(api_key=API_KEY) as other:
        proxy = make_proxy(upstream=other.url)
        answer = httpx.post(
            proxy.url + "/v1/embeddings",
            json={"model": "jina-embeddings-v3", "task": "retrieval.passage", "input": TEXTS},
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=30,
        )
        assert answer.status_code == 200
        assert sum(r.inputs for r in other.requests) == len(TEXTS)


def test_cli_get_offline_at_the_jina_api_misses_what_the_emulator_filled(
    emulator: JinaEmulator, cache_dir: Path
) -> None:
    ok(invoke("get", TEXTS[0], cache_dir=cache_dir, base_url=emulator.url, key=API_KEY))
    assert "CacheMissError" in one_line_error(
        invoke("get", "--offline", TEXTS[0], cache_dir=cache_dir)
    )


def test_ls_stats_and_inspect_show_where_each_entry_came_from(
    emulator: JinaEmulator, cache_dir: Path
) -> None:
    ok(invoke("get", TEXTS[0], cache_dir=cache_dir, base_url=emulator.url, key=API_KEY))
    _fill(emulator, cache_dir, upstream_as="https://api.jina.ai")
    listed = as_json(invoke("ls", "--json", cache_dir=cache_dir))
    assert {entry["upstream"] for entry in listed} == {emulator.url, "https://api.jina.ai"}
    table = ok(invoke("ls", cache_dir=cache_dir)).stdout
    assert "UPSTREAM" in table.splitlines()[0]
    assert emulator.url in table
    groups = as_json(invoke("stats", "--json", cache_dir=cache_dir))["groups"]
    assert sorted((g["upstream"], g["entries"]) for g in groups) == [
        (emulator.url, 1),
        ("https://api.jina.ai", 2),
    ]
    assert f"({emulator.url})" in ok(invoke("stats", cache_dir=cache_dir)).stdout
    seen = as_json(
        invoke("inspect", TEXTS[0], "--json", cache_dir=cache_dir, base_url=emulator.url)
    )
    assert seen["cached"] is True
    assert seen["upstream"] == emulator.url


def test_prune_upstream_removes_one_upstreams_entries_only(
    emulator: JinaEmulator, cache_dir: Path
) -> None:
    ok(invoke("get", TEXTS[0], cache_dir=cache_dir, base_url=emulator.url, key=API_KEY))
    _fill(emulator, cache_dir, upstream_as="https://api.jina.ai")
    report = as_json(
        invoke("prune", "--upstream", emulator.url + "/", "--yes", "--json", cache_dir=cache_dir)
    )
    assert report["removed"] == 1
    left = as_json(invoke("ls", "--json", cache_dir=cache_dir))
    assert {entry["upstream"] for entry in left} == {"https://api.jina.ai"}


def test_a_kept_demo_cache_is_warm_on_the_next_run(tmp_path: Path) -> None:
    # Each run's emulator listens on another port; the demo declares them one upstream.
    first = as_json(invoke("demo", "--cache-dir", str(tmp_path / "kept"), "--json"))
    again = as_json(invoke("demo", "--cache-dir", str(tmp_path / "kept"), "--json"))
    assert first["passes"][0]["requests"] > 0
    assert again["requests"] == 0


def test_the_float_style_is_kept_for_the_upstream_the_entries_are_cached_as(
    emulator: JinaEmulator, cache_dir: Path, make_proxy: MakeProxy
) -> None:
    emulator.float_style = "float32"
    proxy = make_proxy("--upstream-as", "team-gateway")
    answer = proxy.embed({"model": "jina-embeddings-v3", "input": ["learned"]}, API_KEY)
    assert answer.status_code == 200, answer.text
    with Store(cache_dir) as store:
        wait_for(lambda: store.setting("float_style team-gateway") == "float32", "not kept")
