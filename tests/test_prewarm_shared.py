"""What a prewarm reports and counts when it shares its cache directory or is cut short.

Real ``embedcache prewarm`` processes against the emulator: its gates hold requests in
flight, so the tests know (rather than hope) that two runs overlap, or that a run is
interrupted with work still planned.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from embedcache.testing import Fault, JinaEmulator

from .cli_helpers import as_json, invoke
from .conftest import API_KEY, wait_until_quiet

TEXTS = [f"shared prewarm text {i} " + "word " * (i % 7) for i in range(120)]
BATCH = 10


def start_prewarm(emulator: JinaEmulator, cache_dir: Path, corpus: Path) -> subprocess.Popen[str]:
    """``embedcache prewarm CORPUS --json`` in a process of its own, one request at a time
    (so a held request stops that run from sending another)."""
    args = ["--cache-dir", str(cache_dir), "--base-url", emulator.url, "prewarm", str(corpus)]
    args += ["--batch-size", str(BATCH), "--max-concurrency", "1", "--json"]
    return subprocess.Popen(
        [sys.executable, "-m", "embedcache", *args],
        env={**os.environ, "JINA_API_KEY": API_KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_prewarms_sharing_a_directory_each_report_what_they_fetched_and_what_the_other_did(
    emulator: JinaEmulator, cache_dir: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    with emulator.hold(times=2) as gate:
        runs = [start_prewarm(emulator, cache_dir, corpus) for _ in range(2)]
        # Each run sends one request at a time: two held requests are one from each, so
        # both have planned the whole corpus as missing before either stores anything.
        assert gate.arrived(2)
    reports = []
    for run in runs:
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        reports.append(json.loads(out))

    sent = emulator.received_texts()
    assert sorted(sent) == sorted(TEXTS)  # each text paid for once, by one of the two
    for report in reports:
        assert report["to_fetch"] == len(TEXTS)
        assert 0 < report["fetched"] < len(TEXTS)
        # What this run did not fetch, the other stored while it ran.
        assert report["fetched"] + report["filled_elsewhere"] == len(TEXTS)
    assert sum(r["fetched"] for r in reports) == len(TEXTS)
    assert sum(r["requests"] for r in reports) == len(emulator.requests)
    assert sum(r["tokens_spent"] for r in reports) == sum(r.tokens for r in emulator.requests)
    lifetime = as_json(invoke("stats", "--json", cache_dir=cache_dir))["lifetime"]
    assert lifetime["misses"] == len(TEXTS)


def test_an_interrupted_prewarm_counts_as_misses_only_what_it_fetched(
    emulator: JinaEmulator, cache_dir: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    emulator.inject(Fault(times=2))  # the first two requests are answered as usual
    with emulator.hold() as gate:  # the third is held: the run is stopped waiting for it
        run = start_prewarm(emulator, cache_dir, corpus)
        assert gate.arrived(1)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    wait_until_quiet(emulator)

    stats = as_json(invoke("stats", "--json", cache_dir=cache_dir))
    assert stats["entries"] == 2 * BATCH
    # Planned were 120; sent and answered, 20: the lifetime counters hold what happened.
    assert stats["lifetime"]["misses"] == 2 * BATCH
    assert stats["lifetime"]["requests"] == 2
    assert f"this run committed {2 * BATCH} texts" in err
