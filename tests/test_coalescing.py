"""Concurrent calls that miss the same entries send one upstream request for them."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest
from numpy.typing import NDArray

from embedcache import CachedEmbedder, JinaClient, RequestOptions, Store, UpstreamResult
from embedcache.assembly import build_embedder
from embedcache.embedding.batches import Miss
from embedcache.embedding.coalescing import Elsewhere, FetchClaims, Inflight
from embedcache.embedding.embedder import Embedded
from embedcache.errors import AuthenticationError
from embedcache.inputs import Input
from embedcache.testing import JinaEmulator

from .conftest import wait_for

OPTIONS = RequestOptions("jina-embeddings-v3", task="retrieval.passage")
TEXTS = ["alpha", "beta", "gamma"]


class Gated:
    """An upstream that holds each request until the test lets it go."""

    def __init__(self, inner: JinaClient | None, error: Exception | None = None) -> None:
        self.inner = inner
        self.error = error
        self.entered = threading.Event()
        self.go = threading.Event()
        self.calls: list[list[Input]] = []

    def embed(self, texts: Sequence[Input], options: RequestOptions) -> UpstreamResult:
        self.calls.append(list(texts))
        self.entered.set()
        assert self.go.wait(10)
        if self.error is not None:
            raise self.error
        assert self.inner is not None
        return self.inner.embed(texts, options)


def embed_in_thread(
    pool: ThreadPoolExecutor, embedder: CachedEmbedder, texts: list[str], upstream: object
) -> Future[Embedded | None]:
    return pool.submit(embedder.embed_detailed, texts, OPTIONS, upstream=upstream)  # type: ignore[arg-type]


def test_concurrent_identical_calls_send_one_request(
    store: Store, client: JinaClient, emulator: JinaEmulator
) -> None:
    leader, follower = Gated(client), Gated(client)
    embedder = build_embedder(store, client)
    with ThreadPoolExecutor(2) as pool:
        first = embed_in_thread(pool, embedder, TEXTS, leader)
        assert leader.entered.wait(10)
        second = embed_in_thread(pool, embedder, TEXTS[::-1], follower)
        wait_for(lambda: embedder.waiting == 1)
        leader.go.set()
        a, b = first.result(10), second.result(10)
    assert a is not None
    assert b is not None
    assert follower.calls == []
    assert len(emulator.requests) == 1
    assert a.vectors.tobytes() == b.vectors[::-1].tobytes()
    assert (a.stats.misses, a.stats.coalesced, a.stats.requests) == (3, 0, 1)
    assert (b.stats.misses, b.stats.coalesced, b.stats.requests) == (0, 3, 0)
    assert b.stats.tokens_spent == 0
    assert embedder.stats.coalesced == 3


def test_overlapping_calls_fetch_only_what_nobody_else_is_fetching(
    store: Store, client: JinaClient, emulator: JinaEmulator
) -> None:
    leader, follower = Gated(client), Gated(client)
    follower.go.set()
    embedder = build_embedder(store, client)
    with ThreadPoolExecutor(2) as pool:
        first = embed_in_thread(pool, embedder, ["alpha", "beta"], leader)
        assert leader.entered.wait(10)
        second = embed_in_thread(pool, embedder, ["beta", "delta"], follower)
        wait_for(lambda: embedder.waiting == 1)
        leader.go.set()
        b = second.result(10)
        first.result(10)
    assert follower.calls == [["delta"]]
    assert b is not None
    assert (b.stats.misses, b.stats.coalesced) == (1, 1)
    assert sorted(r.inputs for r in emulator.requests) == [1, 2]


def test_a_failed_leader_leaves_each_waiter_to_fetch_with_its_own_upstream(
    store: Store, client: JinaClient, emulator: JinaEmulator
) -> None:
    refused = AuthenticationError("HTTP 401: invalid key", status=401)
    leader, follower = Gated(None, error=refused), Gated(client)
    follower.go.set()
    embedder = build_embedder(store, client)
    with ThreadPoolExecutor(2) as pool:
        first = embed_in_thread(pool, embedder, TEXTS, leader)
        assert leader.entered.wait(10)
        second = embed_in_thread(pool, embedder, TEXTS, follower)
        wait_for(lambda: embedder.waiting == 1)
        leader.go.set()
        with pytest.raises(AuthenticationError):
            first.result(10)
        b = second.result(10)
    assert b is not None
    assert b.stats.requests == 1
    assert b.stats.coalesced == 0
    assert follower.calls == [TEXTS]
    assert embedder.waiting == 0


def test_coalescing_can_be_turned_off(store: Store, client: JinaClient) -> None:
    leader, follower = Gated(client), Gated(client)
    follower.go.set()
    embedder = build_embedder(store, client, coalesce=False)
    with ThreadPoolExecutor(2) as pool:
        first = embed_in_thread(pool, embedder, TEXTS, leader)
        assert leader.entered.wait(10)
        second = embed_in_thread(pool, embedder, TEXTS, follower)
        assert second.result(10) is not None
        leader.go.set()
        first.result(10)
    assert follower.calls == [TEXTS]


def test_a_released_claim_wakes_waiters_and_frees_its_keys() -> None:
    inflight = Inflight()
    claim, owned, held = inflight.claim([b"a", b"b"])
    assert (owned, held, len(inflight)) == ([0, 1], Elsewhere(), 2)
    other, owned2, held2 = inflight.claim([b"b", b"c"])
    assert owned2 == [1]
    assert (len(held2.events), held2.other_bytes) == (1, [])
    assert not held2.events[0].is_set()
    claim.release()
    claim.release()  # idempotent
    assert held2.events[0].is_set()
    assert len(inflight) == 1  # only "c", still held by the second claim
    other.release()
    assert len(inflight) == 0


def misses(*keys: bytes) -> list[Miss]:
    return [Miss(key, key.decode(), i, i) for i, key in enumerate(keys)]


def test_a_fetch_claim_packed_into_two_requests_ends_once_both_are_sent() -> None:
    inflight = Inflight()
    fetch = FetchClaims(inflight)
    chunk = misses(b"a", b"b", b"c")
    assert fetch.take(chunk, lambda owned: owned) == chunk
    _, _, held = inflight.claim([b"a"])
    assert len(held.events) == 1
    fetch.sent(chunk[:2])  # the first request: "c" is still to be sent under the claim
    assert not held.events[0].is_set()
    assert len(inflight) == 3  # a claim ends whole
    fetch.sent(chunk[2:])
    assert held.events[0].is_set()
    assert len(inflight) == 0


def test_entries_found_stored_under_the_claim_stay_claimed_until_the_rest_is_sent() -> None:
    inflight = Inflight()
    fetch = FetchClaims(inflight)
    chunk = misses(b"a", b"b")
    sending = fetch.take(chunk, lambda owned: owned[1:])  # "a" was stored meanwhile
    assert sending == chunk[1:]
    assert len(inflight) == 2
    fetch.sent(sending)
    assert len(inflight) == 0


def test_a_chunk_with_nothing_left_to_send_holds_no_claim() -> None:
    inflight = Inflight()
    fetch = FetchClaims(inflight)
    assert fetch.take(misses(b"a", b"b"), lambda owned: []) == []
    assert len(inflight) == 0


def test_what_others_hold_is_set_aside_and_waited_for_after_the_fetchs_own_claims_end() -> None:
    inflight = Inflight()
    other, _, _ = inflight.claim([b"b"])
    fetch = FetchClaims(inflight)
    chunk = misses(b"a", b"b")
    assert fetch.take(chunk, lambda owned: owned) == chunk[:1]
    assert fetch.left_to_others
    looked_at: list[list[Miss]] = []
    waited = threading.Event()

    def wait() -> None:
        looked_at.append(fetch.wait_for_others())
        waited.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_for(lambda: inflight.waiting == 1)
    assert len(inflight) == 1  # the fetch's own claim on "a" ended before it waited
    assert not waited.is_set()
    other.release()
    waiter.join(10)
    assert looked_at == [chunk[1:]]
    assert not fetch.left_to_others


def test_a_late_chunking_group_partly_held_elsewhere_is_not_claimed_at_all() -> None:
    inflight = Inflight()
    other, _, _ = inflight.claim([b"b"])
    fetch = FetchClaims(inflight, whole=True)
    chunk = misses(b"a", b"b", b"c")
    assert fetch.take(chunk, lambda owned: owned) == []
    assert len(inflight) == 1  # only the other's claim
    assert fetch.left_to_others
    other.release()
    assert fetch.wait_for_others() == chunk


def test_a_failed_look_under_the_claim_ends_the_claim() -> None:
    inflight = Inflight()
    fetch = FetchClaims(inflight)

    def failing(owned: list[Miss]) -> list[Miss]:
        raise OSError("the store could not be read")

    with pytest.raises(OSError, match="could not be read"):
        fetch.take(misses(b"a"), failing)
    assert len(inflight) == 0


def test_cached_only_returns_none_without_counting_when_anything_is_missing(
    store: Store, client: JinaClient, emulator: JinaEmulator
) -> None:
    embedder = build_embedder(store, client)
    embedder.embed(TEXTS[:2], OPTIONS)
    assert embedder.embed_detailed(TEXTS, OPTIONS, cached_only=True) is None
    hit = embedder.embed_detailed(TEXTS[:2], OPTIONS, cached_only=True)
    assert hit is not None
    assert hit.stats.hits == 2
    assert embedder.stats.hits == 2
    assert len(emulator.requests) == 1
    vectors: NDArray[np.float32] = hit.vectors
    assert vectors.shape == (2, 1024)
