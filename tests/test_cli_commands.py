"""Every CLI command through click's CliRunner, against the emulator and a real cache."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from embedcache.cli import main, output
from embedcache.storage.store import Store
from embedcache.testing import Fault, JinaEmulator

from .cli_helpers import Invoke, as_json, invoke, ok, one_line_error
from .conftest import API_KEY, damage_entry, wait_until_quiet


@pytest.fixture
def run(emulator: JinaEmulator, cache_dir: Path) -> Invoke:
    """Invoke ``embedcache --cache-dir … --base-url <emulator> ARGS`` with the key set."""

    def bound(
        *args: str, key: str | None = API_KEY, stdin: str | None = None, obj: object = None
    ) -> Result:
        url = emulator.url
        return invoke(*args, cache_dir=cache_dir, base_url=url, key=key, stdin=stdin, obj=obj)

    return bound


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, Path]:
    texts = ["the first text", "a second text", "the first text", "third, and last"]
    files = {"txt": tmp_path / "corpus.txt", "jsonl": tmp_path / "corpus.jsonl"}
    files["txt"].write_text("\n".join(texts) + "\n\n", encoding="utf-8")
    files["jsonl"].write_text(
        "".join(json.dumps({"body": t, "doc": i // 2}) + "\n" for i, t in enumerate(texts)),
        encoding="utf-8",
    )
    for kind, delimiter in (("csv", ","), ("tsv", "\t")):
        files[kind] = tmp_path / f"corpus.{kind}"
        with files[kind].open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter=delimiter)
            writer.writerow(["id", "text"])
            writer.writerows([i, t] for i, t in enumerate(texts))
    return files


@pytest.mark.parametrize("kind", ["txt", "jsonl", "csv", "tsv"])
def test_prewarm_reads_each_format_and_sends_distinct_texts_once(
    run: Invoke, emulator: JinaEmulator, corpus: dict[str, Path], kind: str
) -> None:
    extra = ["--field", "body"] if kind == "jsonl" else []
    report = as_json(run("prewarm", str(corpus[kind]), *extra, "--json"))
    assert (report["texts"], report["unique"], report["fetched"]) == (4, 3, 3)
    received = sorted(emulator.received_texts())
    assert received == ["a second text", "the first text", "third, and last"]
    again = as_json(run("prewarm", str(corpus[kind]), *extra, "--json"))
    assert (again["cached"], again["fetched"], again["requests"]) == (3, 0, 0)
    assert len(emulator.requests) == 1


def test_prewarm_reads_standard_input(run: Invoke, emulator: JinaEmulator) -> None:
    report = as_json(run("prewarm", "-", "--json", stdin="one\ntwo\n"))
    assert report["fetched"] == 2
    assert sorted(emulator.received_texts()) == ["one", "two"]


def test_dry_run_sends_nothing_and_its_estimate_matches_the_real_prewarm(
    run: Invoke, emulator: JinaEmulator, tmp_path: Path
) -> None:
    corpus = tmp_path / "big.txt"
    rng = np.random.default_rng(3)
    words = ["vector", "cache", "naïve", "検索", "Milvus", "2048", "retrieval", "chunk,"]
    corpus.write_text(
        "\n".join(" ".join(rng.choice(words, size=int(rng.integers(3, 80)))) for _ in range(300)),
        encoding="utf-8",
    )
    dry = as_json(run("prewarm", str(corpus), "--dry-run", "--json"))
    assert emulator.requests == []
    assert dry["dry_run"] is True
    assert dry["estimated_cost_usd"] == pytest.approx(dry["estimated_tokens"] * 0.05 / 1e6)
    real = as_json(run("prewarm", str(corpus), "--json", "--batch-size", "50"))
    assert real["tokens_spent"] == sum(r.tokens for r in emulator.requests)
    assert abs(dry["estimated_tokens"] - real["tokens_spent"]) <= 0.1 * real["tokens_spent"]


def test_dry_run_human_output_labels_the_cost_an_estimate(
    run: Invoke, corpus: dict[str, Path]
) -> None:
    output = ok(run("prewarm", str(corpus["txt"]), "--dry-run", "--price-per-million", "2")).output
    assert "Dry run: nothing sent" in output
    assert "estimate at $2.0/1M tokens" in output


def test_prewarm_missing_file_is_a_usage_error(run: Invoke, tmp_path: Path) -> None:
    result = run("prewarm", str(tmp_path / "nope.txt"))
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_prewarm_bad_column_names_the_columns(run: Invoke, corpus: dict[str, Path]) -> None:
    error = one_line_error(run("prewarm", str(corpus["csv"]), "--column", "body"))
    assert "no column 'body' (columns: id, text)" in error


def test_prewarm_bad_jsonl_field_names_the_line(run: Invoke, corpus: dict[str, Path]) -> None:
    error = one_line_error(run("prewarm", str(corpus["jsonl"]), "--field", "nope"))
    assert "corpus.jsonl:1: no field 'nope'" in error


def test_prewarm_bad_task_fails_before_sending(
    run: Invoke, emulator: JinaEmulator, corpus: dict[str, Path]
) -> None:
    error = one_line_error(run("prewarm", str(corpus["txt"]), "--task", "summarise"))
    assert "unknown task 'summarise'" in error
    assert emulator.requests == []


def test_unusable_cache_dir_is_a_one_line_error(
    emulator: JinaEmulator, corpus: dict[str, Path], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    # A command that may create the cache (stats and the other readers refuse a missing one).
    result = invoke("clear", "--yes", cache_dir=blocker / "cache", base_url=emulator.url)
    assert "CacheError: cannot prepare cache" in one_line_error(result)


def test_no_api_key_with_misses_names_both_variables(
    run: Invoke, emulator: JinaEmulator, corpus: dict[str, Path]
) -> None:
    error = one_line_error(run("prewarm", str(corpus["txt"]), key=None))
    assert "set JINAAI_API_KEY (or JINA_API_KEY)" in error
    assert emulator.requests == []


def test_fully_cached_prewarm_needs_no_key(run: Invoke, corpus: dict[str, Path]) -> None:
    ok(run("prewarm", str(corpus["txt"])))
    assert as_json(run("prewarm", str(corpus["txt"]), "--json", key=None))["fetched"] == 0


def test_late_chunking_sends_each_group_as_one_ordered_request(
    run: Invoke, emulator: JinaEmulator, corpus: dict[str, Path]
) -> None:
    args = ["prewarm", str(corpus["jsonl"]), "--field", "body", "--group-field", "doc"]
    report = as_json(run(*args, "--late-chunking", "--json"))
    assert report["fetched"] == 4  # positions in groups, not distinct texts
    assert [r.texts for r in emulator.requests] == [
        ["the first text", "a second text"],
        ["the first text", "third, and last"],
    ]
    assert all(r.body and r.body["late_chunking"] is True for r in emulator.requests)
    assert as_json(run(*args, "--late-chunking", "--json"))["fetched"] == 0


def test_late_chunking_without_groups_is_a_usage_error(
    run: Invoke, corpus: dict[str, Path]
) -> None:
    result = run("prewarm", str(corpus["txt"]), "--late-chunking")
    assert result.exit_code == 2
    assert "--group-field" in result.output


def test_stats_reports_entries_groups_and_lifetime_savings(
    run: Invoke, corpus: dict[str, Path]
) -> None:
    ok(run("prewarm", str(corpus["txt"])))
    ok(run("prewarm", str(corpus["txt"]), "--dimensions", "64"))
    ok(run("get", "the first text", "a second text"))
    stats = as_json(run("stats", "--json"))
    assert stats["entries"] == 6
    assert stats["size_limit"] is None
    assert {(g["dimensions"], g["entries"]) for g in stats["groups"]} == {(1024, 3), (64, 3)}
    assert stats["lifetime"]["misses"] == 6
    assert stats["lifetime"]["hits"] == 2
    assert stats["lifetime"]["tokens_saved"] > 0
    assert stats["estimated_usd_saved"] > 0
    human = ok(run("stats")).output
    assert "size limit   none (never evicts)" in human
    assert "jina-embeddings-v3 / retrieval.passage / 64" in human


def test_ls_filters_and_pages(run: Invoke, corpus: dict[str, Path]) -> None:
    ok(run("prewarm", str(corpus["txt"])))
    ok(run("prewarm", str(corpus["txt"]), "--task", "retrieval.query"))
    assert len(as_json(run("ls", "--json"))) == 6
    queries = as_json(run("ls", "--task", "retrieval.query", "--json"))
    assert {e["task"] for e in queries} == {"retrieval.query"}
    assert len(queries) == 3
    page = as_json(run("ls", "--limit", "4", "--offset", "4", "--json"))
    assert len(page) == 2
    assert as_json(run("ls", "--since", "1h", "--dimensions", "512", "--json")) == []
    assert "no entries" in run("ls", "--model", "other").output


def test_inspect_reports_cached_and_uncached_texts(run: Invoke, corpus: dict[str, Path]) -> None:
    ok(run("prewarm", str(corpus["txt"])))
    hit = as_json(run("inspect", "the first text", "--json"))
    assert hit["cached"] is True
    assert hit["request"]["task"] == "retrieval.passage"
    assert hit["dimensions"] == 1024
    assert as_json(run("inspect", "--key", hit["key"], "--json"))["cached"] is True
    assert as_json(run("inspect", "the first text", "--task", "text-matching", "--json")) == {
        "key": as_json(run("inspect", "the first text", "--task", "text-matching", "--json"))[
            "key"
        ],
        "cached": False,
    }
    assert run("inspect").exit_code == 2
    assert run("inspect", "x", "--key", "00").exit_code == 2
    assert run("inspect", "--key", "zz").exit_code == 2


def test_get_prints_json_lines_and_writes_npy(
    run: Invoke, emulator: JinaEmulator, tmp_path: Path
) -> None:
    lines = ok(run("get", "alpha", "beta", "--dimensions", "8")).stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["text"] for r in rows] == ["alpha", "beta"]
    expected = emulator.expected_embedding("alpha", task="retrieval.passage", dimensions=8)
    assert np.array_equal(np.array(rows[0]["embedding"], dtype=np.float32), expected)
    target = tmp_path / "v.npy"
    ok(run("get", "alpha", "beta", "--dimensions", "8", "--npy", str(target)))
    assert np.load(target).shape == (2, 8)
    assert len(emulator.requests) == 1


def test_get_offline_miss_is_an_error(run: Invoke, emulator: JinaEmulator) -> None:
    error = one_line_error(run("get", "never seen", "--offline"))
    assert "CacheMissError: offline: 1 of 1 distinct texts are not cached" in error
    assert emulator.requests == []


def test_export_writes_npy_rows_matching_jsonl_metadata(
    run: Invoke, emulator: JinaEmulator, corpus: dict[str, Path], tmp_path: Path
) -> None:
    ok(run("prewarm", str(corpus["txt"])))
    ok(run("prewarm", str(corpus["txt"]), "--dimensions", "32"))
    error = one_line_error(run("export", "--out", str(tmp_path / "all")))
    assert "differ in dimension" in error
    files = as_json(run("export", "--out", str(tmp_path / "small"), "--dimensions", "32", "--json"))
    assert files["files"] == [str(tmp_path / "small.npy"), str(tmp_path / "small.jsonl")]
    vectors = np.load(tmp_path / "small.npy")
    meta = [json.loads(line) for line in (tmp_path / "small.jsonl").read_text().splitlines()]
    assert vectors.shape == (3, 32)
    assert len(meta) == 3
    key = as_json(run("inspect", "third, and last", "--dimensions", "32", "--json"))["key"]
    row = next(i for i, m in enumerate(meta) if m["key"] == key)
    expected = emulator.expected_embedding(
        "third, and last", task="retrieval.passage", dimensions=32
    )
    assert vectors[row].tobytes() == expected.tobytes()


def test_export_parquet_needs_pyarrow_or_writes_it(
    run: Invoke, corpus: dict[str, Path], tmp_path: Path
) -> None:
    ok(run("prewarm", str(corpus["txt"])))
    result = run("export", "--out", str(tmp_path / "p"), "--parquet")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert "pip install 'embedcache[parquet]'" in one_line_error(result)
    else:
        ok(result)
        assert (tmp_path / "p.parquet").exists()


def test_prune_dry_run_then_by_filter_age_and_size(
    run: Invoke, corpus: dict[str, Path], cache_dir: Path
) -> None:
    ok(run("prewarm", str(corpus["txt"])))
    ok(run("prewarm", str(corpus["txt"]), "--dimensions", "16"))
    assert run("prune").exit_code == 2
    dry = as_json(run("prune", "--dimensions", "16", "--dry-run", "--json"))
    assert (dry["selected"], dry["removed"]) == (3, 0)
    assert as_json(run("prune", "--older-than", "1d", "--json"))["selected"] == 0
    segments = cache_dir / "segments"
    before = sum(p.stat().st_size for p in segments.iterdir())
    pruned = as_json(run("prune", "--dimensions", "16", "--json"))
    assert pruned["removed"] == 3
    assert pruned["bytes_freed"] == 3 * 16 * 4  # the 16-d segment was all dead: deleted
    assert sum(p.stat().st_size for p in segments.iterdir()) == before - 3 * 16 * 4
    shrink = as_json(run("prune", "--max-size", "5KB", "--yes", "--json"))
    assert shrink["removed"] == 2  # three 4 KiB vectors: keep one
    with Store(cache_dir) as store:
        assert len(store) == 1
    assert run("prune", "--max-size", "lots").exit_code == 2


def test_clear_asks_first_unless_yes(
    run: Invoke, corpus: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output, "stdin_is_terminal", lambda: True)  # someone to ask
    ok(run("prewarm", str(corpus["txt"])))
    refused = run("clear", stdin="n\n")
    assert refused.exit_code == 1
    assert as_json(run("stats", "--json"))["entries"] == 3
    assert "removed 3 entries" in ok(run("clear", stdin="y\n")).output
    ok(run("prewarm", str(corpus["txt"])))
    assert "removed 3 entries" in ok(run("clear", "--yes")).output
    stats = as_json(run("stats", "--json"))
    assert stats["entries"] == 0
    assert stats["lifetime"]["misses"] == 6  # lifetime counters survive a clear


def test_verify_finds_and_repairs_damaged_entries(
    run: Invoke, corpus: dict[str, Path], cache_dir: Path
) -> None:
    ok(run("prewarm", str(corpus["txt"])))
    assert as_json(run("verify", "--json"))["bad"] == []
    key = damage_entry(cache_dir)
    found = run("verify", "--json")
    assert found.exit_code == 1
    report = json.loads(found.stdout)
    assert report["bad"] == [{"key": key.hex(), "reason": "entry checksum mismatch"}]
    repaired = as_json(run("verify", "--repair", "--json"))
    assert repaired["removed"] == 1
    assert as_json(run("verify", "--json"))["checked"] == 2


def test_interrupted_prewarm_resumes_sending_only_the_remainder(
    emulator: JinaEmulator, cache_dir: Path, tmp_path: Path
) -> None:
    texts = [f"text number {i}" for i in range(60)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    emulator.latency = 0.05
    args = ["--cache-dir", str(cache_dir), "--base-url", emulator.url, "prewarm", str(corpus)]
    args += ["--batch-size", "5", "--max-concurrency", "1"]
    env = {**os.environ, "JINA_API_KEY": API_KEY}
    process = subprocess.Popen(
        [sys.executable, "-m", "embedcache", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while len(emulator.requests) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "run the same command again" in err

    with Store(cache_dir) as store:
        present = store_contains(store, texts, emulator.url)
        committed = {t for t, ok in zip(texts, present, strict=True) if ok}
    assert 0 < len(committed) < len(texts)
    # The killed process's last request is still being answered (and logged) by the
    # emulator: let it finish before clearing the log.
    wait_until_quiet(emulator)
    emulator.reset()
    emulator.latency = 0.0
    report = as_json(invoke(*args, "--json", key=API_KEY))
    assert report["fetched"] == len(texts) - len(committed)
    assert sorted(emulator.received_texts()) == sorted(set(texts) - committed)


def store_contains(store: Store, texts: list[str], upstream: str) -> list[bool]:
    """Whether each text is cached with the default settings, as ``upstream`` answered it."""
    from embedcache.cache_keys import fingerprint, text_keys
    from embedcache.config import upstream_id
    from embedcache.models import resolve_options

    options = resolve_options("jina-embeddings-v3", "retrieval.passage")
    return store.contains_many(text_keys(fingerprint(options, upstream_id(upstream)), texts))


def test_api_errors_reach_the_user_as_one_line(
    run: Invoke, emulator: JinaEmulator, corpus: dict[str, Path]
) -> None:
    emulator.inject(Fault(status=402))
    error = one_line_error(run("prewarm", str(corpus["txt"])))
    assert error.startswith("Error: APIError: Jina API returned HTTP 402")
    assert API_KEY not in error


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for name in main.list_commands(None):  # type: ignore[arg-type]
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Usage:" in result.output


def test_progress_prints_plain_lines_when_not_on_a_terminal(
    run: Invoke, emulator: JinaEmulator, tmp_path: Path
) -> None:
    from embedcache.cli.prewarm import Pacing

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"t{i}" for i in range(6)), encoding="utf-8")
    args = ("prewarm", str(corpus), "--batch-size", "2", "--max-concurrency", "1")
    result = ok(run(*args, obj=Pacing(0.0)))
    lines = [line for line in result.stderr.splitlines() if line.startswith("prewarm:")]
    assert len(lines) == 3
    assert lines[-1].startswith("prewarm: 6/6 texts (100%), 0 hits, 6 fetched")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["get", "x", "--task", "summarise"], 1, "InvalidInputError: unknown task 'summarise'"),
        (["get", "x", "--dimensions", "4096"], 1, "dimensions=4096 is out of range"),
        (["get", "x", "--dimensions", "0"], 2, "0 is not in the range x>=1"),
        (["get", "x", "--dimensions", "-3"], 2, "-3 is not in the range x>=1"),
        (["get", "x", "--model", ""], 1, "model must be a non-empty string"),
        (["get", "x " * 9000], 1, "TEXT 1: about 9,000 tokens, over the 8,192-token limit"),
        (["get", "x", "--model", "jina-embeddings-v5-text-small", "--late-chunking"], 1,
         "does not support late_chunking"),
        (["prewarm", "-", "--format", "jsonl"], 1, "<stdin>:1: not valid JSON"),
    ],
)  # fmt: skip
def test_bad_input_through_the_cli_fails_in_one_line_before_any_request(
    run: Invoke, emulator: JinaEmulator, args: list[str], code: int, message: str
) -> None:
    result = run(*args, stdin="not json\n")
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert emulator.requests == []


@pytest.mark.parametrize(
    ("key", "message"),
    [(None, "no Jina API key"), ("jina_" + "W" * 60, "HTTP 401 AUTH_INVALID_API_KEY")],
)
def test_missing_or_invalid_key_through_the_cli(
    run: Invoke, emulator: JinaEmulator, key: str | None, message: str
) -> None:
    error = one_line_error(run("get", "x", key=key))
    assert message in error
    assert len(emulator.requests) == (0 if key is None else 1)
