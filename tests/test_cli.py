from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from embedcache.cli.demo import DEMO_API_KEY
from embedcache.config import default_cache_dir

from .cli_helpers import as_json, invoke, ok, one_line_error


def test_demo_fetches_once_then_serves_from_disk(tmp_path: Path) -> None:
    cache = tmp_path / "demo-cache"
    result = ok(invoke("demo", "--cache-dir", str(cache)))
    assert "sent upstream: POST /v1/embeddings with 7 texts" in result.output
    assert "Second pass served from disk: bit-identical vectors, 0 requests, 0 tokens (" in (
        result.output
    )
    assert DEMO_API_KEY not in result.output
    assert all(DEMO_API_KEY.encode() not in p.read_bytes() for p in cache.rglob("*") if p.is_file())


def test_demo_json_sums_up_both_passes_and_prints_nothing_else(tmp_path: Path) -> None:
    cache = tmp_path / "demo-cache"
    summary = as_json(invoke("demo", "--json", "--cache-dir", str(cache)))
    assert summary["cache_dir"] == str(cache)
    assert (summary["documents"], summary["distinct_documents"]) == (8, 7)
    first, second = summary["passes"]
    assert first["requests"] == 1
    assert first["tokens"] > 0
    assert (first["hits"], first["misses"]) == (0, 7)
    assert second.pop("seconds") >= 0  # measured: the time taken is not asserted
    assert second == {"requests": 0, "tokens": 0, "hits": 7, "misses": 0}
    assert (summary["requests"], summary["hits"], summary["tokens"]) == (1, 7, first["tokens"])
    assert summary["identical"] is True
    assert "milvus" not in summary


def test_demo_without_cache_dir_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # every temporary file goes here
    monkeypatch.setenv("EMBEDCACHE_DIR", str(tmp_path / "configured"))
    output = ok(invoke("demo")).output
    used = re.search(r"; cache at (.+)", output)
    assert used is not None, output
    # It did cache on disk, in a temporary directory, and removed all of it afterwards;
    # neither the configured nor the default cache directory was touched.
    assert Path(used.group(1)).is_relative_to(scratch)
    assert "served from disk" in output
    assert list(scratch.iterdir()) == []
    assert not (tmp_path / "configured").exists()
    assert not default_cache_dir().exists()


def test_library_errors_become_one_line_and_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "embedcache.json").write_text('{"format_version": 99, "key_version": 1}')
    error = one_line_error(invoke("demo", "--cache-dir", str(bad)))
    assert error.startswith("Error: CacheFormatError: cache at")


def test_unknown_command_is_a_usage_error() -> None:
    assert invoke("nope").exit_code == 2


def test_help_and_version() -> None:
    assert "offline tour" in ok(invoke("--help")).output
    assert ok(invoke("--version")).output.startswith("embedcache, version")
