"""``--json`` on every command that prints data: one JSON document on stdout, of a stable
shape (the keys below are the contract), and errors still one line on stderr."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
import httpx
import numpy as np
import pytest
from click.testing import CliRunner, Result

from embedcache import JinaEmbeddingFunction
from embedcache.cli import main, output
from embedcache.cli.options import Command
from embedcache.testing import JinaEmulator

from .cli_helpers import as_json, ok
from .conftest import API_KEY, wait_for
from .redis_server import RedisServer

TEXTS = ["cached before the run", "a second cached text", "and a third"]
NEW_TEXT = "not cached yet"
V3 = "jina-embeddings-v3"
COMMANDS = sorted(main.list_commands(click.Context(main)))
#: Commands whose --json is checked by their own tests (another module's owner; doctor's
#: failing checks are its report, printed on stdout with exit code 1).
CHECKED_ELSEWHERE = {"demo", "doctor", "analyze"}  # analyze: tests/test_cli_analyze.py


def fill(cache_dir: Path, emulator: JinaEmulator) -> None:
    with JinaEmbeddingFunction(api_key=API_KEY, base_url=emulator.url, cache_dir=cache_dir) as ef:
        ef.embed(TEXTS)


def keys(*names: str) -> Callable[[Any], None]:
    """A check that the document is an object with at least these keys."""

    def check(document: Any) -> None:
        assert isinstance(document, dict), document
        assert set(names) <= set(document), sorted(document)

    return check


def rows(*names: str) -> Callable[[Any], None]:
    """A check that the document is an array of objects with at least these keys."""

    def check(document: Any) -> None:
        assert isinstance(document, list), document
        assert document, "an empty array checks nothing"
        for row in document:
            keys(*names)(row)

    return check


PREWARM = ("texts", "unique", "cached", "to_fetch", "estimated_tokens", "estimated_cost_usd",
           "dry_run", "fetched", "requests", "tokens_spent", "cost_usd", "seconds",
           "price_per_million_tokens")  # fmt: skip
STATS = ("directory", "entries", "bytes_on_disk", "size_limit", "groups",
         "lifetime", "estimated_usd_saved", "price_per_million_tokens", "shared")  # fmt: skip

#: Each command's arguments after its name (``{out}``: a path in scratch space) and the
#: shape of what ``--json`` prints; ``serve`` runs as a subprocess, in its own test.
CASES: dict[str, tuple[tuple[str, ...], Callable[[Any], None]]] = {
    "prewarm": (("-",), keys(*PREWARM)),
    "stats": ((), keys(*STATS)),
    "ls": ((), rows("key", "created", "model", "task", "dimensions", "tokens")),
    "inspect": ((TEXTS[0],), keys("key", "cached", "request", "dimensions", "tokens")),
    "get": ((TEXTS[0], NEW_TEXT), rows("text", "embedding")),
    "rerank": ((TEXTS[0], TEXTS[1], NEW_TEXT), rows("index", "score", "document")),
    "export": (("--out", "{out}"), keys("files")),
    "prune": (("--model", V3, "--dry-run"), keys("dry_run", "selected", "removed", "bytes")),
    "clear": (("--yes",), keys("directory", "removed")),
    "verify": ((), keys("checked", "bad", "removed", "shared")),
    "limit": ((), keys("directory", "size_limit", "entries", "vector_bytes")),
    "sync": ((), keys("direction", "copied", "present", "skipped", "location", "prefix")),
}


def uses_not(command: str) -> Mapping[str, str]:
    """The global options ``command`` refuses after its name (it has no use for them)."""
    found = main.commands[command]
    assert isinstance(found, Command)
    return found.ignores


def run(*argv: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(argv), env={"JINA_API_KEY": API_KEY}, input=stdin)


def test_every_command_that_prints_data_takes_json() -> None:
    for name in set(COMMANDS) - CHECKED_ELSEWHERE:
        command = main.commands[name]
        assert "--json" in {flag for param in command.params for flag in param.opts}, name
    assert sorted([*CASES, "serve", *CHECKED_ELSEWHERE]) == COMMANDS  # each one tested


@pytest.mark.parametrize("command", sorted(CASES))
def test_json_prints_one_document_of_the_documented_shape(
    command: str, emulator: JinaEmulator, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cache_dir = tmp_path / "cache"
    fill(cache_dir, emulator)
    options = ["--cache-dir", str(cache_dir)]
    if "base_url" not in uses_not(command):
        options += ["--base-url", emulator.url]
    if command == "sync":
        server: RedisServer = request.getfixturevalue("redis_server")
        options += ["--redis-url", server.url]
    rest, check = CASES[command]
    args = [arg.format(out=tmp_path / "out") for arg in rest]
    result = run(command, *args, *options, "--json", stdin="\n".join([*TEXTS, NEW_TEXT]))
    check(as_json(result))  # the whole of stdout is one JSON document
    assert result.stderr == ""


def test_get_json_is_the_json_lines_as_one_array(emulator: JinaEmulator, tmp_path: Path) -> None:
    options = ["--cache-dir", str(tmp_path / "cache"), "--base-url", emulator.url]
    lines = ok(run("get", "alpha", "beta", *options)).stdout.splitlines()
    assert as_json(run("get", "alpha", "beta", "--json", *options)) == [
        json.loads(line) for line in lines
    ]
    expected = emulator.expected_embedding("beta", task="retrieval.passage")
    beta = as_json(run("get", "beta", "--json", *options))[0]["embedding"]
    assert np.array_equal(np.array(beta, dtype=np.float32), expected)


def test_get_json_with_npy_names_the_file_and_its_shape(
    emulator: JinaEmulator, tmp_path: Path
) -> None:
    options = ["--cache-dir", str(tmp_path / "cache"), "--base-url", emulator.url]
    target = tmp_path / "v.npy"
    report = as_json(run("get", "alpha", "beta", "--dimensions", "8", "--npy", str(target),
                         "--json", *options))  # fmt: skip
    assert report == {"files": [str(target)], "rows": 2, "dimensions": 8}
    assert np.load(target).shape == (2, 8)


def test_clear_json_asks_on_stderr_so_stdout_stays_json(
    emulator: JinaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_dir = tmp_path / "cache"
    fill(cache_dir, emulator)
    monkeypatch.setattr(output, "stdin_is_terminal", lambda: True)  # someone to ask
    result = run("clear", "--json", "--cache-dir", str(cache_dir), stdin="y\n")
    assert as_json(result) == {"directory": str(cache_dir), "removed": len(TEXTS)}
    assert "Remove all 3 entries" in result.stderr
    refused = run("clear", "--json", "--cache-dir", str(cache_dir), stdin="n\n")
    assert (refused.exit_code, refused.stdout) == (1, "")


@pytest.mark.parametrize("command", [*sorted(CASES), "serve"])
def test_a_failing_json_command_prints_one_error_line_on_stderr_only(
    command: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "embedcache.json").write_text('{"format_version": 99, "key_version": 1}')
    rest, _ = CASES.get(command, (("--port", "0"), keys()))
    args = [arg.format(out=tmp_path / "out") for arg in rest]
    result = run(command, *args, "--json", "--cache-dir", str(bad), stdin=TEXTS[0])
    assert (result.exit_code, result.stdout) == (1, "")
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: CacheFormatError: cache at")


def test_serve_json_prints_one_line_once_bound_with_the_port_it_picked(
    emulator: JinaEmulator, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    command = [sys.executable, "-m", "embedcache", "serve", "--port", "0", "--workers", "2",
               "--cache-dir", str(cache_dir), "--upstream", emulator.url, "--json"]  # fmt: skip
    with (tmp_path / "serve.log").open("wb") as log:
        served = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert served.stdout is not None
        line = served.stdout.readline()  # printed and flushed before the workers fork
        info = json.loads(line)
        assert info == {
            "url": f"http://127.0.0.1:{info['port']}/v1/embeddings",
            "host": "127.0.0.1",
            "port": info["port"],
            "upstream": emulator.url,
            "cached_as": emulator.url,
            "cache_dir": str(cache_dir),
            "shared": None,
            "offline": False,
            "workers": 2,
        }
        assert info["port"] > 0
        # The workers listen a moment after the parent binds and prints.
        wait_for(lambda: _up(info["url"].replace("/v1/embeddings", "/health")), limit=60)
    finally:
        served.send_signal(signal.SIGTERM)
        rest, _ = served.communicate(timeout=30)
    assert rest == ""  # the one line, not one per worker


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False
