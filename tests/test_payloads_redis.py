"""Multi-vector and binary entries in the shared tier: stored exactly, read by
``read_payloads``, copied down by the write-back, synced both ways and verified."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import redis

from embedcache.maintenance import sharing
from embedcache.storage.shared import RedisStore
from embedcache.storage.store import Store
from embedcache.storage.tiers import Tiers
from embedcache.storage.writeback import WriteBack

from .redis_server import RedisServer
from .test_payloads import FP, all_same, payloads
from .test_payloads import put_all as put_on_disk


def keys_for(tag: str, count: int) -> list[bytes]:
    return [bytes([i]) + tag.encode().ljust(15, b"-") for i in range(count)]


def in_redis(
    url: str, tag: str, seed: int, tokens: float = 1.0, *, strict: bool = False
) -> tuple[RedisStore, list[bytes], list[np.ndarray]]:
    """A shared tier holding one entry of each kind (:func:`payloads`)."""
    arrays = payloads(seed)
    keys = keys_for(tag, len(arrays))
    shared = RedisStore(url, strict=strict)
    shared.put_many(FP, [(k, a, tokens) for k, a in zip(keys, arrays, strict=True)])
    return shared, keys, arrays


def test_each_kind_reads_back_from_redis_bit_for_bit_and_a_read_of_vectors_skips_it(
    redis_server: RedisServer,
) -> None:
    shared, keys, arrays = in_redis(redis_server.url, "r", 0, 2.5, strict=True)
    found = shared.read_payloads([*keys, b"\0" * 16])
    assert all_same(found.payloads[:-1], arrays)
    assert found.payloads[-1] is None
    assert found.tokens.tolist() == [2.5] * len(arrays) + [0.0]
    # A payload is never a vector of some dimension: no read of vectors takes it.
    vectors = shared.read_many(keys, 128)
    assert vectors.present.tolist() == [False] * len(arrays)
    assert shared.read_many(keys[-1:], 2048).present.tolist() == [True]
    shared.close()


def test_what_redis_serves_of_any_kind_is_copied_to_local_disk(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    shared, keys, arrays = in_redis(redis_server.url, "w", 3)
    with Store(tmp_path / "local") as store:
        tiers = Tiers(store, shared, WriteBack(store))
        served = tiers.read_payloads(FP, keys)
        tiers.close()  # the copy finished
        local = store.read_payloads(keys)
        # A presence check (a prewarm) finds them, and copies down what was only in Redis.
        more, more_keys, _ = in_redis(redis_server.url, "m", 4)
        assert Tiers(store, more, WriteBack(store)).contains_payloads(FP, keys + more_keys).all()
        assert store.contains_many(more_keys) == [True] * len(more_keys)
        more.close()
    for found in (served, local):
        assert all_same(found.payloads, arrays)
        assert found.tokens.tolist() == [1.0] * len(arrays)
    shared.close()


def test_a_fetched_payload_is_written_to_both_tiers(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    arrays = payloads(5)
    keys = keys_for("f", len(arrays))
    shared = RedisStore(redis_server.url)
    with Store(tmp_path / "local") as store:
        Tiers(store, shared).put_payloads(FP, keys, arrays, [1.0] * len(arrays))
        on_disk = store.read_payloads(keys)
    for found in (on_disk, shared.read_payloads(keys)):
        assert all_same(found.payloads, arrays)
    shared.close()


def test_sync_copies_every_kind_up_and_down_and_verify_catches_a_flipped_byte(
    redis_server: RedisServer, raw: redis.Redis, tmp_path: Path
) -> None:
    shared = RedisStore(redis_server.url, strict=True)
    with Store(tmp_path / "alice") as alice:
        keys, arrays = put_on_disk(alice)
        up = sharing.push(alice, shared)
    with Store(tmp_path / "bob") as bob:
        down = sharing.pull(bob, shared)
        pulled = bob.read_payloads(keys)
        fingerprints = bob.fingerprints()
    assert (up.copied, down.copied, down.damaged) == (7, 7, 0)
    assert all_same(pulled.payloads, arrays)
    assert FP.id in fingerprints
    assert sharing.verify_shared(shared).bad == []
    # Under the vectors' own names: every walk of the namespace sees payloads too.
    name = b"embedcache:1.2:" + keys[0].hex().encode()
    stored = raw.get(name)
    assert isinstance(stored, bytes)
    assert stored[:4] == b"ECp1"
    value = bytearray(stored)
    value[-1] ^= 0x01
    raw.set(name, bytes(value))
    assert sharing.verify_shared(shared).bad == [(keys[0].hex(), "entry checksum mismatch")]
    assert shared.read_payloads(keys[:1]).payloads == [None]
    shared.close()
