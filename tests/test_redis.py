"""The shared Redis tier, against a real redis-server on loopback."""

from __future__ import annotations

import logging
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from embedcache import JinaClient, JinaEmbeddingFunction, RequestOptions, Store
from embedcache.assembly import build_embedder
from embedcache.cache_keys import fingerprint, text_keys
from embedcache.config import DEFAULT_REDIS_TIMEOUT_SECONDS, upstream_id
from embedcache.storage.formats import decode_entry, encode_entry
from embedcache.storage.shared import RedisStore
from embedcache.testing import JinaEmulator

from .cli_helpers import invoke, ok
from .conftest import API_KEY
from .redis_server import RedisServer
from .serving import ProxyInProcess
from .test_open_race import race, report

OPTIONS = RequestOptions("jina-embeddings-v3", task="retrieval.passage")
TEXTS = ["shared across the team", "fetched once", "served everywhere"]


def expected(emulator: JinaEmulator, texts: list[str]) -> np.ndarray:
    return np.stack([emulator.expected_embedding(t, task="retrieval.passage") for t in texts])


def test_an_entry_reads_back_only_when_intact_and_of_the_dimension_asked() -> None:
    vector = np.linspace(-1, 1, 8, dtype=np.float32)
    value = encode_entry(vector, tokens=2.5, fp_id=7)
    decoded = decode_entry(value, 8)
    assert decoded is not None
    assert decoded[0].tobytes() == vector.tobytes()
    assert decoded[1] == 2.5
    assert decode_entry(value, 16) is None
    assert decode_entry(value[:-1], None) is None
    flipped = bytearray(value)
    flipped[-1] ^= 1
    assert decode_entry(bytes(flipped), 8) is None
    assert decode_entry(None, 8) is None


def test_a_second_machine_is_served_what_the_first_fetched_with_no_upstream_request(
    emulator: JinaEmulator,
    redis_server: RedisServer,
    ef_on: Callable[..., JinaEmbeddingFunction],
) -> None:
    first = ef_on("alice", redis_url=redis_server.url).embed(TEXTS)
    before = len(emulator.requests)
    bob = ef_on("bob", redis_url=redis_server.url)
    second = bob.embed(TEXTS)
    assert len(emulator.requests) == before
    assert second.tobytes() == first.tobytes() == expected(emulator, TEXTS).tobytes()
    # The Redis hits were copied to bob's disk (finished by close at the latest): an
    # offline run without Redis has them.
    bob.close()
    assert ef_on("bob", offline=True).embed(TEXTS).tobytes() == first.tobytes()


def test_reads_are_one_round_trip_and_keys_live_under_the_prefix_with_the_ttl(
    redis_server: RedisServer,
    raw: redis.Redis,
    ef_on: Callable[..., JinaEmbeddingFunction],
) -> None:
    ef_on("alice", redis_url=redis_server.url, redis_prefix="team-a", redis_ttl=3600).embed(TEXTS)
    names = raw.keys("team-a:*")
    entries = [name for name in names if name != b"team-a:fingerprints"]
    assert len(entries) == len(TEXTS)
    assert all(0 < raw.ttl(name) <= 3600 for name in entries)
    assert raw.hlen("team-a:fingerprints") == 1
    before = raw.info("commandstats")
    ef_on("bob", redis_url=redis_server.url, redis_prefix="team-a").embed(TEXTS)
    after = raw.info("commandstats")

    def calls(name: str, stats: dict[str, dict[str, int]]) -> int:
        return stats.get(f"cmdstat_{name}", {}).get("calls", 0)

    # All of bob's texts in one MGET; nothing read key by key, nothing written (all hits).
    assert calls("mget", after) - calls("mget", before) == 1
    for name in ("get", "exists", "set"):
        assert calls(name, after) == calls(name, before)


def test_another_prefix_is_another_cache(
    emulator: JinaEmulator,
    redis_server: RedisServer,
    ef_on: Callable[..., JinaEmbeddingFunction],
) -> None:
    ef_on("alice", redis_url=redis_server.url, redis_prefix="team-a").embed(TEXTS)
    before = len(emulator.requests)
    ef_on("bob", redis_url=redis_server.url, redis_prefix="team-b").embed(TEXTS)
    assert len(emulator.requests) == before + 1


def test_the_url_can_come_from_the_environment(
    emulator: JinaEmulator,
    redis_server: RedisServer,
    ef_on: Callable[..., JinaEmbeddingFunction],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EMBEDCACHE_REDIS_URL", redis_server.url)
    ef_on("alice").embed(TEXTS)
    before = len(emulator.requests)
    ef_on("bob").embed(TEXTS)
    assert len(emulator.requests) == before


def test_killing_redis_mid_run_keeps_results_correct_warns_once_and_writes_resume(
    emulator: JinaEmulator,
    client: JinaClient,
    redis_server: RedisServer,
    raw: redis.Redis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shared = RedisStore(redis_server.url, retry_after=0.2)
    with Store(tmp_path / "local") as store:
        embedder = build_embedder(store, client, shared=shared)
        embedder.embed(TEXTS[:1], OPTIONS)
        redis_server.kill()
        with caplog.at_level(logging.WARNING, logger="embedcache"):
            for i in range(5):
                texts = [TEXTS[0], f"new text {i}"]
                got = embedder.embed(texts, OPTIONS)
                assert got.tobytes() == expected(emulator, texts).tobytes()
        warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(warnings) == 1
        assert redis_server.url.split("//")[1].split("/")[0] in warnings[0].getMessage()

        redis_server.start()  # back, empty
        shared._outage._down_until = 0.0  # skip the rest of the pause rather than sleep through it
        embedder.embed(["after the outage"], OPTIONS)
        fp = fingerprint(OPTIONS)
        assert raw.exists(
            b"embedcache:1.2:" + text_keys(fp, ["after the outage"])[0].hex().encode()
        )
        embedder.close()
    shared.close()


def test_a_redis_that_never_answers_costs_one_bounded_timeout(
    emulator: JinaEmulator,
    redis_server: RedisServer,
    raw: redis.Redis,
    ef_on: Callable[..., JinaEmbeddingFunction],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Redis answers no command until the pause ends, by its own clock: the one time bound
    # here, at many times the client's timeout so that only a call that does not give up
    # after its timeout can outlast it, however slow the machine.
    pause_ms = round(DEFAULT_REDIS_TIMEOUT_SECONDS * 6 * 1000)
    connections = raw.info("stats")["total_connections_received"]
    raw.execute_command("CLIENT", "PAUSE", str(pause_ms), "ALL")
    with socket.create_connection(("127.0.0.1", redis_server.port)) as probe:
        probe.sendall(b"PING\r\n")  # answered the moment the pause ends
        with caplog.at_level(logging.WARNING, logger="embedcache"):
            got = ef_on("alice", redis_url=redis_server.url).embed(TEXTS)
        assert select.select([probe], [], [], 0)[0] == [], "the call outlasted the pause"
        assert got.tobytes() == expected(emulator, TEXTS).tobytes()
        # The probe does answer once the pause is over, so its silence meant "paused".
        assert select.select([probe], [], [], 30)[0] == [probe]
        assert probe.recv(16).startswith(b"+PONG")
    outage = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(outage) == 1
    assert "TimeoutError" in outage[0]
    # A timed-out connection is dropped, so each try at Redis took a connection of its
    # own: one for the read that timed out (the probe is the other), none for the write
    # of what was fetched, which skipped Redis rather than wait again.
    assert raw.info("stats")["total_connections_received"] - connections == 2


def test_without_a_server_at_all_the_library_works_from_disk_and_the_api(
    emulator: JinaEmulator, ef_on: Callable[..., JinaEmbeddingFunction]
) -> None:
    closed = "redis://127.0.0.1:1/0"
    ef = ef_on("alice", redis_url=closed)
    assert ef.embed(TEXTS).tobytes() == expected(emulator, TEXTS).tobytes()
    before = len(emulator.requests)
    assert ef.embed(TEXTS).tobytes() == expected(emulator, TEXTS).tobytes()
    assert len(emulator.requests) == before


def test_the_password_in_a_redis_url_never_appears_in_messages() -> None:
    store = RedisStore("redis://:hunter2secret@127.0.0.1:1/0")
    assert "hunter2secret" not in repr(store)
    assert "hunter2secret" not in store.location
    store.close()


def test_prewarm_on_a_new_machine_copies_shared_entries_instead_of_paying(
    emulator: JinaEmulator,
    redis_server: RedisServer,
    ef_on: Callable[..., JinaEmbeddingFunction],
    tmp_path: Path,
) -> None:
    ef_on("alice", redis_url=redis_server.url).embed(TEXTS)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    before = len(emulator.requests)
    ok(
        invoke(
            "--redis-url", redis_server.url, "prewarm", str(corpus),
            cache_dir=tmp_path / "bob", base_url=emulator.url, key=API_KEY,
        )
    )  # fmt: skip
    assert len(emulator.requests) == before
    assert ef_on("bob", offline=True).embed(TEXTS).shape == (3, 1024)


def test_two_proxies_on_separate_disks_share_one_redis(
    emulator: JinaEmulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"EMBEDCACHE_REDIS_URL": redis_server.url}
    body = {"model": "jina-embeddings-v3", "input": TEXTS}
    with (
        ProxyInProcess(emulator.url, tmp_path / "a" / "cache", env=env) as a,
        ProxyInProcess(emulator.url, tmp_path / "b" / "cache", env=env) as b,
    ):
        first = a.embed(body, API_KEY)
        before = len(emulator.requests)
        second = b.embed(body, API_KEY)
        assert len(emulator.requests) == before
        assert second.json()["data"] == first.json()["data"]
        assert second.headers["X-Embedcache-Cached"] == str(len(TEXTS))
        assert second.json()["usage"]["total_tokens"] == 0


def test_a_damaged_shared_entry_is_fetched_again_and_the_rest_still_come_from_redis(
    emulator: JinaEmulator,
    redis_server: RedisServer,
    raw: redis.Redis,
    ef_on: Callable[..., JinaEmbeddingFunction],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from embedcache.storage import shared as redis_store

    monkeypatch.setattr(redis_store, "_ROUND_TRIP_KEYS", (2, 2))  # two round trips, three texts
    ef_on("alice", redis_url=redis_server.url).embed(TEXTS)
    fp = fingerprint(OPTIONS, upstream_id(emulator.url))
    name = b"embedcache:1.2:" + text_keys(fp, [TEXTS[1]])[0].hex().encode()
    stored = raw.get(name)
    assert isinstance(stored, bytes)
    value = bytearray(stored)
    value[-1] ^= 0xFF
    raw.set(name, bytes(value))
    before = len(emulator.requests)
    got = ef_on("bob", redis_url=redis_server.url).embed(TEXTS)
    assert got.tobytes() == expected(emulator, TEXTS).tobytes()
    assert [request.inputs for request in emulator.requests[before:]] == [1]


def test_processes_recording_fingerprints_at_once_agree_on_one_record_each(
    redis_server: RedisServer, raw: redis.Redis, tmp_path: Path
) -> None:
    shared_fp = fingerprint(OPTIONS)
    own = [
        fingerprint(RequestOptions("jina-embeddings-v3", dimensions=8 * (i + 1))) for i in range(4)
    ]

    def write(directory: Path, i: int) -> None:
        store = RedisStore(redis_server.url, prefix=directory.parent.name, strict=True)
        try:
            for fp in (shared_fp, own[i]):
                (key,) = text_keys(fp, [f"text {i}"])
                store.put_many(fp, [(key, np.full(8, i, dtype=np.float32), 1.0)])
        finally:
            store.close()

    failures, directories = race(write, tmp_path, 10)
    assert not failures, report(failures)
    for directory in directories:
        prefix = directory.parent.name
        records = raw.hgetall(f"{prefix}:fingerprints")
        assert records == {
            f"{fp.id:016x}".encode(): fp.canonical.encode() for fp in (shared_fp, *own)
        }
        store = RedisStore(redis_server.url, prefix=prefix, strict=True)
        assert set(store.fingerprints()) == {fp.id for fp in (shared_fp, *own)}
        store.close()


def test_a_damaged_fingerprint_record_is_replaced_by_the_next_writer(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    fp = fingerprint(OPTIONS)
    raw.hset("embedcache:fingerprints", f"{fp.id:016x}", b'{"key_version":1,"request":{')
    store = RedisStore(redis_server.url, strict=True)
    (key,) = text_keys(fp, ["a text"])
    store.put_many(fp, [(key, np.ones(8, dtype=np.float32), 1.0)])
    # Without the record, `embedcache sync` could never copy these entries down.
    assert store.fingerprints() == {fp.id: fp}
    assert raw.hget("embedcache:fingerprints", f"{fp.id:016x}") == fp.canonical.encode()
    store.close()


def _block_copies(monkeypatch: pytest.MonkeyPatch, released: threading.Event) -> None:
    """Make every copy to local disk wait for ``released``, failing if it is not set soon:
    a copy made inside the read would wait for a release that comes after the read."""
    original = Store.put_matrix

    def put(self: Store, *args: Any, **kwargs: Any) -> None:
        assert released.wait(5), "the copy to local disk ran inside the read"
        original(self, *args, **kwargs)

    monkeypatch.setattr(Store, "put_matrix", put)


def test_a_read_from_redis_returns_before_its_copy_to_disk_which_close_finishes(
    emulator: JinaEmulator,
    redis_server: RedisServer,
    ef_on: Callable[..., JinaEmbeddingFunction],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ef_on("alice", redis_url=redis_server.url).embed(TEXTS)
    released = threading.Event()
    _block_copies(monkeypatch, released)
    bob = ef_on("bob", redis_url=redis_server.url)
    before = len(emulator.requests)
    assert bob.embed(TEXTS).tobytes() == expected(emulator, TEXTS).tobytes()
    assert len(emulator.requests) == before
    released.set()
    bob.close()  # waits for the copy
    assert ef_on("bob", offline=True).embed(TEXTS).tobytes() == expected(emulator, TEXTS).tobytes()


_NEVER_CLOSES = """
import sys, threading
from embedcache import JinaEmbeddingFunction
from embedcache.storage.store import Store

returned = threading.Event()
original = Store.put_matrix

def put(self, *args, **kwargs):
    assert returned.wait(5), "the copy to local disk ran inside the read"
    original(self, *args, **kwargs)

Store.put_matrix = put
cache_dir, base_url, redis_url, *texts = sys.argv[1:]
ef = JinaEmbeddingFunction(cache_dir=cache_dir, base_url=base_url, redis_url=redis_url,
                           offline=True)
ef.embed(texts)
returned.set()  # and exit without close()
"""


def test_a_process_that_never_closes_still_copies_what_redis_served_to_disk(
    emulator: JinaEmulator,
    redis_server: RedisServer,
    ef_on: Callable[..., JinaEmbeddingFunction],
    tmp_path: Path,
) -> None:
    ef_on("alice", redis_url=redis_server.url).embed(TEXTS)
    done = subprocess.run(
        [sys.executable, "-c", _NEVER_CLOSES, str(tmp_path / "bob"), emulator.url,
         redis_server.url, *TEXTS],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert ef_on("bob", offline=True).embed(TEXTS).tobytes() == expected(emulator, TEXTS).tobytes()
