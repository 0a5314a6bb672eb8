"""What a person meets in the cache commands: ``get -`` reads standard input, sizes need a
unit, ``prune`` asks before removing most of a cache (``clear`` too), ``ls`` is a table
newest first with a count under it, ``stats`` counts in words and rounds its dollars."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result

from embedcache.storage.store import Store
from embedcache.testing import JinaEmulator

from .cli_helpers import Invoke, as_json, invoke, ok, one_line_error
from .conftest import API_KEY

TEXTS = ["oldest text", "middle text", "newest text"]
# Scripts read these; keys are only ever added (input and output came with images).
LS_KEYS = {"key", "model", "task", "dimensions", "late_chunking", "tokens", "created", "upstream",
           "input", "output"}  # fmt: skip


@pytest.fixture
def run(emulator: JinaEmulator, cache_dir: Path) -> Invoke:
    """``embedcache --cache-dir … --base-url <emulator> ARGS`` with the key set."""

    def bound(*args: str, stdin: str | None = None) -> Result:
        return invoke(*args, cache_dir=cache_dir, base_url=emulator.url, key=API_KEY, stdin=stdin)

    return bound


@pytest.fixture
def filled(run: Invoke) -> list[str]:
    """:data:`TEXTS` cached one call after another (so each is stored later than the one
    before), and their keys in that order."""
    for text in TEXTS:
        ok(run("get", text, "--dimensions", "8"))
    return [as_json(run("inspect", t, "--dimensions", "8", "--json"))["key"] for t in TEXTS]


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Standard input is a terminal a person answers on (CliRunner's never is)."""
    monkeypatch.setattr("embedcache.cli.output.stdin_is_terminal", lambda: True)


def entries(cache_dir: Path) -> int:
    with Store(cache_dir) as store:
        return len(store)


# get -


def test_get_dash_reads_one_text_per_line_from_standard_input(
    run: Invoke, emulator: JinaEmulator
) -> None:
    result = ok(run("get", "first", "-", "last", "--dimensions", "8", stdin="alpha\r\nbeta\n\n"))
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["text"] for row in rows] == ["first", "alpha", "beta", "last"]
    expected = emulator.expected_embedding("alpha", task="retrieval.passage", dimensions=8)
    assert np.array_equal(np.array(rows[1]["embedding"], dtype=np.float32), expected)
    assert "-" not in emulator.received_texts()


def test_get_dash_with_json_is_one_array_of_a_result_per_line(run: Invoke) -> None:
    rows = as_json(run("get", "-", "--json", stdin="alpha\nbeta\ngamma\n"))
    assert [row["text"] for row in rows] == ["alpha", "beta", "gamma"]


def test_get_dash_with_nothing_on_standard_input_is_a_usage_error(
    run: Invoke, emulator: JinaEmulator
) -> None:
    result = run("get", "-", stdin="\n\n")
    assert result.exit_code == 2
    assert "- (standard input) holds no text" in result.output
    assert emulator.requests == []


# sizes and removal


@pytest.mark.parametrize("size", ["6", "1e9", "512"])
def test_a_size_without_a_unit_is_refused_and_nothing_is_removed(
    run: Invoke, filled: list[str], cache_dir: Path, size: str
) -> None:
    result = run("prune", "--max-size", size, "--yes")
    assert result.exit_code == 2
    assert f"'{size}' has no unit: say {size}GB, {size}MiB or {size}B (bytes)" in result.output
    assert entries(cache_dir) == len(TEXTS)


@pytest.mark.parametrize(("size", "kept"), [("0", 0), ("64B", 2), ("0.1kB", 3), ("1KiB", 3)])
def test_a_size_with_a_unit_or_zero_is_taken(
    run: Invoke, filled: list[str], cache_dir: Path, size: str, kept: int
) -> None:
    ok(run("prune", "--max-size", size, "--yes"))  # 8 dimensions: 32 bytes an entry
    assert entries(cache_dir) == kept


def test_pruning_most_of_a_cache_without_a_terminal_is_refused_with_a_hint(
    run: Invoke, filled: list[str], cache_dir: Path
) -> None:
    error = one_line_error(run("prune", "--max-size", "32B", stdin="y\n"))
    assert error == (
        f"Error: not asked to remove 2 of the 3 entries in {cache_dir}: standard input is "
        "not a terminal; pass --yes (-y) to go ahead"
    )
    assert entries(cache_dir) == len(TEXTS)


def test_pruning_most_of_a_cache_asks_first_showing_how_many_of_how_many(
    run: Invoke, filled: list[str], cache_dir: Path, terminal: None
) -> None:
    refused = run("prune", "--dimensions", "8", stdin="n\n")
    assert refused.exit_code == 1
    assert f"Remove 3 of the 3 entries in {cache_dir}? [y/N]" in refused.output
    assert entries(cache_dir) == len(TEXTS)
    assert "removed 3 entries" in ok(run("prune", "--dimensions", "8", stdin="y\n")).output
    assert entries(cache_dir) == 0


@pytest.mark.parametrize("flag", ["-y", "--yes"])
def test_prune_with_yes_removes_most_of_a_cache_unasked(
    run: Invoke, filled: list[str], cache_dir: Path, flag: str
) -> None:
    assert "removed 3 entries" in ok(run("prune", "--max-size", "0B", flag)).output
    assert entries(cache_dir) == 0


def test_pruning_half_or_less_of_a_cache_does_not_ask(
    run: Invoke, filled: list[str], cache_dir: Path
) -> None:
    assert "removed 1 entry (" in ok(run("prune", "--max-size", "64B")).output
    assert entries(cache_dir) == 2


def test_clear_takes_dash_y_and_without_a_terminal_refuses_with_a_hint(
    run: Invoke, filled: list[str], cache_dir: Path
) -> None:
    error = one_line_error(run("clear", stdin="y\n"))
    assert error.startswith(f"Error: not asked to remove all 3 entries from {cache_dir}")
    assert error.endswith("pass --yes (-y) to go ahead")
    assert "removed 3 entries" in ok(run("clear", "-y")).output


def test_clear_on_a_terminal_asks(
    run: Invoke, filled: list[str], cache_dir: Path, terminal: None
) -> None:
    assert run("clear", stdin="n\n").exit_code == 1
    assert entries(cache_dir) == len(TEXTS)
    assert "removed 3 entries" in ok(run("clear", stdin="y\n")).output


# ls


def test_ls_is_a_table_with_a_header_newest_first_and_a_count_under_it(
    run: Invoke, filled: list[str]
) -> None:
    result = ok(run("ls"))
    header, *rows = result.stdout.splitlines()
    # UPSTREAM too: the entries came from the emulator, not Jina's API.
    assert header.split() == ["KEY", "CREATED", "MODEL", "TASK", "DIMS", "TOKENS", "UPSTREAM"]
    assert [row.split()[0] for row in rows] == filled[::-1]
    # Aligned: each column starts where its heading does, on every row.
    for heading in ("CREATED", "MODEL", "TASK"):
        column = header.index(heading)
        assert all(row[column - 2 : column] == "  " and row[column] != " " for row in rows)
    assert all(re.search(r"\d\.\d  http://127\.0\.0\.1:\d+$", row) for row in rows)
    assert result.stderr == "3 of 3 entries shown, newest first\n"


def test_ls_says_how_many_of_how_many_it_shows_and_how_to_see_more(
    run: Invoke, filled: list[str]
) -> None:
    result = ok(run("ls", "--limit", "1", "--offset", "1"))
    assert [row.split()[0] for row in result.stdout.splitlines()[1:]] == [filled[1]]
    assert result.stderr == ("entry 2 of 3 shown, newest first; --limit and --offset show others\n")


def test_ls_sorts_oldest_first_on_request(run: Invoke, filled: list[str]) -> None:
    result = ok(run("ls", "--sort", "oldest", "--limit", "2"))
    assert [row.split()[0] for row in result.stdout.splitlines()[1:]] == filled[:2]
    assert result.stderr.startswith("2 of 3 entries shown, oldest first;")


def test_ls_json_keeps_its_keys_newest_first(run: Invoke, filled: list[str]) -> None:
    listed = as_json(run("ls", "--json"))
    assert [entry["key"] for entry in listed] == filled[::-1]
    assert all(set(entry) == LS_KEYS for entry in listed)


# stats


def test_stats_counts_in_words_one_request_not_one_requests(run: Invoke) -> None:
    ok(run("get", "only text"))
    lifetime = next(line for line in ok(run("stats")).output.splitlines() if "lifetime" in line)
    assert lifetime.split(None, 1)[1] == "0 hits, 1 miss, 1 request"


def six_digits(dollars: float) -> bool:
    return dollars == float(f"{dollars:.6g}") and dollars > 0


def test_estimated_dollars_keep_six_significant_digits_not_a_floats_tail(run: Invoke) -> None:
    price = ["--price-per-million", "123.456789"]  # every product has a long tail
    for _ in range(2):  # the second is all hits: tokens saved
        ok(run("get", "a text of several tokens", "another"))
    assert six_digits(as_json(run("stats", *price, "--json"))["estimated_usd_saved"])
    plan = as_json(run("prewarm", "-", "--dry-run", *price, "--json", stdin="new text\n"))
    assert six_digits(plan["estimated_cost_usd"])
    # The few tokens of a small run are not rounded away to $0, at the default price too.
    assert as_json(run("stats", "--json"))["estimated_usd_saved"] > 0
