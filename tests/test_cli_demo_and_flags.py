"""The demo shows what the cache saves in time and what to do next, and titles a pass by
what happened; no command shows a global option it ignores; the short flags people type
(-h, -V, -y) and shell completion work."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from embedcache.cli import main
from embedcache.cli.options import GLOBAL_OPTION_NAMES, Command

from .cli_helpers import as_json, invoke, ok

COMMANDS = sorted(main.list_commands(click.Context(main)))
SECONDS = r"\d+(?:\.\d+)?(?:e-\d+)? s"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def ignored(command: str) -> list[str]:
    found = main.commands[command]
    assert isinstance(found, Command)
    return sorted(found.ignores)


# demo


def test_demo_times_each_pass_and_says_what_to_do_next(tmp_path: Path) -> None:
    output = ok(invoke("demo", "--cache-dir", str(tmp_path / "c"))).output
    # Measured, never asserted: each pass says how long it took, and the summary both.
    assert len(re.findall(rf"\(distinct texts\), in {SECONDS}\n", output)) == 2
    assert re.search(rf"\(first pass {SECONDS}, second {SECONDS}\)\.\n", output), output
    assert "export JINAAI_API_KEY=" in output
    assert "from embedcache import JinaEmbeddingFunction" in output


def test_demo_json_adds_each_pass_time(tmp_path: Path) -> None:
    summary = as_json(invoke("demo", "--json", "--cache-dir", str(tmp_path / "c")))
    assert all(isinstance(done["seconds"], float) for done in summary["passes"])
    assert isinstance(summary["seconds"], float)


def test_a_demo_rerun_on_a_kept_cache_dir_is_not_titled_cold(tmp_path: Path) -> None:
    cache = ["demo", "--cache-dir", str(tmp_path / "kept")]
    assert "First pass (cold cache):" in ok(invoke(*cache)).output
    again = ok(invoke(*cache)).output
    assert "cold cache" not in again
    assert "First pass (all cached already, from an earlier run in this --cache-dir):" in again
    assert "0 requests, 0 tokens upstream; 7 hits and 0 misses" in again


# global options a command has no use for


@pytest.mark.parametrize("option", [o for o in GLOBAL_OPTION_NAMES if o != "cache_dir"])
def test_demo_refuses_a_global_option_it_does_not_use_and_hides_it(option: str) -> None:
    value = {"tier": "free", "rpm": "5", "tpm": "5", "redis_ttl": "5", "size_limit": "1GB"}.get(
        option, "x"
    )
    result = invoke("demo", flag(option), value)
    assert result.exit_code == 2
    assert f" demo does not use {flag(option)}: the demo runs against" in result.output
    assert f"  {flag(option)} " not in ok(invoke("demo", "--help")).output
    assert "  --cache-dir " in ok(invoke("demo", "--help")).output


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("stats", ["tier", "rpm", "tpm"]),
        ("ls", ["redis_url", "tier"]),
        ("inspect", ["redis_prefix", "rpm"]),
        ("export", ["redis_ttl", "tpm"]),
        ("prune", ["redis_url", "tier"]),
        ("clear", ["base_url", "redis_url", "tier"]),
        ("verify", ["base_url", "tier"]),
        ("sync", ["base_url", "rpm"]),
    ],
)
def test_a_command_refuses_after_its_name_the_global_options_it_ignores(
    command: str, options: list[str], tmp_path: Path
) -> None:
    assert set(options) <= set(ignored(command))
    helped = ok(invoke(command, "-h")).output
    for option in options:
        value = {"tier": "free", "rpm": "5", "tpm": "5", "redis_ttl": "5"}.get(option, "x")
        required = ["--out", str(tmp_path / "out")] if command == "export" else []
        result = invoke(command, *required, "--cache-dir", str(tmp_path), flag(option), value)
        assert result.exit_code == 2, result.output
        assert f" {command} does not use {flag(option)}: it " in result.output
        assert f"  {flag(option)} " not in helped


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_shows_the_global_options_it_uses(command: str) -> None:
    helped = ok(invoke(command, "--help")).output
    for option in GLOBAL_OPTION_NAMES:
        assert (f"  {flag(option)} " in helped) == (option not in ignored(command)), option


def test_an_ignored_option_before_the_name_is_still_a_global_one(tmp_path: Path) -> None:
    # A shell alias fixing --tier serves every command: before the name nothing is refused.
    (tmp_path / "c").mkdir()
    assert ok(invoke("--tier", "free", "clear", "-y", cache_dir=tmp_path / "c"))


# short flags and completion


@pytest.mark.parametrize("command", COMMANDS)
def test_dash_h_is_help_in_every_command(command: str) -> None:
    assert ok(invoke(command, "-h")).output == ok(invoke(command, "--help")).output


def test_dash_capital_v_prints_the_version() -> None:
    assert ok(invoke("-V")).output == ok(invoke("--version")).output
    assert ok(invoke("-V")).output.startswith("embedcache, version ")


def test_the_groups_help_says_how_to_turn_on_shell_completion() -> None:
    output = ok(invoke("--help")).output
    assert 'eval "$(_EMBEDCACHE_COMPLETE=bash_source embedcache)"' in output
    assert "_EMBEDCACHE_COMPLETE=zsh_source embedcache" in output


def test_the_completion_script_is_produced_and_completes_commands() -> None:
    runner = CliRunner()
    script = runner.invoke(main, [], env={"_EMBEDCACHE_COMPLETE": "bash_source"},
                           prog_name="embedcache")  # fmt: skip
    assert script.exit_code == 0
    assert "_embedcache_completion()" in script.output
    assert "complete -o nosort -F _embedcache_completion embedcache" in script.output
    env = {"_EMBEDCACHE_COMPLETE": "bash_complete", "COMP_WORDS": "embedcache pr",
           "COMP_CWORD": "1"}  # fmt: skip
    completed = runner.invoke(main, [], env=env, prog_name="embedcache")
    assert completed.output.split() == ["plain,prewarm", "plain,prune"]
