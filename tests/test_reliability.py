"""Nothing is lost, nothing wrong is kept: real processes, real files, the emulator.

The default run kills a few prewarms; ``tox -e stress`` runs many more (marker ``stress``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embedcache.cache_keys import fingerprint, text_keys
from embedcache.models import resolve_options
from embedcache.storage.store import Store
from embedcache.testing import JinaEmulator

from .conftest import API_KEY, wait_until_quiet

OPTIONS = resolve_options("jina-embeddings-v3", "retrieval.passage")


def prewarm_command(cache_dir: Path, url: str, corpus: Path, *extra: str) -> list[str]:
    # Cached as Jina's API's entries, which the checks below (and READER) key them as.
    return [
        sys.executable, "-m", "embedcache", "--cache-dir", str(cache_dir), "--base-url", url,
        "--upstream-as", "https://api.jina.ai", "prewarm", str(corpus), "--json", *extra,
    ]  # fmt: skip


def environment() -> dict[str, str]:
    return {**os.environ, "JINA_API_KEY": API_KEY}


def committed(cache_dir: Path, texts: list[str]) -> set[str]:
    with Store(cache_dir) as store:
        present = store.contains_many(text_keys(fingerprint(OPTIONS), texts))
    return {text for text, ok in zip(texts, present, strict=True) if ok}


def assert_cache_is_exact(cache_dir: Path, emulator: JinaEmulator, texts: list[str]) -> None:
    """verify finds nothing bad, and every stored vector is the emulator's answer, bit for bit."""
    with Store(cache_dir) as store:
        bad = [reason for _, reason in store.records() if isinstance(reason, str)]
        keys = text_keys(fingerprint(OPTIONS), texts)
        found = store.read_many(keys, 1024)
    assert bad == []
    for text, present, vector in zip(texts, found.present, found.vectors, strict=True):
        if present:
            expected = emulator.expected_embedding(text, task="retrieval.passage")
            assert vector.tobytes() == expected.tobytes(), text


def kill_and_resume(
    emulator: JinaEmulator,
    cache_dir: Path,
    corpus: Path,
    texts: list[str],
    after: int,
    *extra: str,
) -> None:
    """Kill a prewarm (``extra`` arguments added) after ``after`` requests and re-run it:
    the re-run sends exactly what the first did not commit, each text once."""
    emulator.reset()
    emulator.latency = 0.03
    process = subprocess.Popen(
        prewarm_command(cache_dir, emulator.url, corpus, "--batch-size", "7",
                        "--max-concurrency", "3", *extra),
        env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while len(emulator.requests) < after and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    wait_until_quiet(emulator)
    assert_cache_is_exact(cache_dir, emulator, texts)
    kept = committed(cache_dir, texts)
    first = emulator.received_texts()
    assert len(first) == len(set(first))  # nothing was sent twice, even across windows

    emulator.reset()
    emulator.latency = 0.0
    resumed = subprocess.run(
        prewarm_command(cache_dir, emulator.url, corpus, *extra), env=environment(),
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert sorted(emulator.received_texts()) == sorted(set(texts) - kept)
    assert json.loads(resumed.stdout)["fetched"] == len(set(texts) - kept)
    assert committed(cache_dir, texts) == set(texts)
    assert_cache_is_exact(cache_dir, emulator, texts)


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, list[str]]:
    texts = [f"reliability text {i} " + "word " * (i % 17) for i in range(150)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path, [t.rstrip("\n") for t in texts]


@pytest.mark.parametrize("after", [1, 4, 12])
def test_sigkill_during_prewarm_loses_only_in_flight_batches(
    emulator: JinaEmulator, cache_dir: Path, corpus: tuple[Path, list[str]], after: int
) -> None:
    kill_and_resume(emulator, cache_dir, corpus[0], corpus[1], after)


@pytest.mark.parametrize("after", [3, 9])
def test_sigkill_during_a_multi_window_prewarm_resends_exactly_the_missing_texts(
    emulator: JinaEmulator, cache_dir: Path, tmp_path: Path, after: int
) -> None:
    # Windows of 20 texts; a third of the lines repeat texts of earlier windows.
    texts = [f"windowed text {i} " + "word " * (i % 11) for i in range(120)]
    lines = [texts[i] if i % 3 else texts[i // 2] for i in range(len(texts))]
    path = tmp_path / "windowed.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    kill_and_resume(emulator, cache_dir, path, lines, after, "--window", "20")


@pytest.mark.stress
@pytest.mark.parametrize("trial", range(24))
def test_sigkill_at_random_points(
    emulator: JinaEmulator, cache_dir: Path, corpus: tuple[Path, list[str]], trial: int
) -> None:
    kill_and_resume(emulator, cache_dir, corpus[0], corpus[1], random.Random(trial).randint(1, 20))


READER = """
import sys, time
from embedcache import Store
from embedcache.cache_keys import fingerprint, text_keys
from embedcache.models import resolve_options
keys = text_keys(fingerprint(resolve_options("jina-embeddings-v3", "retrieval.passage")),
                 open(sys.argv[2], encoding="utf-8").read().split("\\n"))
reads = 0
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    with Store(sys.argv[1]) as store:
        found = store.read_many(keys, 1024)
        # A vector that is present must be whole: the checksum was verified on read.
        assert found.present.sum() == 0 or found.vectors[found.present].any(axis=1).all()
    reads += 1
print(reads)
"""


def test_concurrent_writers_and_readers_share_one_cache(
    emulator: JinaEmulator, cache_dir: Path, tmp_path: Path
) -> None:
    texts = [f"shared text {i}" for i in range(400)]
    corpora = []
    for worker in range(4):  # overlapping quarters: each text is wanted by two writers
        mine = texts[worker * 100 : worker * 100 + 200] + texts[: 100 * ((worker + 2) // 4)]
        path = tmp_path / f"corpus-{worker}.txt"
        path.write_text("\n".join(mine), encoding="utf-8")
        corpora.append(path)
    everything = tmp_path / "all.txt"
    everything.write_text("\n".join(texts), encoding="utf-8")
    Store(cache_dir).close()
    emulator.latency = 0.01
    readers = [
        subprocess.Popen([sys.executable, "-c", READER, str(cache_dir), str(everything), "3"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    writers = [
        subprocess.Popen(prewarm_command(cache_dir, emulator.url, path, "--batch-size", "10"),
                         env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for path in corpora
    ]  # fmt: skip
    for process in writers:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    for process in readers:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert int(out) > 0  # it read while the writers wrote
    assert committed(cache_dir, texts) == set(texts)
    assert_cache_is_exact(cache_dir, emulator, texts)
    sent = emulator.received_texts()
    # Writers racing for the same text wait for each other's claims (storage/claims.py):
    # nothing fails here, so every text is fetched exactly once.
    assert sorted(sent) == sorted(texts)


def test_damaged_index_database_is_a_clear_one_line_error(
    emulator: JinaEmulator, cache_dir: Path, corpus: tuple[Path, list[str]]
) -> None:
    subprocess.run(prewarm_command(cache_dir, emulator.url, corpus[0]), env=environment(),
                   capture_output=True, check=True)  # fmt: skip
    with open(cache_dir / "index.db", "r+b") as handle:
        handle.write(b"\x00not sqlite\x00" * 400)
    result = subprocess.run(
        [sys.executable, "-m", "embedcache", "--cache-dir", str(cache_dir), "stats"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "CacheError" in result.stderr
    assert "index is damaged: delete the directory" in result.stderr


def test_full_disk_stops_with_a_cache_error_and_keeps_committed_batches(
    emulator: JinaEmulator, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from embedcache import JinaClient
    from embedcache.assembly import build_embedder
    from embedcache.errors import CacheError
    from embedcache.storage.segments import Segments

    texts = [f"disk text {i}" for i in range(20)]
    real_write = Segments.write
    calls = {"n": 0}

    def write(self: Segments, *args: object, **kwargs: object) -> None:
        # A mock only where the emulator cannot help: the disk filling up on the 3rd batch.
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Segments, "write", write)
    client = JinaClient(API_KEY, base_url=emulator.url)
    with Store(cache_dir) as store:
        embedder = build_embedder(store, client, batch_size=5, max_concurrency=1)
        with pytest.raises(CacheError, match="No space left on device"):
            embedder.embed(texts, OPTIONS)
        embedder.close()
    monkeypatch.setattr(Segments, "write", real_write)
    assert committed(cache_dir, texts) == set(texts[:10])
    assert_cache_is_exact(cache_dir, emulator, texts)
    emulator.reset()
    with Store(cache_dir) as store:
        build_embedder(store, client, batch_size=5).embed(texts, OPTIONS)
    client.close()
    assert sorted(emulator.received_texts()) == sorted(texts[10:])


def test_read_only_cache_serves_hits_and_refuses_misses_before_sending(
    emulator: JinaEmulator, cache_dir: Path, corpus: tuple[Path, list[str]], tmp_path: Path
) -> None:
    import shlex
    import shutil

    subprocess.run(prewarm_command(cache_dir, emulator.url, corpus[0]), env=environment(),
                   capture_output=True, check=True)  # fmt: skip
    mount = tmp_path / "read-only"
    mount.mkdir()
    setup = (
        f"mount --bind {shlex.quote(str(cache_dir))} {shlex.quote(str(mount))} && "
        f"mount -o remount,bind,ro {shlex.quote(str(mount))}"
    )
    probe = None
    if shutil.which("unshare"):
        check = f"{setup} && ! touch {shlex.quote(str(mount))}/x"
        probe = subprocess.run(["unshare", "-m", "sh", "-c", check], capture_output=True)
    if probe is None or probe.returncode != 0:
        pytest.skip("a read-only bind mount needs root and unshare (util-linux)")

    def on_read_only_mount(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "embedcache", "--cache-dir", str(mount),
                   "--base-url", emulator.url, "--upstream-as", "https://api.jina.ai",
                   *args]  # fmt: skip
        script = f"{setup} && exec {shlex.join(command)}"
        return subprocess.run(["unshare", "-m", "sh", "-c", script], env=environment(),
                              capture_output=True, text=True, check=False)  # fmt: skip

    emulator.reset()
    hit = on_read_only_mount("get", corpus[1][3], "--offline")
    assert hit.returncode == 0, hit.stderr
    expected = emulator.expected_embedding(corpus[1][3], task="retrieval.passage")
    assert json.loads(hit.stdout)["embedding"] == expected.tolist()
    miss = on_read_only_mount("get", "never cached")
    assert miss.returncode == 1
    assert "not cached, and the cache at" in miss.stderr
    assert "is read-only" in miss.stderr
    assert miss.stderr.count("\n") == 1
    assert on_read_only_mount("stats").returncode == 0
    assert emulator.requests == []
