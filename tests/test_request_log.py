"""``serve --request-log FILE``: one JSON line per embedding request (hit, miss, partial,
refused; Jina, OpenAI and TEI dialects), never a text or a key, rotated by size, and
whole lines from several workers."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from embedcache.cli import main
from embedcache.proxy.requestlog import RequestLog, RequestRecord
from embedcache.testing import JinaEmulator

from .conftest import API_KEY, MakeProxy, MakeServed
from .serving import ProxyInProcess, Served

V3 = "jina-embeddings-v3"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
KEYS = [
    "time", "route", "dialect", "key", "model", "task", "dimensions", "texts", "hits",
    "misses", "tokens_spent", "tokens_saved", "ms", "status", "cache", "digest",
]  # fmt: skip
TEXTS = ["secret text one", "secret text two", "secret text three"]
KEY_HASH = "k_" + hashlib.sha256(API_KEY.encode()).hexdigest()[:12]


def lines(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    assert not raw or raw.endswith(b"\n")  # a file just rotated is empty
    return [json.loads(line) for line in raw.splitlines()]


def post(proxy: Served, body: dict[str, Any], key: str = API_KEY) -> httpx.Response:
    return proxy.http.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key}"})


def test_each_request_kind_gets_one_line_without_any_text_or_key(
    make_proxy: MakeProxy, tmp_path: Path
) -> None:
    path = tmp_path / "requests.jsonl"
    proxy = make_proxy("--request-log", str(path))
    post(proxy, {"model": V3, "input": TEXTS[:2], "task": "retrieval.query", "dimensions": 64})
    post(proxy, {"model": V3, "input": TEXTS[:2], "task": "retrieval.query", "dimensions": 64})
    post(proxy, {"model": V3, "input": [TEXTS[0], TEXTS[2]], "encoding_format": "float"})
    proxy.http.post("/embed", json={"inputs": [TEXTS[2]]}, headers=AUTH)
    post(proxy, {"model": "no-such-model", "input": TEXTS[:1]})
    proxy.stop()
    raw = path.read_bytes()
    assert API_KEY.encode() not in raw
    assert not any(text.encode() in raw for text in TEXTS)
    miss, hit, openai, tei, refused = lines(path)
    assert [list(line) for line in (miss, hit, openai, tei, refused)] == [KEYS] * 5
    assert miss["time"].endswith("Z")
    assert len(miss["time"]) == len("2026-12-07T19:51:13.123Z")
    assert {line["key"] for line in (miss, hit, openai, tei, refused)} == {KEY_HASH}
    assert miss | {"time": 0, "ms": 0, "tokens_spent": 0, "digest": 0} == {
        "time": 0, "route": "/v1/embeddings", "dialect": "jina", "key": KEY_HASH,
        "model": V3, "task": "retrieval.query", "dimensions": 64, "texts": 2, "hits": 0,
        "misses": 2, "tokens_spent": 0, "tokens_saved": 0, "ms": 0, "status": 200,
        "cache": "miss", "digest": 0,
    }  # fmt: skip
    assert miss["tokens_spent"] > 0
    # What was fetched carries its request's digest; what was not, none.
    assert re.fullmatch(r"r_[0-9a-f]{16}", miss["digest"])
    assert len({miss["digest"], openai["digest"], tei["digest"]}) == 3
    assert hit["digest"] is None
    assert refused["digest"] is None
    assert (hit["cache"], hit["hits"], hit["misses"], hit["tokens_spent"]) == ("hit", 2, 0, 0)
    assert hit["tokens_saved"] == miss["tokens_spent"]
    assert (hit["task"], hit["dimensions"]) == ("retrieval.query", 64)
    # No task nor dimensions: other settings than the first two, so other entries.
    assert (openai["dialect"], openai["cache"], openai["hits"], openai["misses"]) == (
        "openai", "miss", 0, 2,
    )  # fmt: skip
    assert (openai["task"], openai["dimensions"]) == (None, None)
    assert (tei["route"], tei["dialect"], tei["model"], tei["texts"]) == ("/embed", "tei", V3, 1)
    assert (tei["task"], tei["cache"], tei["status"]) == ("retrieval.passage", "miss", 200)
    assert refused["status"] >= 400
    assert refused["cache"] is None
    assert refused["texts"] == 1
    assert refused["hits"] == refused["misses"] == 0


def test_partial_and_openai_lines_count_hits_and_misses(
    make_proxy: MakeProxy, tmp_path: Path
) -> None:
    path = tmp_path / "requests.jsonl"
    proxy = make_proxy("--request-log", str(path))
    post(proxy, {"model": V3, "input": TEXTS[:1], "encoding_format": "float"})
    post(proxy, {"model": V3, "input": TEXTS[:2], "encoding_format": "float"})
    proxy.stop()
    first, partial = lines(path)
    assert (first["dialect"], first["cache"]) == ("openai", "miss")
    assert (partial["dialect"], partial["cache"], partial["hits"], partial["misses"]) == (
        "openai", "partial", 1, 1,
    )  # fmt: skip
    assert partial["tokens_saved"] == first["tokens_spent"] > 0


def test_a_key_refused_at_the_headers_is_logged_with_its_hash_only(
    make_proxy: MakeProxy, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(API_KEY + "\n")
    path = tmp_path / "requests.jsonl"
    try:
        proxy = make_proxy("--allow-keys", str(keys), "--request-log", str(path))
    finally:
        keys.unlink()  # read at start-up; the suite's leak check scans the disk for the key
    refused = post(proxy, {"model": V3, "input": TEXTS[:1]}, key="an-unlisted-key")
    assert refused.status_code in (401, 403)
    proxy.stop()
    raw = path.read_bytes()
    assert b"an-unlisted-key" not in raw
    assert TEXTS[0].encode() not in raw
    (line,) = lines(path)
    expected = "k_" + hashlib.sha256(b"an-unlisted-key").hexdigest()[:12]
    assert (line["key"], line["status"], line["cache"]) == (expected, refused.status_code, None)
    assert (line["route"], line["dialect"]) == ("/v1/embeddings", "jina")


def test_the_log_is_rotated_by_size_keeping_the_backups_asked(
    make_proxy: MakeProxy, tmp_path: Path
) -> None:
    path = tmp_path / "requests.jsonl"
    args = ("--request-log-max-size", "1KiB", "--request-log-backups", "2")
    proxy = make_proxy("--request-log", str(path), *args)
    for number in range(40):
        post(proxy, {"model": V3, "input": [f"text {number % 3}"]})
    proxy.stop()
    kept = sorted(file.name for file in tmp_path.iterdir() if file.name.startswith(path.name))
    assert kept == ["requests.jsonl", "requests.jsonl.1", "requests.jsonl.2"]
    for name in kept:
        assert (tmp_path / name).stat().st_size < 1024 + 400  # rotated past 1 KiB, one line
        lines(tmp_path / name)  # whole JSON lines only


def test_a_writer_follows_a_rotation_made_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    one, other = RequestLog(str(path), 1 << 20, 3), RequestLog(str(path), 1 << 20, 3)
    one.write([RequestRecord("/v1/embeddings", "jina", status=200)])
    other.write([RequestRecord("/v1/embeddings", "jina", status=200)])
    one.max_bytes = 1  # its next line rotates the file `other` still has open
    one.write([RequestRecord("/v1/embeddings", "jina", status=200)])
    other._checked = 0.0  # as a second later: it looks at the path again
    other.write([RequestRecord("/embed", "tei", status=200)])
    one.close()
    other.close()
    assert [line["route"] for line in lines(tmp_path / "requests.jsonl.1")] == [
        "/v1/embeddings"
    ] * 3
    assert [line["route"] for line in lines(path)] == ["/embed"]


def test_an_unwritable_request_log_is_refused_at_start(
    make_proxy: MakeProxy, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="--request-log"):
        make_proxy("--request-log", str(tmp_path / "no-such-dir" / "log.jsonl"))


def test_two_workers_write_whole_lines_to_one_log(make_served: MakeServed, tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    proxy = make_served("--workers", "2", "--request-log", str(path))
    for number in range(30):
        with httpx.Client(base_url=proxy.url, timeout=30) as fresh:  # any worker may answer
            body = {"model": V3, "input": [f"worker text {number % 5}"]}
            assert fresh.post("/v1/embeddings", json=body, headers=AUTH).status_code == 200
    proxy.stop()
    logged = lines(path)
    assert len(logged) == 30
    assert {line["cache"] for line in logged} == {"hit", "miss"}
    assert sum(line["misses"] for line in logged) == 5


def test_a_request_fetched_again_logs_the_same_digest_and_analyze_counts_it(
    make_proxy: MakeProxy, emulator: JinaEmulator, tmp_path: Path
) -> None:
    path = tmp_path / "requests.jsonl"
    body = {"model": V3, "input": TEXTS[:2], "task": "retrieval.query"}
    # Two proxies on two cache directories, one log: the second has not kept what the
    # first fetched, so it fetches it again.
    first = make_proxy("--request-log", str(path))
    post(first, body)
    post(first, body)
    first.stop()
    second = ProxyInProcess(emulator.url, tmp_path / "other-cache", "--request-log", str(path))
    try:
        post(second, body)
    finally:
        second.stop()
    miss, hit, again = sorted(lines(path), key=lambda line: line["time"])
    assert (miss["cache"], hit["cache"], again["cache"]) == ("miss", "hit", "miss")
    assert again["digest"] == miss["digest"] is not None
    result = CliRunner().invoke(main, ["analyze", "--json", str(path)])
    assert result.exit_code == 0, result.output
    could = json.loads(result.output)["could_still_save"]
    assert could["fetched_again"] == {"texts": 2, "tokens": again["tokens_spent"]}
