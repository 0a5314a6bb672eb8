"""Processes filling overlapping corpora into one directory keep their requests full.

Real processes (:mod:`tests.claimers`) on one cache directory against one emulator: each
request is packed, when a slot frees, from what is still missing, so sharing a directory
saves requests as well as texts.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from embedcache import JinaClient, RequestOptions, UpstreamResult
from embedcache.assembly import build_embedder
from embedcache.cache_keys import fingerprint, text_keys
from embedcache.inputs import Input
from embedcache.models import resolve_options
from embedcache.storage.store import Store
from embedcache.testing import JinaEmulator
from embedcache.tokens import estimate_tokens

from .claimers import FILL, Worker
from .conftest import wait_for

OPTIONS = resolve_options("jina-embeddings-v3", "retrieval.passage")
PROCESSES = 4
BATCH_SIZE = 50
CONCURRENCY = 4


def overlapping_corpora(seed: int) -> list[list[str]]:
    """Each process wants a random half of 2,000 texts, in its own random order."""
    texts = [f"shared fill text {i} " + "word " * (i % 13) for i in range(2000)]
    rng = random.Random(seed)
    return [rng.sample(texts, 1000) for _ in range(PROCESSES)]


def test_processes_sharing_a_directory_send_full_requests_of_what_is_still_missing(
    emulator: JinaEmulator, cache_dir: Path, workers: list[Worker]
) -> None:
    corpora = overlapping_corpora(seed=17)
    distinct = set().union(*corpora)
    Store(cache_dir).close()
    emulator.latency = 0.02  # so the four fills overlap for their whole length
    for texts in corpora:
        config = {
            "cache_dir": str(cache_dir), "url": emulator.url, "texts": texts,
            "batch_size": BATCH_SIZE, "max_concurrency": CONCURRENCY,
        }  # fmt: skip
        workers.append(Worker(FILL, json.dumps(config)))
    for worker in workers:
        worker.expect("ready")
    for worker in workers:
        worker.send("go")
    stats = [json.loads(worker.expect("done", limit=60)[1]) for worker in workers]
    for worker in workers:
        worker.finish()

    with Store(cache_dir) as store:
        assert all(store.contains_many(text_keys(fingerprint(OPTIONS), sorted(distinct))))
    sent = emulator.received_texts()
    requests = len(emulator.requests)
    assert set(sent) == distinct
    assert sum(s["requests"] for s in stats) == requests
    # Sharing saves texts: each is fetched about once, not once per process that wants it.
    assert len(sent) / len(distinct) <= 1.3
    # And requests: each is full but for the last one of each process's slots.
    assert requests <= len(sent) / BATCH_SIZE + PROCESSES * CONCURRENCY, (
        f"{requests} requests for {len(sent)} texts ({len(distinct)} distinct), "
        f"{len(sent) / requests:.1f} texts per request"
    )


class HoldSecond:
    """An upstream that lets its first request through and holds the second until told."""

    def __init__(self, inner: JinaClient) -> None:
        self.inner = inner
        self.calls: list[list[Input]] = []
        self.second = threading.Event()
        self.go = threading.Event()

    def embed(self, texts: Sequence[Input], options: RequestOptions) -> UpstreamResult:
        self.calls.append(list(texts))
        if len(self.calls) == 2:
            self.second.set()
            assert self.go.wait(10)
        return self.inner.embed(texts, options)


def test_entries_claimed_in_one_chunk_stay_claimed_until_the_request_sending_them_is_done(
    cache_dir: Path, client: JinaClient
) -> None:
    # Two texts fit a request's token budget, so the four claimed in one chunk go out in
    # two requests: the second request's entries must not be left unclaimed when the
    # first is committed, or another caller would pay for them too.
    texts = [f"chunked {i} " + "word " * 20 for i in range(4)]
    budget = 2 * estimate_tokens(texts[0])
    with Store(cache_dir) as store:
        embedder = build_embedder(store, client, max_batch_tokens=budget, max_concurrency=1)
        first, other = HoldSecond(client), HoldSecond(client)
        with ThreadPoolExecutor(2) as pool:
            filling = pool.submit(embedder.embed_detailed, texts, OPTIONS, upstream=first)
            assert first.second.wait(10)
            wanting = pool.submit(embedder.embed_detailed, texts[3:], OPTIONS, upstream=other)
            wait_for(lambda: embedder.waiting == 1)
            first.go.set()
            filled, waited = filling.result(10), wanting.result(10)
        embedder.close()
    assert first.calls == [texts[:2], texts[2:]]
    assert other.calls == []
    assert filled is not None
    assert waited is not None
    assert (waited.stats.coalesced, waited.stats.requests) == (1, 0)
    assert waited.vectors.tobytes() == filled.vectors[3:].tobytes()


def test_a_failure_looking_up_a_chunk_keeps_what_is_in_flight_and_holds_no_claim(
    cache_dir: Path, client: JinaClient, emulator: JinaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [f"looked up {i}" for i in range(6)]
    with Store(cache_dir) as store:
        embedder = build_embedder(store, client, batch_size=2, max_concurrency=2)
        tiers = embedder._tiers
        read, reads = tiers.read, []

        def failing_third(*args: object, **kwargs: object) -> object:
            reads.append(args)
            if len(reads) == 3:  # the call's lookup, the first chunk's, then the second's
                raise OSError("the store could not be read")
            return read(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(tiers, "read", failing_third)
        with pytest.raises(OSError, match="could not be read"):
            embedder.embed(texts, OPTIONS)
        assert sorted(emulator.received_texts()) == texts[:2]  # in flight: committed
        # A claim left held by the failed lookup would keep the next call waiting forever.
        assert embedder._fetcher.inflight is not None
        assert len(embedder._fetcher.inflight) == 0
        monkeypatch.setattr(tiers, "read", read)
        again = embedder.embed_detailed(texts, OPTIONS)
        embedder.close()
    assert again is not None
    assert (again.stats.hits, again.stats.misses, again.stats.coalesced) == (2, 4, 0)
    assert sorted(emulator.received_texts()) == sorted(texts)
