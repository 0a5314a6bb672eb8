from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from embedcache.cli import main
from embedcache.cli.demo import DEMO_API_KEY


def test_demo_fetches_once_then_serves_from_disk(tmp_path: Path) -> None:
    cache = tmp_path / "demo-cache"
    result = CliRunner().invoke(main, ["demo", "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    assert "sent upstream: POST /v1/embeddings with 7 texts" in result.output
    assert "Second pass served from disk: bit-identical vectors, 0 requests, 0 tokens." in (
        result.output
    )
    assert DEMO_API_KEY not in result.output
    assert all(DEMO_API_KEY.encode() not in p.read_bytes() for p in cache.rglob("*") if p.is_file())


def test_demo_without_cache_dir_leaves_nothing_behind() -> None:
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output


def test_library_errors_become_one_line_and_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "embedcache.json").write_text('{"format_version": 99, "key_version": 1}')
    result = CliRunner().invoke(main, ["demo", "--cache-dir", str(bad)])
    assert result.exit_code == 1
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1
    assert error_lines[0].startswith("Error: CacheFormatError: cache at")
    assert "Traceback" not in result.output


def test_unknown_command_is_a_usage_error() -> None:
    assert CliRunner().invoke(main, ["nope"]).exit_code == 2


def test_help_and_version() -> None:
    runner = CliRunner()
    assert "offline tour" in runner.invoke(main, ["--help"]).output
    assert runner.invoke(main, ["--version"]).output.startswith("embedcache, version")
