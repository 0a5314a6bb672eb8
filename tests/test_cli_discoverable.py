"""What a new user sees first: the group's help names every command, and a reader that
goes away early (``embedcache ls | head -1``) ends the command quietly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from embedcache.cache_keys import fingerprint, text_keys
from embedcache.cli import main
from embedcache.models import RequestOptions
from embedcache.storage.store import Store

COMMANDS = ("prewarm", "serve", "stats", "ls", "inspect", "get", "rerank", "export", "prune",
            "clear", "verify", "sync", "demo")  # fmt: skip


def test_the_groups_help_and_a_bare_call_list_every_command() -> None:
    for args in (["--help"], []):
        result = CliRunner().invoke(main, args)
        assert "Commands:" in result.output, result.output
        listed = result.output.split("Commands:", 1)[1]
        for name in COMMANDS:
            assert f"\n  {name} " in listed, (name, listed)


def test_ls_into_a_reader_that_stops_early_ends_quietly(cache_dir: Path) -> None:
    fp = fingerprint(RequestOptions("jina-embeddings-v3", task="retrieval.passage"))
    keys = text_keys(fp, [f"text {i}" for i in range(5000)])
    with Store(cache_dir) as store:
        store.put_many(fp, [(key, np.ones(8, np.float32), 1.0) for key in keys])
    # 5,000 lines are several times a pipe's buffer: the writer meets the closed end.
    command = [sys.executable, "-m", "embedcache", "--cache-dir", str(cache_dir), "ls"]
    with subprocess.Popen(
        [*command, "--limit", "5000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        assert process.stdout.readline()  # what `head -1` reads
        process.stdout.close()
        errors = process.stderr.read()
        process.wait(timeout=60)
    assert errors == b""


@pytest.mark.parametrize(
    "args",
    [["stats"], ["ls"], ["inspect", "x"], ["verify"], ["export", "--out", "exported"]],
    ids=["stats", "ls", "inspect", "verify", "export"],
)
def test_a_reading_command_at_a_missing_cache_fails_and_creates_nothing(
    tmp_path: Path, args: list[str]
) -> None:
    typo = tmp_path / "cahce"
    result = CliRunner().invoke(main, ["--cache-dir", str(typo), *args])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: CacheError: no embedcache cache at {typo}"
    ]
    assert not typo.exists()
