"""Processes sharing a cache directory send at most one upstream request per entry at a time.

Each test runs real processes (:mod:`tests.claimers`) on one cache directory against one
emulator. Their upstream is gated: a batch is held at the gate until the test says go, so
the order of claims and fetches is the test's, not the scheduler's.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from embedcache import JinaClient, RequestOptions, Store
from embedcache.assembly import build_embedder
from embedcache.cache_keys import fingerprint, text_keys
from embedcache.errors import CacheError
from embedcache.storage.claims import CLAIMS_DB, CLAIMS_LOCK
from embedcache.testing import JinaEmulator

from .claimers import EMBED, Worker
from .conftest import wait_for
from .test_coalescing import Gated

OPTIONS = RequestOptions("jina-embeddings-v3", task="retrieval.passage")
TEXTS = [f"claimed text {i}" for i in range(16)]


def embedding(
    workers: list[Worker], cache_dir: Path, emulator: JinaEmulator, texts: list[str], out: Path
) -> Worker:
    config = {"cache_dir": str(cache_dir), "url": emulator.url, "texts": texts, "out": str(out)}
    worker = Worker(EMBED, json.dumps(config))
    workers.append(worker)
    return worker


def sent(emulator: JinaEmulator) -> list[str]:
    return sorted(text for r in emulator.requests if r.body for text in r.body["input"])


def expected(emulator: JinaEmulator, texts: list[str]) -> np.ndarray:
    return np.stack([emulator.expected_embedding(t, task="retrieval.passage") for t in texts])


def test_processes_wanting_the_same_texts_fetch_each_text_once(
    emulator: JinaEmulator, cache_dir: Path, tmp_path: Path, workers: list[Worker]
) -> None:
    wanted = []
    for i in range(4):  # each text is wanted by three processes, in different orders
        mine = [t for j, t in enumerate(TEXTS) if j % 4 != i]
        wanted.append(mine[i * 3 :] + mine[: i * 3])
    started = [
        embedding(workers, cache_dir, emulator, texts, tmp_path / f"out-{i}.npy")
        for i, texts in enumerate(wanted)
    ]
    # Nothing is let through the gates until every process has looked up and claimed (it
    # holds a batch at its gate or waits for others'), so no process can find a text stored
    # by luck of timing: without claims across processes each would send all 12 of its
    # misses, and the emulator would see every text three times.
    for worker in started:
        worker.expect("sending", "waiting")
    for worker in started:
        worker.send("go")
    stats = [json.loads(worker.expect("done")[1]) for worker in started]
    for worker in started:
        worker.finish()
    assert sent(emulator) == sorted(TEXTS)
    assert sum(s["misses"] for s in stats) == len(TEXTS)
    assert sum(s["coalesced"] for s in stats) == 3 * len(TEXTS) - len(TEXTS)
    for i, texts in enumerate(wanted):
        vectors = np.load(tmp_path / f"out-{i}.npy")
        assert vectors.tobytes() == expected(emulator, texts).tobytes()


def test_a_process_killed_holding_a_claim_leaves_the_fetch_to_the_others(
    emulator: JinaEmulator,
    cache_dir: Path,
    tmp_path: Path,
    client: JinaClient,
    workers: list[Worker],
) -> None:
    holder = embedding(workers, cache_dir, emulator, TEXTS[:4], tmp_path / "never.npy")
    holder.expect("sending")
    with Store(cache_dir) as store, ThreadPoolExecutor(1) as pool:
        embedder = build_embedder(store, client)
        result = pool.submit(embedder.embed_detailed, TEXTS[:4], OPTIONS)
        wait_for(lambda: embedder.waiting == 1)
        holder.kill()  # its claim ends with it, mid-fetch: nothing of it was ever sent
        got = result.result(30)
        embedder.close()
    assert got is not None
    assert sent(emulator) == sorted(TEXTS[:4])
    assert (got.stats.misses, got.stats.requests, got.stats.coalesced) == (4, 1, 0)
    assert got.vectors.tobytes() == expected(emulator, TEXTS[:4]).tobytes()


def test_a_key_whose_claim_points_at_an_unrelated_fetch_only_waits_for_it(
    emulator: JinaEmulator,
    cache_dir: Path,
    tmp_path: Path,
    client: JinaClient,
    workers: list[Worker],
) -> None:
    # The claims' collision: a row a dead process left for "other", whose byte a live fetch
    # of different texts now holds. It costs a wait for that fetch, then "other" is fetched.
    holder = embedding(workers, cache_dir, emulator, TEXTS[:2], tmp_path / "held.npy")
    holder.expect("sending")
    other = text_keys(fingerprint(OPTIONS), ["other"])[0]
    import sqlite3

    with sqlite3.connect(cache_dir / CLAIMS_DB) as db:
        (byte,) = db.execute("SELECT DISTINCT byte FROM claims").fetchone()
        db.execute("INSERT INTO claims (k, byte) VALUES (?, ?)", (other, byte))
    db.close()
    with Store(cache_dir) as store, ThreadPoolExecutor(1) as pool:
        embedder = build_embedder(store, client)
        result = pool.submit(embedder.embed_detailed, ["other"], OPTIONS)
        wait_for(lambda: embedder.waiting == 1)
        holder.send("go")
        got = result.result(30)
        holder.expect("done")
        holder.finish()
        embedder.close()
    assert got is not None
    assert sent(emulator) == sorted([*TEXTS[:2], "other"])
    assert got.vectors.tobytes() == expected(emulator, ["other"]).tobytes()
    assert (got.stats.misses, got.stats.requests) == (1, 1)


def test_threads_of_one_process_and_another_process_share_one_fetch(
    emulator: JinaEmulator,
    cache_dir: Path,
    tmp_path: Path,
    client: JinaClient,
    workers: list[Worker],
) -> None:
    with Store(cache_dir) as store, ThreadPoolExecutor(2) as pool:
        embedder = build_embedder(store, client)
        leader = Gated(client)
        first = pool.submit(embedder.embed_detailed, TEXTS[:3], OPTIONS, upstream=leader)
        assert leader.entered.wait(10)
        other = embedding(workers, cache_dir, emulator, TEXTS[:3][::-1], tmp_path / "o.npy")
        other.expect("waiting")  # on this process's claim
        second = pool.submit(embedder.embed_detailed, TEXTS[:3], OPTIONS)
        wait_for(lambda: embedder.waiting == 1)  # on the leader thread's claim
        leader.go.set()
        a, b = first.result(30), second.result(30)
        theirs = json.loads(other.expect("done")[1])
        other.finish()
        embedder.close()
    assert a is not None
    assert b is not None
    assert len(emulator.requests) == 1
    assert (a.stats.requests, b.stats.coalesced, theirs["coalesced"]) == (1, 3, 3)
    assert theirs["requests"] == 0
    assert a.vectors.tobytes() == b.vectors.tobytes() == expected(emulator, TEXTS[:3]).tobytes()
    assert np.load(tmp_path / "o.npy").tobytes() == a.vectors[::-1].tobytes()


def test_two_threads_wait_on_one_fetch_of_another_process(
    emulator: JinaEmulator,
    cache_dir: Path,
    tmp_path: Path,
    client: JinaClient,
    workers: list[Worker],
) -> None:
    holder = embedding(workers, cache_dir, emulator, TEXTS[:3], tmp_path / "h.npy")
    holder.expect("sending")
    with Store(cache_dir) as store, ThreadPoolExecutor(2) as pool:
        embedder = build_embedder(store, client)
        calls = [pool.submit(embedder.embed_detailed, TEXTS[:3], OPTIONS) for _ in range(2)]
        wait_for(lambda: embedder.waiting == 2)  # both on the same byte of the other process
        holder.send("go")
        results = [call.result(30) for call in calls]
        holder.expect("done")
        holder.finish()
        embedder.close()
    assert len(emulator.requests) == 1
    for got in results:
        assert got is not None
        assert (got.stats.coalesced, got.stats.requests) == (3, 0)
        assert got.vectors.tobytes() == expected(emulator, TEXTS[:3]).tobytes()


def test_a_fetch_stored_between_looking_and_claiming_is_not_paid_again(
    emulator: JinaEmulator, cache_dir: Path, client: JinaClient
) -> None:
    # Another user of the directory (a second store, as another process would be) fetches,
    # commits and releases in the gap between this call's look-up and its claim.
    with Store(cache_dir) as store, Store(cache_dir) as elsewhere:
        embedder = build_embedder(store, client)
        inflight = embedder._fetcher.inflight
        assert inflight is not None
        real_claim = inflight.claim

        def claim_after_another_fetch(keys: list[bytes]) -> object:
            build_embedder(elsewhere, client).embed(TEXTS[:3], OPTIONS)
            return real_claim(keys)

        inflight.claim = claim_after_another_fetch  # type: ignore[assignment,method-assign]
        got = embedder.embed_detailed(TEXTS[:3], OPTIONS)
    assert got is not None
    assert len(emulator.requests) == 1  # the other's: this call found them under its claim
    assert (got.stats.misses, got.stats.hits, got.stats.requests) == (0, 3, 0)
    assert got.vectors.tobytes() == expected(emulator, TEXTS[:3]).tobytes()


def test_without_coalescing_no_claims_are_taken_or_waited_for(
    emulator: JinaEmulator,
    cache_dir: Path,
    tmp_path: Path,
    client: JinaClient,
    workers: list[Worker],
) -> None:
    fresh = tmp_path / "fresh"
    with Store(fresh) as store:
        build_embedder(store, client, coalesce=False).embed(TEXTS[:2], OPTIONS)
    assert not (fresh / CLAIMS_DB).exists()
    assert not (fresh / CLAIMS_LOCK).exists()

    emulator.reset()
    holder = embedding(workers, cache_dir, emulator, TEXTS[:2], tmp_path / "h.npy")
    holder.expect("sending")
    with Store(cache_dir) as store, ThreadPoolExecutor(1) as pool:
        embedder = build_embedder(store, client, coalesce=False)
        # Were it to wait for the held claim, this would time out: the holder's gate opens
        # only after it has returned.
        got = pool.submit(embedder.embed_detailed, TEXTS[:2], OPTIONS).result(30)
        embedder.close()
    holder.send("go")
    holder.expect("done")
    holder.finish()
    assert got is not None
    assert got.stats.requests == 1
    assert sent(emulator) == sorted(TEXTS[:2] * 2)


def test_a_read_only_cache_takes_no_claims(
    emulator: JinaEmulator, cache_dir: Path, client: JinaClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    Store(cache_dir).close()  # a cache made earlier, then mounted read-only
    # Stands in for a read-only mount (root, which runs these tests, ignores file modes).
    monkeypatch.setattr("embedcache.storage.store.os.access", lambda *args: False)
    with Store(cache_dir) as store:
        assert store.read_only
        assert store.claims is None
        with pytest.raises(CacheError, match="read-only"):
            build_embedder(store, client).embed(TEXTS[:2], OPTIONS)
    assert emulator.requests == []
    assert not (cache_dir / CLAIMS_DB).exists()
