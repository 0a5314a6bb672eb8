"""``embedcache doctor``: what a user runs when something is off. It reports the setup
without sending anything upstream or creating a cache, never shows a secret, and exits 1
naming each check that failed."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from embedcache import JinaEmbeddingFunction
from embedcache.cli import main
from embedcache.storage.store import FORMAT_VERSION
from embedcache.testing import JinaEmulator

from .cli_helpers import as_json, ok
from .conftest import API_KEY
from .redis_server import RedisServer

TOP_LEVEL = {"version", "python", "platform", "cache", "upstream", "api_key", "offline",
             "redis", "rate_limits", "extras", "environment", "ok", "problems"}  # fmt: skip
CACHE = {"directory", "source", "exists", "format_version", "key_version", "entries",
         "bytes_on_disk", "vector_bytes", "size_limit", "writable"}  # fmt: skip


def doctor(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["doctor", *args], env=env or {})


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_doctor_at_a_missing_cache_says_so_passes_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "cache"
    text = ok(doctor("--cache-dir", str(missing))).stdout
    report = as_json(doctor("--cache-dir", str(missing), "--json"))

    assert f"cache dir    {missing} (--cache-dir)" in text
    assert "none yet" in text
    assert report["cache"]["exists"] is False
    assert report["cache"]["entries"] is None
    assert report["ok"] is True
    assert not (tmp_path / "typo").exists()


def test_doctor_counts_the_entries_of_an_existing_cache_from_the_environment_variable(
    make_ef: Callable[..., JinaEmbeddingFunction], cache_dir: Path
) -> None:
    make_ef().encode_documents(["one", "two", "three"])
    env = {"EMBEDCACHE_DIR": str(cache_dir)}
    report = as_json(doctor("--json", env=env))
    text = ok(doctor(env=env)).stdout

    cache = report["cache"]
    assert cache["directory"] == str(cache_dir)
    assert cache["source"] == "$EMBEDCACHE_DIR"
    assert cache["entries"] == 3
    assert cache["vector_bytes"] == 3 * 1024 * 4
    assert cache["format_version"] == FORMAT_VERSION
    assert cache["size_limit"] is None
    assert cache["writable"] is True
    assert cache["bytes_on_disk"] > cache["vector_bytes"]
    assert "3 entries" in text


def test_doctor_names_the_key_variable_and_masks_the_key_in_text_and_json(
    tmp_path: Path,
) -> None:
    env = {"JINAAI_API_KEY": API_KEY}
    cache = str(tmp_path / "cache")
    text = ok(doctor("--cache-dir", cache, env=env)).stdout
    raw = ok(doctor("--cache-dir", cache, "--json", env=env)).stdout
    report = as_json(doctor("--cache-dir", cache, "--json", env=env))

    masked = "jina_…" + API_KEY[-4:]
    assert f"api key      JINAAI_API_KEY = {masked}" in text
    assert report["api_key"] == {"variable": "JINAAI_API_KEY", "masked": masked}
    secret = API_KEY[len("jina_") :]
    for output in (text, raw):
        # No five characters of the key's secret part, anywhere: at most its last four.
        windows = {secret[i : i + 5] for i in range(len(secret) - 4)}
        assert not [window for window in windows if window in output]


def test_doctor_without_a_key_warns_but_passes(tmp_path: Path) -> None:
    result = ok(doctor("--cache-dir", str(tmp_path / "cache")))
    assert "WARN  api key: none set" in result.stdout


def test_doctor_with_a_redis_that_does_not_answer_fails_that_check_and_exits_1(
    tmp_path: Path,
) -> None:
    url = f"redis://reader:hunter2secret@127.0.0.1:{closed_port()}/0"
    text = doctor("--cache-dir", str(tmp_path / "cache"), "--redis-url", url)
    as_data = doctor("--cache-dir", str(tmp_path / "cache"), "--redis-url", url, "--json")

    assert (text.exit_code, as_data.exit_code) == (1, 1), text.output
    failures = [line for line in text.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failures) == 1
    assert failures[0].startswith("FAIL  redis: no PING answer")
    assert "start it, or fix --redis-url" in failures[0]
    report = as_json_any(as_data)
    assert report["ok"] is False
    assert report["redis"]["ping"] is False
    assert report["redis"]["url"].startswith("redis://***@127.0.0.1:")
    assert [p["check"] for p in report["problems"] if p["level"] == "fail"] == ["redis"]
    for output in (text.output, as_data.output):
        assert "hunter2secret" not in output
        assert "Traceback" not in output


def test_doctor_with_a_live_redis_reports_its_ping(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"EMBEDCACHE_REDIS_URL": redis_server.url}
    report = as_json(doctor("--cache-dir", str(tmp_path / "cache"), "--json", env=env))
    assert report["redis"] == {"url": redis_server.url, "source": "$EMBEDCACHE_REDIS_URL",
                               "prefix": "embedcache", "ping": True}  # fmt: skip


def test_a_bad_tier_variable_is_a_failing_check_where_other_commands_stop(tmp_path: Path) -> None:
    env = {"EMBEDCACHE_TIER": "platinum", "EMBEDCACHE_RPM": "90"}
    result = doctor("--cache-dir", str(tmp_path / "cache"), env=env)
    assert result.exit_code == 1, result.output
    assert "FAIL  rate limits: unknown tier 'platinum'" in result.stdout
    assert "fix $EMBEDCACHE_TIER or $EMBEDCACHE_RPM" in result.stdout
    # The rest of the report is still there.
    assert "cache dir" in result.stdout
    assert "extras" in result.stdout


def test_doctor_shows_the_tier_limits_and_where_they_came_from(tmp_path: Path) -> None:
    report = as_json(doctor("--cache-dir", str(tmp_path / "c"), "--tier", "free", "--json"))
    assert report["rate_limits"] == {"tier": "free", "rpm": 500, "tpm": 1_000_000,
                                     "concurrent_requests": 5, "sources": ["--tier"]}  # fmt: skip


def test_doctor_sends_nothing_upstream_and_redacts_the_base_url(
    emulator: JinaEmulator, tmp_path: Path
) -> None:
    base = emulator.url.replace("http://", "http://user:pa55word@")
    report = as_json(
        doctor("--cache-dir", str(tmp_path / "c"), "--base-url", base, "--json",
               env={"JINA_API_KEY": API_KEY})
    )  # fmt: skip
    assert report["upstream"] == {"url": emulator.url.replace("http://", "http://***@"),
                                  "source": "--base-url",
                                  "cached_as": emulator.url}  # fmt: skip
    assert "pa55word" not in json.dumps(report)
    assert emulator.requests == []


def test_doctor_json_has_a_stable_shape(tmp_path: Path) -> None:
    report = as_json(doctor("--cache-dir", str(tmp_path / "c"), "--json"))
    assert set(report) == TOP_LEVEL
    assert set(report["cache"]) >= CACHE
    assert {"serve", "redis", "milvus", "langchain", "llama-index"} <= set(report["extras"])
    # The test extra installs every extra: each shows as installed, with versions.
    serve = report["extras"]["serve"]
    assert serve["installed"] is True
    assert serve["packages"]["starlette"]
    for problem in report["problems"]:
        assert set(problem) == {"check", "level", "message", "hint"}


def test_the_groups_help_lists_doctor_and_limit() -> None:
    listed = ok(CliRunner().invoke(main, ["--help"])).stdout
    assert "doctor" in listed
    assert "limit" in listed


def as_json_any(result: Result) -> Any:
    """The JSON a command printed, whatever its exit code (a failing doctor prints one)."""
    return json.loads(result.stdout)


@pytest.mark.parametrize("key", ["short", "jina_" + "k" * 11])
def test_a_short_key_shows_none_of_its_characters(key: str, tmp_path: Path) -> None:
    report = as_json(doctor("--cache-dir", str(tmp_path / "c"), "--json",
                            env={"JINA_API_KEY": key}))  # fmt: skip
    assert report["api_key"]["masked"] in ("…", "jina_…")
