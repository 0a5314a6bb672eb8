"""What ``embedcache prewarm`` shows a person (issue 22's rough edges): a progress line that
fits the terminal, summaries that read right, errors by file and line, standard input read
in its own format, and no option that is shown but ignored."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest
from click.testing import Result

from embedcache.cli.prewarm import Progress
from embedcache.testing import JinaEmulator

from .cli_helpers import Invoke, as_json, invoke, ok, one_line_error
from .conftest import API_KEY


@pytest.fixture
def run(emulator: JinaEmulator, cache_dir: Path) -> Invoke:
    def bound(*args: str, stdin: str | None = None) -> Result:
        return invoke(*args, cache_dir=cache_dir, base_url=emulator.url, key=API_KEY, stdin=stdin)

    return bound


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_the_progress_line_fits_any_width_and_separates_thousands() -> None:
    progress = Progress(total=3_000_000, cached=1_234_567, quiet=True)
    progress.advance(1_000_000, 25_690_123)
    progress.found(12_345)
    for width in (20, 40, 60, 79, 119, 200):
        assert len(progress.render(width)) <= width
    narrow = progress.render(79)
    assert narrow.startswith("prewarm 2,246,912/3,000,000 (75%)")
    assert "ETA " in narrow  # labelled, and the last part to go
    wide = progress.render(200)
    for part in ("1,000,000 fetched", "12,345 by another process", "25,690,123 tokens"):
        assert part in wide
    assert re.search(r"\[#+-+\]", wide)  # the bar takes the room that is left


def _pty_run(args: list[str], columns: int) -> tuple[int, str]:
    """``embedcache ARGS`` with stderr on a terminal ``columns`` wide; its exit code, and
    what it wrote there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {**os.environ, "JINA_API_KEY": API_KEY, "COLUMNS": str(columns)}
    process = subprocess.Popen(
        [sys.executable, "-m", "embedcache", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:  # read as it is written: a full terminal would block the writer
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every writer has closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    process.communicate(timeout=60)
    reader.join(timeout=10)
    os.close(master)
    return process.returncode, b"".join(chunks).decode("utf-8", "replace")


def test_prewarm_on_an_80_column_terminal_redraws_one_line_within_it(
    emulator: JinaEmulator, cache_dir: Path, tmp_path: Path
) -> None:
    corpus = write(tmp_path / "corpus.txt", [f"progress text {i}" for i in range(300)])
    emulator.latency = 0.01  # 60 requests: the line is redrawn as they arrive
    args = ["--cache-dir", str(cache_dir), "--base-url", emulator.url, "prewarm", str(corpus)]
    code, shown = _pty_run([*args, "--batch-size", "5", "--max-concurrency", "1"], 80)
    assert code == 0, shown
    drawn = [line.replace("\x1b[K", "") for line in re.split(r"[\r\n]+", shown)]
    assert max(len(line) for line in drawn) < 80, max(drawn, key=len)
    assert any(line.startswith("prewarm 300/300 (100%)") for line in drawn)

    code, shown = _pty_run([*args, "--quiet"], 80)
    assert (code, shown) == (0, "")


def test_prewarm_json_costs_are_rounded_to_eight_decimals(run: Invoke, tmp_path: Path) -> None:
    # 12 estimated tokens at $0.05 per million: 6.000000000000001e-07 unrounded.
    corpus = write(tmp_path / "c.txt", [f"cost text {i} word " for i in range(3)])
    report = as_json(run("prewarm", str(corpus), "--json"))
    raw = report["estimated_tokens"] * 0.05 / 1e6
    assert raw != round(raw, 8)  # the float noise this is about is there to be rounded
    for name in ("estimated_cost_usd", "cost_usd"):
        value = report[name]
        assert value == float(f"{value:.8f}"), (name, value)
    assert report["estimated_cost_usd"] == round(report["estimated_tokens"] * 0.05 / 1e6, 8)


def test_prewarm_summaries_count_one_request_in_the_singular(run: Invoke, tmp_path: Path) -> None:
    corpus = write(tmp_path / "c.txt", ["one text", "another text"])
    dry = ok(run("--rpm", "10", "prewarm", str(corpus), "--dry-run")).stdout
    assert "(1 request; plus the API's own latency)" in dry
    done = ok(run("prewarm", str(corpus))).stdout
    assert "2 by this run, in 1 request\n" in done
    assert "1 requests" not in dry + done


def test_a_fully_cached_prewarm_says_so_in_one_line(run: Invoke, tmp_path: Path) -> None:
    corpus = write(tmp_path / "c.txt", ["a", "b", "a", "c"])
    ok(run("prewarm", str(corpus)))
    again = ok(run("prewarm", str(corpus)))
    assert again.stdout == "All 3 distinct texts (of 4 read) are cached already: nothing sent.\n"
    dry = ok(run("prewarm", str(corpus), "--dry-run")).stdout
    assert dry.splitlines() == [
        "All 3 distinct texts (of 4 read) are cached already: nothing would be sent."
    ]
    # The JSON keeps every key, for scripts.
    report = as_json(run("prewarm", str(corpus), "--json"))
    assert (report["fetched"], report["filled_elsewhere"], report["cached"]) == (0, 0, 3)


def _too_long_corpus(tmp_path: Path, kind: str) -> Path:
    texts = ["a", "b", "c", "x " * 9000]
    if kind == "txt":
        return write(tmp_path / "corpus.txt", texts)
    path = tmp_path / f"corpus.{kind}"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t" if kind == "tsv" else ",")
        writer.writerow(["text"])
        writer.writerows([text] for text in texts)
    return path


def test_a_text_over_the_limit_is_named_by_file_and_line_and_the_flag(
    run: Invoke, emulator: JinaEmulator, tmp_path: Path
) -> None:
    for kind, line in (("txt", 4), ("csv", 5), ("tsv", 5)):  # csv/tsv: the header is line 1
        corpus = _too_long_corpus(tmp_path, kind)
        error = one_line_error(run("prewarm", str(corpus)))
        assert f"corpus.{kind}:{line}: about " in error
        assert error.endswith(
            "tokens, over the 8,192-token limit of jina-embeddings-v3; shorten it or use --truncate"
        )
        assert "texts[" not in error
        assert "truncate=True" not in error
    assert emulator.requests == []


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        ("".join(json.dumps({"id": i, "text": f"piped {i}"}) + "\n" for i in range(3)), "jsonl"),
        ("id,text\n" + "".join(f"{i},piped {i}\n" for i in range(3)), "csv"),
    ],
)
def test_standard_input_is_read_in_the_format_its_first_line_shows(
    run: Invoke, emulator: JinaEmulator, content: str, kind: str
) -> None:
    result = ok(run("prewarm", "-", stdin=content))
    assert sorted(emulator.received_texts()) == ["piped 0", "piped 1", "piped 2"]
    assert f"prewarm: reading <stdin> as {kind} (its first line says so; --format" in (
        result.stderr
    )


def test_format_reads_standard_input_as_told_whatever_its_first_line(
    run: Invoke, emulator: JinaEmulator
) -> None:
    lines = "".join(json.dumps({"text": f"raw {i}"}) + "\n" for i in range(2))
    sniffed = as_json(run("prewarm", "-", "--json", stdin=lines))
    assert sniffed["fetched"] == 2
    assert emulator.received_texts() == ["raw 0", "raw 1"]
    ok(run("prewarm", "-", "--format", "txt", stdin=lines))
    assert emulator.received_texts()[2:] == lines.splitlines()


def test_group_field_without_late_chunking_is_a_usage_error(
    run: Invoke, emulator: JinaEmulator, tmp_path: Path
) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "a", "doc": 1}) + "\n", encoding="utf-8")
    result = run("prewarm", str(corpus), "--group-field", "doc")
    assert result.exit_code == 2, result.output
    assert "--group-field names late-chunking groups: add --late-chunking" in result.output
    assert emulator.requests == []


def test_sniffed_formats_read_jsonl_csv_and_tsv_headers_else_text() -> None:
    from embedcache.cli.sources import read_items

    told: list[tuple[str, str]] = []
    cases = {
        '\n{"text": "a"}\n': ["a"],
        "n\ttext\n1\tb\n": ["b"],
        "text\nplain line\n": ["text", "plain line"],  # no delimiter: a single word is text
        "[1, 2]\n": ["[1, 2]"],
    }
    for content, texts in cases.items():
        items = read_items("-", stdin=io.StringIO(content), on_sniffed=lambda *a: told.append(a))
        assert [item.text for item in items] == texts
    assert told == [
        ("<stdin>", "jsonl"),
        ("<stdin>", "tsv"),
        ("<stdin>", "txt"),
        ("<stdin>", "txt"),
    ]
