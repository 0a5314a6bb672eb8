"""``embedcache prewarm`` in bounded memory: windows of texts, exact counts over them, and
a snapshot rebuilt a page at a time. Windows of a few texts here; the big figures come from
``bench/prewarm_memory.py``."""

from __future__ import annotations

import itertools
import json
import os
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result

from embedcache.cache_keys import fingerprint, text_keys
from embedcache.cli import prewarm as cli_prewarm
from embedcache.cli.prewarm import Pacing
from embedcache.cli.sources import SourceItem
from embedcache.embedding.distinct import DistinctKeys
from embedcache.models import resolve_options
from embedcache.storage import snapshot as snapshot_module
from embedcache.storage.rows import READ_COLUMNS
from embedcache.storage.store import Store
from embedcache.storage.tuning import Tuning
from embedcache.testing import JinaEmulator

from .cli_helpers import Invoke, as_json, invoke, one_line_error
from .conftest import API_KEY

OPTIONS = resolve_options("jina-embeddings-v3", "retrieval.passage")


@pytest.fixture
def run(emulator: JinaEmulator, cache_dir: Path) -> Invoke:
    def bound(*args: str, stdin: str | None = None, obj: object = None) -> Result:
        url = emulator.url
        return invoke(*args, cache_dir=cache_dir, base_url=url, key=API_KEY, stdin=stdin, obj=obj)

    return bound


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# The compact set of distinct keys


def test_distinct_keys_count_exactly_what_a_set_would_over_many_batches() -> None:
    rng = np.random.default_rng(7)
    pool = [bytes(rng.integers(0, 256, 16, dtype=np.uint8)) for _ in range(3000)]
    pool[1] = pool[0][:15] + b"\x00"  # keys differing only in a trailing NUL stay distinct
    pool[0] = pool[0][:15] + b"\x01"
    distinct = DistinctKeys()
    reference: set[bytes] = set()
    for _ in range(60):
        batch = list(dict.fromkeys(pool[i] for i in rng.integers(0, len(pool), 200)))
        new = distinct.add(batch)
        assert new.tolist() == [key not in reference for key in batch]
        reference.update(batch)
    assert len(distinct) == len(reference)
    assert distinct.nbytes == 16 * len(reference)


def test_distinct_keys_stay_in_few_runs() -> None:
    distinct = DistinctKeys()
    for start in range(0, 64_000, 100):
        # The first byte varies, so keys land in many buckets.
        distinct.add(
            [(i * 2654435761 % 2**32).to_bytes(16, "little") for i in range(start, start + 100)]
        )
    assert len(distinct) == 64_000
    assert max(len(runs) for runs in distinct._buckets) <= 2 * (64_000).bit_length()


# Windows


def items(texts: list[str], groups: list[str] | None = None) -> Iterator[SourceItem]:
    for i, text in enumerate(texts):
        yield SourceItem(text, None if groups is None else groups[i], f"f:{i + 1}")


def test_windows_read_no_further_than_the_window() -> None:
    endless = (SourceItem(f"t{i}", None, f"f:{i}") for i in itertools.count())
    first = next(cli_prewarm._windows(endless, 4, late_chunking=False))
    assert first == [["t0", "t1", "t2", "t3"]]
    assert next(endless).text == "t4"  # nothing past the window was read


def test_windows_never_split_a_late_chunking_group() -> None:
    texts = [f"t{i}" for i in range(7)]
    groups = ["a", "a", "b", "b", "b", "c", "c"]
    windows = list(cli_prewarm._windows(items(texts, groups), 3, late_chunking=True))
    assert windows == [[["t0", "t1"], ["t2", "t3", "t4"]], [["t5", "t6"]]]


def test_a_group_whose_lines_are_not_consecutive_is_refused_naming_the_line() -> None:
    windows = cli_prewarm._windows(items(["x", "y", "z"], ["a", "b", "a"]), 10, True)
    with pytest.raises(Exception, match=r"f:3: group 'a' appears again after other groups"):
        list(windows)


# The command


def sent_once(emulator: JinaEmulator) -> bool:
    received = emulator.received_texts()
    return len(received) == len(set(received))


def test_counts_over_windows_are_exact_and_a_repeat_is_fetched_once(
    run: Invoke, emulator: JinaEmulator, tmp_path: Path
) -> None:
    early = [f"early {i}" for i in range(5)]
    ok_cached = write_lines(tmp_path / "cached.txt", early[:2])
    as_json(run("prewarm", str(ok_cached), "--json"))
    emulator.reset()
    # Texts repeat within windows and across them, before and after being fetched.
    lines = early + early[::-1] + ["late 1", "early 0", "late 1", "late 2", "early 4"]
    corpus = write_lines(tmp_path / "corpus.txt", lines)
    dry = as_json(run("prewarm", str(corpus), "--json", "--dry-run", "--window", "3"))
    real = as_json(run("prewarm", str(corpus), "--json", "--window", "3", "--batch-size", "2"))
    for report in (dry, real):
        assert (report["texts"], report["unique"], report["cached"], report["to_fetch"]) == (
            len(lines), 7, 2, 5
        )  # fmt: skip
        assert report["distinct_set_bytes"] == 16 * 7
    assert real["fetched"] == 5
    assert sorted(emulator.received_texts()) == sorted({*early[2:], "late 1", "late 2"})
    assert sent_once(emulator)


def test_dry_run_estimate_over_windows_matches_the_real_prewarm(
    run: Invoke, emulator: JinaEmulator, tmp_path: Path
) -> None:
    lines = [f"text {i % 23} " + "word " * (i % 5) for i in range(60)]
    corpus = write_lines(tmp_path / "corpus.txt", lines)
    args = ("prewarm", str(corpus), "--json", "--window", "8")
    dry = as_json(run(*args, "--dry-run"))
    real = as_json(run(*args))
    assert emulator.requests
    assert dry["estimated_tokens"] == real["tokens_spent"]
    assert dry["estimated_requests"] == real["requests"] == len(emulator.requests)


def test_bad_input_after_many_windows_fails_before_any_request(
    run: Invoke, emulator: JinaEmulator, tmp_path: Path
) -> None:
    lines = [json.dumps({"text": f"fine {i}"}) for i in range(20)] + ["{not json"]
    corpus = write_lines(tmp_path / "corpus.jsonl", lines)
    error = one_line_error(run("prewarm", str(corpus), "--window", "2"))
    assert "corpus.jsonl:21: not valid JSON" in error
    assert emulator.requests == []


def test_late_chunking_groups_span_no_window_boundary(
    run: Invoke, emulator: JinaEmulator, tmp_path: Path
) -> None:
    groups = [["a1", "a2"], ["b1", "b2", "b3"], ["c1"]]
    lines = [json.dumps({"text": t, "doc": g}) for g, texts in enumerate(groups) for t in texts]
    corpus = write_lines(tmp_path / "corpus.jsonl", lines)
    args = ["prewarm", str(corpus), "--group-field", "doc", "--late-chunking", "--json"]
    report = as_json(run(*args, "--window", "2"))
    assert report["fetched"] == 6
    assert [r.texts for r in emulator.requests] == groups


def test_scattered_group_fails_before_any_request(
    run: Invoke, emulator: JinaEmulator, tmp_path: Path
) -> None:
    lines = [json.dumps({"text": t, "doc": d}) for t, d in [("x", 1), ("y", 2), ("z", 1)]]
    corpus = write_lines(tmp_path / "corpus.jsonl", lines)
    args = ["prewarm", str(corpus), "--group-field", "doc", "--late-chunking"]
    error = one_line_error(run(*args))
    assert "corpus.jsonl:3: group '1' appears again after other groups" in error
    assert emulator.requests == []


def test_standard_input_is_read_in_windows_twice(run: Invoke, emulator: JinaEmulator) -> None:
    stdin = "".join(f"piped {i % 7}\n" for i in range(20))
    report = as_json(run("prewarm", "-", "--json", "--window", "3", stdin=stdin))
    assert (report["texts"], report["unique"], report["fetched"]) == (20, 7, 7)
    assert sorted(emulator.received_texts()) == sorted(f"piped {i}" for i in range(7))


def test_a_named_pipe_is_read_once_and_both_passes_read_its_copy(
    run: Invoke, emulator: JinaEmulator, tmp_path: Path
) -> None:
    # What `embedcache prewarm <(zcat corpus.gz)` hands over: opened a second time, a pipe
    # would wait for a writer that is gone.
    pipe = tmp_path / "corpus.pipe"
    os.mkfifo(pipe)

    def write() -> None:
        with open(pipe, "w", encoding="utf-8") as writer:
            writer.write("".join(f"piped {i % 7}\n" for i in range(20)))

    writer = threading.Thread(target=write)
    writer.start()
    report = as_json(run("prewarm", str(pipe), "--json", "--window", "3"))
    writer.join(10)
    assert not writer.is_alive(), "the pipe was never read to its end"
    assert (report["texts"], report["unique"], report["fetched"]) == (20, 7, 7)
    assert sorted(emulator.received_texts()) == sorted(f"piped {i}" for i in range(7))


# The snapshot


def fill(store: Store, count: int) -> list[bytes]:
    keys = text_keys(fingerprint(OPTIONS), [f"snapshot text {i}" for i in range(count)])
    vectors = np.arange(count, dtype=np.float32).reshape(-1, 1)
    store.put_matrix(fingerprint(OPTIONS), keys, vectors, [1.0] * count)
    return keys


def test_snapshot_written_in_pages_is_every_index_row_in_key_order(tmp_path: Path) -> None:
    with Store(tmp_path / "cache", tuning=Tuning(snapshot_page=7)) as store:
        keys = fill(store, 100)
        index = store._index
        index.refresh_snapshot()
        snapshot = index.view()
        rows = index._db.execute(f"SELECT {READ_COLUMNS} FROM entries ORDER BY k").fetchall()
        assert snapshot is not None
        assert np.array_equal(snapshot.columns, np.array(rows, dtype=np.int64).T)
        found = store.read_many(keys, 1)
        assert found.present.all()
        assert found.vectors[:, 0].tolist() == list(range(100))


def test_snapshot_rebuild_memory_does_not_follow_the_index_size(tmp_path: Path) -> None:
    with Store(tmp_path / "cache", tuning=Tuning(snapshot_page=1000)) as store:
        fill(store, 60_000)  # 60,000 rows x 7 columns: 3.4 MB, twice over before
        index = store._index
        tracemalloc.start()
        try:
            index.refresh_snapshot()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        snapshot = index.view()
        assert snapshot is not None
        assert snapshot.columns.shape == (7, 60_000)
    assert peak < 1_500_000


def test_reading_the_input_reports_progress_before_anything_is_sent(
    run: Invoke, tmp_path: Path
) -> None:
    corpus = write_lines(tmp_path / "corpus.txt", [f"t{i % 5}" for i in range(9)])
    result = run("prewarm", str(corpus), "--dry-run", "--window", "3", obj=Pacing(0.0))
    lines = [line for line in result.stderr.splitlines() if "checking the input" in line]
    assert lines == [
        "prewarm (checking the input): 3 texts read, 3 distinct, 3 to fetch",
        "prewarm (checking the input): 6 texts read, 5 distinct, 5 to fetch",
        "prewarm (checking the input): 9 texts read, 5 distinct, 5 to fetch",
    ]


def test_readers_keep_reading_while_the_snapshot_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write = snapshot_module.write_snapshot
    seen: list[bool] = []

    def write_while_reading(path: Path, *args: object) -> None:
        with Store(tmp_path / "cache") as reader:  # another opener of the directory
            found = reader.read_many(keys, 1)
            seen.append(bool(found.present.all()))
            write(path, *args)  # type: ignore[arg-type]
            found = reader.read_many(keys, 1)
            seen.append(bool(found.present.all()))
            assert found.vectors[:, 0].tolist() == list(range(len(keys)))

    with Store(tmp_path / "cache", tuning=Tuning(snapshot_page=5)) as store:
        keys = fill(store, 40)
        store._index.refresh_snapshot()  # the snapshot readers will be using
        monkeypatch.setattr(snapshot_module, "write_snapshot", write_while_reading)
        store._index.refresh_snapshot()
        assert store.read_many(keys, 1).present.all()
    assert seen == [True, True]
