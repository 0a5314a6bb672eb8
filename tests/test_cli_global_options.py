"""The global options (``--cache-dir``, ``--base-url``, the Redis and rate-limit options)
work before and after the command name, in every command, and mean the same in both places.

Every command runs through click's CliRunner on a real cache directory and the emulator
(``serve`` as a subprocess); each check proves the option reached what it configures: the
cache read is the one named, the requests go to the emulator, the Redis is the one given.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from embedcache import JinaEmbeddingFunction, Store
from embedcache.cli import main
from embedcache.cli.options import GLOBAL_OPTION_NAMES, Command
from embedcache.testing import JinaEmulator

from .cli_helpers import POSITIONS, Position, as_json, ok, placed
from .conftest import API_KEY
from .redis_server import RedisServer
from .serving import ProxyInProcess

TEXTS = ["cached before the run", "a second cached text", "and a third"]
NEW_TEXT = "not cached yet"
V3 = "jina-embeddings-v3"
GLOBAL_FLAGS = [f"--{name.replace('_', '-')}" for name in GLOBAL_OPTION_NAMES]
COMMANDS = sorted(main.list_commands(click.Context(main)))


def ignored(command: str) -> Mapping[str, str]:
    """The global options ``command`` has no use for (hidden from its help, refused after
    its name)."""
    found = main.commands[command]
    assert isinstance(found, Command)
    return found.ignores


def run(position: Position, options: list[str], *args: str, stdin: str | None = None) -> Result:
    """``embedcache OPTIONS ARGS`` or ``embedcache COMMAND OPTIONS REST``, with the key set."""
    argv = placed(position, options, *args)
    return CliRunner().invoke(main, argv, env={"JINA_API_KEY": API_KEY}, input=stdin)


def fill(cache_dir: Path, emulator: JinaEmulator) -> None:
    """Put :data:`TEXTS` in ``cache_dir`` through the library (closed before the CLI runs)."""
    with JinaEmbeddingFunction(api_key=API_KEY, base_url=emulator.url, cache_dir=cache_dir) as ef:
        ef.embed(TEXTS)


@dataclass
class World:
    """What a command's check looks at: the cache it was pointed to (holding :data:`TEXTS`),
    the emulator, how many requests it had served before the command, and scratch space."""

    cache_dir: Path
    emulator: JinaEmulator
    requests_before: int
    tmp_path: Path

    @property
    def sent(self) -> int:
        return len(self.emulator.requests) - self.requests_before


def _prewarm(world: World, result: Result) -> None:
    report = as_json(result)
    assert (report["cached"], report["fetched"]) == (len(TEXTS), 1)  # read X, fetched the rest
    assert world.sent == 1


def _stats(world: World, result: Result) -> None:
    report = as_json(result)
    assert (report["directory"], report["entries"]) == (str(world.cache_dir), len(TEXTS))


def _ls(world: World, result: Result) -> None:
    assert len(as_json(result)) == len(TEXTS)


def _inspect(world: World, result: Result) -> None:
    assert as_json(result)["cached"] is True


def _get(world: World, result: Result) -> None:
    assert json.loads(ok(result).stdout)["text"] == NEW_TEXT
    assert world.sent == 1  # the miss went to the emulator named by --base-url


def _rerank(world: World, result: Result) -> None:
    assert [row["document"] for row in as_json(result)] == [NEW_TEXT]
    assert world.sent == 1  # the miss went to the emulator named by --base-url


def _export(world: World, result: Result) -> None:
    files = [Path(name) for name in as_json(result)["files"]]
    jsonl = next(path for path in files if path.suffix == ".jsonl")
    assert len(jsonl.read_text(encoding="utf-8").splitlines()) == len(TEXTS)


def _prune(world: World, result: Result) -> None:
    assert as_json(result)["selected"] == len(TEXTS)


def _clear(world: World, result: Result) -> None:
    assert ok(result).output.strip() == f"removed {len(TEXTS)} entries"


def _verify(world: World, result: Result) -> None:
    assert as_json(result)["checked"] == len(TEXTS)


def _sync(world: World, result: Result) -> None:
    assert as_json(result)["copied"] == len(TEXTS)


def _demo(world: World, result: Result) -> None:
    assert f"cache at {world.cache_dir}\n" in ok(result).output
    assert (world.cache_dir / "embedcache.json").exists()  # kept, not a temporary directory


def _doctor(world: World, result: Result) -> None:
    report = as_json(result)
    assert (report["cache"]["directory"], report["cache"]["entries"]) == (
        str(world.cache_dir), len(TEXTS))  # fmt: skip
    assert report["upstream"]["url"] == world.emulator.url
    assert world.sent == 0  # named, never contacted


def _limit(world: World, result: Result) -> None:
    report = as_json(result)
    assert (report["directory"], report["entries"]) == (str(world.cache_dir), len(TEXTS))


#: Each command's arguments after its name (``{out}``: a path in scratch space) and the
#: check of what it did; ``serve`` runs as a subprocess, in its own test below.
CASES: dict[str, tuple[tuple[str, ...], Callable[[World, Result], None]]] = {
    "prewarm": (("-", "--json"), _prewarm),
    "stats": (("--json",), _stats),
    "ls": (("--json",), _ls),
    "inspect": ((TEXTS[0], "--json"), _inspect),
    "get": ((NEW_TEXT,), _get),
    "rerank": ((TEXTS[0], NEW_TEXT, "--json"), _rerank),
    "export": (("--out", "{out}", "--json"), _export),
    "prune": (("--model", V3, "--dry-run", "--json"), _prune),
    "clear": (("--yes",), _clear),
    "verify": (("--json",), _verify),
    "sync": (("--json",), _sync),
    "demo": ((), _demo),
    "doctor": (("--json",), _doctor),
    "limit": (("--json",), _limit),
}


#: Commands that take no global option at all (each refuses them after its name, as its
#: own tests show): ``analyze`` reads log files, not a cache.
NO_GLOBAL_OPTIONS = ("analyze",)


def test_every_command_has_a_case_here() -> None:
    assert sorted([*CASES, "serve", *NO_GLOBAL_OPTIONS]) == COMMANDS
    for command in NO_GLOBAL_OPTIONS:
        assert set(ignored(command)) == set(GLOBAL_OPTION_NAMES)


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("command", sorted(CASES))
def test_global_options_work_before_and_after_every_command_name(
    command: str,
    position: Position,
    emulator: JinaEmulator,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    chosen = tmp_path / "chosen"
    options = ["--cache-dir", str(chosen)]
    if "base_url" not in ignored(command):  # the demo brings its own emulator; clear...
        options += ["--base-url", emulator.url]
    if command != "demo":
        fill(chosen, emulator)
    if command == "sync":
        server: RedisServer = request.getfixturevalue("redis_server")
        options += ["--redis-url", server.url]
    world = World(chosen, emulator, len(emulator.requests), tmp_path)
    rest, check = CASES[command]
    args = [arg.format(out=tmp_path / "out") for arg in rest]
    check(world, run(position, options, command, *args, stdin="\n".join([*TEXTS, NEW_TEXT])))


@pytest.mark.parametrize("position", POSITIONS)
def test_serve_takes_the_cache_dir_and_base_url_in_either_place(
    position: Position, emulator: JinaEmulator, tmp_path: Path
) -> None:
    chosen = tmp_path / "chosen"
    options = ["--cache-dir", str(chosen), "--base-url", emulator.url]
    argv = placed(position, options, "serve", "--port", "0", "--workers", "1")
    with ProxyInProcess(emulator.url, chosen, argv=argv) as served:
        banner = served.output()
        assert f"-> {emulator.url}" in banner
        assert f"(cache {chosen})" in banner
        answer = served.embed({"model": V3, "input": [NEW_TEXT]}, key=API_KEY)
        assert answer.status_code == 200
    assert len(emulator.requests) == 1  # the miss went to --base-url
    assert (chosen / "embedcache.json").exists()


def test_serve_upstream_wins_over_base_url_after_the_name(
    emulator: JinaEmulator, tmp_path: Path
) -> None:
    chosen = tmp_path / "chosen"
    argv = ["serve", "--cache-dir", str(chosen), "--base-url", "http://127.0.0.1:1"]
    argv += ["--upstream", emulator.url, "--port", "0", "--workers", "1"]
    with ProxyInProcess(emulator.url, chosen, argv=argv) as served:
        assert f"-> {emulator.url}" in served.output()


@pytest.mark.parametrize("position", POSITIONS)
def test_redis_options_after_stats_reach_the_redis_given(
    position: Position, redis_server: RedisServer, emulator: JinaEmulator, tmp_path: Path
) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]
    shared = ["--redis-url", redis_server.url, "--redis-prefix", "team"]
    fill(tmp_path / "cache", emulator)
    # Shared in one position, counted in the other: the same Redis and namespace.
    other: Position = "after" if position == "before" else "before"
    assert as_json(run(other, [*cache, *shared], "sync", "--json"))["copied"] == len(TEXTS)
    report = as_json(run(position, [*cache, *shared], "stats", "--json"))["shared"]
    assert report["location"] == redis_server.url
    assert (report["prefix"], report["entries"]) == ("team", len(TEXTS))


def test_a_value_given_before_the_name_is_not_undone_by_a_default_after_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # --redis-prefix has a default; `stats` not being given one must not reset it.
    Store(tmp_path / "c").close()  # stats reads only an existing cache
    argv = ["--redis-prefix", "team", "stats", "--cache-dir", str(tmp_path / "c")]
    result = CliRunner().invoke(main, [*argv, "--redis-url", redis_server.url, "--json"])
    assert as_json(result)["shared"]["prefix"] == "team"


def test_the_value_after_the_command_name_wins(tmp_path: Path) -> None:
    before, after = tmp_path / "before", tmp_path / "after"
    Store(after).close()  # stats reads only an existing cache
    argv = ["--cache-dir", str(before), "stats", "--cache-dir", str(after), "--json"]
    assert as_json(CliRunner().invoke(main, argv))["directory"] == str(after)
    assert not before.exists()


def _estimated_seconds(*argv: str) -> float:
    """``prewarm --dry-run`` of three texts in three requests, and the time it estimates."""
    result = run("before", [], *argv, "--dry-run", "--batch-size", "1", "--json", stdin="a\nb\nc")
    seconds: float = as_json(result)["estimated_seconds"]
    return seconds


def test_limits_given_in_both_places_merge_option_by_option(tmp_path: Path) -> None:
    cache = ["--cache-dir", str(tmp_path / "c")]
    # One request a minute: three requests leave over three windows, 120 s from the first.
    assert _estimated_seconds(*cache, "--rpm", "1", "prewarm", "-") == 120
    assert _estimated_seconds(*cache, "prewarm", "-", "--rpm", "1") == 120
    assert _estimated_seconds(*cache, "--rpm", "1", "prewarm", "-", "--rpm", "1000") == 0
    # --tpm after the name keeps the --rpm before it (they are resolved together).
    assert _estimated_seconds(*cache, "--rpm", "1", "prewarm", "-", "--tpm", "1000000") == 120
    # A tier before the name, its rpm overridden after it.
    assert _estimated_seconds(*cache, "--tier", "free", "prewarm", "-", "--rpm", "1") == 120


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--redis-prefix", ""], "Invalid value for '--redis-prefix': must not be empty"),
        (["--tier", "bogus"], "Invalid value for '--tier'"),
        (["--rpm", "0"], "Invalid value for '--rpm'"),
        (["--redis-ttl", "x"], "Invalid value for '--redis-ttl'"),
        (["--size-limit", "6"], "Invalid value for '--size-limit': '6' has no unit: say 6GB"),
    ],
)
def test_a_bad_global_value_is_a_usage_error_in_either_place(
    position: Position, options: list[str], message: str, tmp_path: Path
) -> None:
    result = run(position, ["--cache-dir", str(tmp_path / "c"), *options], "stats")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("position", POSITIONS)
def test_a_bad_tier_in_the_environment_is_a_usage_error(
    position: Position, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EMBEDCACHE_TIER", "bogus")
    result = run(position, ["--cache-dir", str(tmp_path / "c")], "stats")
    assert result.exit_code == 2, result.output
    assert "unknown tier 'bogus'" in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_lists_the_global_options_under_their_heading(command: str) -> None:
    output = ok(CliRunner().invoke(main, [command, "--help"])).output
    own, heading, shared = output.partition("Global options (before or after the command name):")
    # A command that uses none of them has no such heading, rather than an empty one.
    assert bool(heading) == (command not in NO_GLOBAL_OPTIONS), output
    for name, flag in zip(GLOBAL_OPTION_NAMES, GLOBAL_FLAGS, strict=True):
        assert (f"  {flag} " in shared) == (name not in ignored(command))  # only those it uses
        assert f"  {flag} " not in own


def test_the_group_help_lists_the_global_options_and_says_where_they_go() -> None:
    output = ok(CliRunner().invoke(main, ["--help"])).output
    assert "before or after the command name" in output
    shared = output.partition("Global options (before or after the command name):")[2]
    assert all(f"  {flag} " in shared for flag in GLOBAL_FLAGS)


def test_demo_help_gives_its_own_cache_dir_default() -> None:
    output = ok(CliRunner().invoke(main, ["demo", "--help"])).output
    assert "default: a temporary one, removed afterwards" in " ".join(output.split())


@pytest.mark.parametrize("command", COMMANDS)
def test_no_command_has_an_option_twice(command: str) -> None:
    params = main.commands[command].params
    flags = [flag for param in params for flag in (*param.opts, *param.secondary_opts)]
    assert len(flags) == len(set(flags))
    assert len({param.name for param in params}) == len(params)
    assert set(GLOBAL_OPTION_NAMES) <= {param.name for param in params}


def test_a_command_cannot_redefine_a_global_option() -> None:
    with pytest.raises(TypeError, match="clashing: --cache-dir is also a global option"):

        @click.command(cls=Command)
        @click.option("--cache-dir")
        def clashing(cache_dir: str | None) -> None:
            """Not a command anyone can add."""


def test_a_help_text_for_an_unknown_global_option_is_refused() -> None:
    with pytest.raises(TypeError, match="global_help names no global option"):

        @click.command(cls=Command, global_help={"cache_directory": "typo"})
        def mistyped() -> None:
            """Not a command anyone can add."""


def test_the_group_refuses_a_command_that_ignores_the_global_options() -> None:
    with pytest.raises(TypeError, match=r"plain is not an embedcache\.cli\.options\.Command"):
        main.add_command(click.Command("plain"))
    assert "plain" not in main.commands
