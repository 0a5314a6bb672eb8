"""`embedcache sync`, and `stats` / `verify` with the shared tier, against a real
redis-server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis

from embedcache import JinaEmbeddingFunction, RequestOptions, Store
from embedcache.cache_keys import Fingerprint, fingerprint, text_keys
from embedcache.storage.shared import RedisStore
from embedcache.testing import JinaEmulator

from .cli_helpers import Invoke, as_json, ok, one_line_error
from .redis_server import RedisServer

TEXTS = ["shared across the team", "fetched once", "served everywhere"]
OPTIONS = RequestOptions("jina-embeddings-v3", task="retrieval.passage")
DEAD = "redis://127.0.0.1:1/0"
ENTRY_BYTES = 32 + 4 * 1024  # header + 1024 float32


def entry_names(raw: redis.Redis, prefix: str = "embedcache") -> list[bytes]:
    return sorted(raw.scan_iter(match=f"{prefix}:1.2:*"))


def calls(raw: redis.Redis, command: str) -> int:
    stats: dict[str, dict[str, int]] = raw.info("commandstats")
    return stats.get(f"cmdstat_{command}", {}).get("calls", 0)


def test_sync_up_then_pull_on_another_machine_gives_the_same_bits_with_no_request(
    emulator: JinaEmulator,
    redis_server: RedisServer,
    raw: redis.Redis,
    ef_on: Callable[..., JinaEmbeddingFunction],
    machine_cli: Invoke,
    tmp_path: Path,
) -> None:
    fetched = ef_on("alice").embed(TEXTS)  # alice works without Redis, then shares
    requests = len(emulator.requests)
    up = as_json(machine_cli("alice", "sync", "--json", url=redis_server.url))
    assert (up["direction"], up["copied"], up["present"], up["skipped"]) == ("up", 3, 0, 0)
    assert len(entry_names(raw)) == 3
    assert raw.hlen("embedcache:fingerprints") == 1

    mgets = calls(raw, "mget")
    down = as_json(machine_cli("bob", "sync", "--pull", "--json", url=redis_server.url))
    assert (down["direction"], down["copied"], down["present"], down["skipped"]) == (
        "down", 3, 0, 0)  # fmt: skip
    assert calls(raw, "mget") - mgets == 1  # one page: one MGET for all three values

    # bob has them on disk, under alice's settings and tokens, without Redis or a request.
    got = ef_on("bob", offline=True).embed(TEXTS)
    assert got.tobytes() == fetched.tobytes()
    assert len(emulator.requests) == requests
    keys = text_keys(fingerprint(OPTIONS), TEXTS)
    with Store(tmp_path / "alice") as alice, Store(tmp_path / "bob") as bob:
        assert [r.tokens for r in bob.get_many(keys) if r] == [
            r.tokens for r in alice.get_many(keys) if r
        ]
        assert bob.fingerprints() == alice.fingerprints()
    listed = as_json(machine_cli("bob", "ls", "--json"))
    assert [(e["model"], e["task"], e["dimensions"]) for e in listed] == [
        ("jina-embeddings-v3", "retrieval.passage", 1024)
    ] * 3


def test_sync_is_idempotent_both_ways_and_a_dry_run_copies_nothing(
    redis_server: RedisServer,
    raw: redis.Redis,
    ef_on: Callable[..., JinaEmbeddingFunction],
    machine_cli: Invoke,
) -> None:
    ef_on("alice").embed(TEXTS)
    dry = as_json(machine_cli("alice", "sync", "--dry-run", "--json", url=redis_server.url))
    assert (dry["dry_run"], dry["copied"]) == (True, 3)
    assert entry_names(raw) == []
    human = ok(machine_cli("alice", "sync", url=redis_server.url)).output
    assert "3 copied, 0 already present, 0 skipped" in human
    again = as_json(machine_cli("alice", "sync", "--json", url=redis_server.url))
    assert (again["checked"], again["copied"], again["present"]) == (3, 0, 3)
    ok(machine_cli("bob", "sync", "--pull", url=redis_server.url))
    pulled = as_json(machine_cli("bob", "sync", "--pull", "--json", url=redis_server.url))
    assert (pulled["checked"], pulled["copied"], pulled["present"]) == (3, 0, 3)


def test_pull_skips_and_counts_damaged_entries_and_unrecorded_settings(
    redis_server: RedisServer,
    raw: redis.Redis,
    ef_on: Callable[..., JinaEmbeddingFunction],
    machine_cli: Invoke,
) -> None:
    ef_on("alice", redis_url=redis_server.url).embed(TEXTS)
    names = entry_names(raw)
    raw.setrange(names[0], 40, b"\xff\xff")  # inside the vector: the checksum fails
    report = as_json(machine_cli("bob", "sync", "--pull", "--json", url=redis_server.url))
    assert (report["copied"], report["damaged"], report["skipped"]) == (2, 1, 1)

    raw.delete("embedcache:fingerprints")
    human = ok(machine_cli("carol", "sync", "--pull", url=redis_server.url)).output
    assert "0 copied, 0 already present, 3 skipped" in human
    assert "(1 damaged, 2 with unrecorded request settings)" in human


def test_sync_up_skips_damaged_local_entries(
    redis_server: RedisServer,
    raw: redis.Redis,
    ef_on: Callable[..., JinaEmbeddingFunction],
    machine_cli: Invoke,
    tmp_path: Path,
) -> None:
    from .conftest import damage_entry

    ef_on("alice").embed(TEXTS)
    damage_entry(tmp_path / "alice")
    report = as_json(machine_cli("alice", "sync", "--json", url=redis_server.url))
    assert (report["copied"], report["damaged"]) == (2, 1)
    assert len(entry_names(raw)) == 2


def test_the_redis_prefix_is_one_global_option_for_every_command(
    emulator: JinaEmulator,
    redis_server: RedisServer,
    raw: redis.Redis,
    machine_cli: Invoke,
) -> None:
    ok(machine_cli("alice", "--redis-prefix", "team-a", "get", *TEXTS, url=redis_server.url))
    assert len(entry_names(raw, "team-a")) == 3
    assert entry_names(raw) == []
    other = as_json(machine_cli("bob", "sync", "--pull", "--json", url=redis_server.url))
    assert (other["prefix"], other["checked"]) == ("embedcache", 0)
    same = as_json(
        machine_cli(
            "bob", "--redis-prefix", "team-a", "sync", "--pull", "--json", url=redis_server.url
        )
    )
    assert (same["prefix"], same["copied"]) == ("team-a", 3)
    stats = as_json(
        machine_cli("bob", "--redis-prefix", "team-a", "stats", "--json", url=redis_server.url)
    )
    assert stats["shared"]["entries"] == 3


def test_stats_shows_the_shared_tier(
    redis_server: RedisServer,
    ef_on: Callable[..., JinaEmbeddingFunction],
    machine_cli: Invoke,
) -> None:
    ef_on("alice", redis_url=redis_server.url).embed(TEXTS)
    ok(machine_cli("bob", "clear", "--yes"))  # bob's empty cache: stats reads only an existing one
    assert as_json(machine_cli("bob", "stats", "--json"))["shared"] is None
    stats = as_json(machine_cli("bob", "stats", "--json", url=redis_server.url))
    assert stats["entries"] == 0  # bob's own disk
    assert stats["shared"] == {
        "location": redis_server.url,
        "prefix": "embedcache",
        "entries": 3,
        "bytes": 3 * ENTRY_BYTES,
    }
    human = ok(machine_cli("bob", "stats", url=redis_server.url)).output
    assert f"shared       {redis_server.url} (prefix embedcache)" in human
    assert "shared size  3 entries, 12.4 KB" in human
    assert "shared size" not in ok(machine_cli("bob", "stats")).output


def test_verify_finds_a_damaged_redis_value_and_repair_deletes_it(
    redis_server: RedisServer,
    raw: redis.Redis,
    ef_on: Callable[..., JinaEmbeddingFunction],
    machine_cli: Invoke,
) -> None:
    ef_on("alice", redis_url=redis_server.url).embed(TEXTS)
    clean = as_json(machine_cli("alice", "verify", "--json", url=redis_server.url))
    assert (clean["checked"], clean["shared"]["checked"], clean["shared"]["bad"]) == (3, 3, [])
    flipped, truncated = entry_names(raw)[:2]
    raw.setrange(flipped, 100, b"\x00\x01")
    raw.set(truncated, raw.getrange(truncated, 0, 99))

    found = machine_cli("alice", "verify", "--json", url=redis_server.url)
    assert found.exit_code == 1, found.output
    report = json.loads(found.stdout)
    assert report["bad"] == []  # alice's disk is fine
    assert sorted(report["shared"]["bad"], key=lambda b: b["reason"]) == [
        {"key": truncated.split(b":")[-1].decode(),
         "reason": "68 bytes of vector, header says 1024 dims"},
        {"key": flipped.split(b":")[-1].decode(), "reason": "entry checksum mismatch"},
    ]  # fmt: skip
    human = machine_cli("alice", "verify", url=redis_server.url).output
    assert f"bad shared {flipped.split(b':')[-1].decode()}: entry checksum mismatch" in human
    assert "checked 3 shared entries at" in human

    repaired = as_json(machine_cli("alice", "verify", "--repair", "--json", url=redis_server.url))
    assert repaired["shared"]["removed"] == 2
    assert raw.exists(flipped, truncated) == 0
    after = as_json(machine_cli("alice", "verify", "--json", url=redis_server.url))
    assert (after["shared"]["checked"], after["shared"]["bad"]) == (1, [])


def test_verify_keeps_intact_entries_whose_settings_are_not_recorded(
    redis_server: RedisServer,
    raw: redis.Redis,
    ef_on: Callable[..., JinaEmbeddingFunction],
    machine_cli: Invoke,
) -> None:
    ef_on("alice", redis_url=redis_server.url).embed(TEXTS)
    raw.delete("embedcache:fingerprints")
    report = as_json(machine_cli("alice", "verify", "--repair", "--json", url=redis_server.url))
    assert report["shared"]["unrecorded_settings"] == 3
    assert report["shared"]["removed"] == 0
    assert len(entry_names(raw)) == 3


@pytest.mark.parametrize("command", [["sync"], ["sync", "--pull"], ["stats"], ["verify"]])
def test_a_dead_redis_is_a_one_line_error_without_the_password(
    machine_cli: Invoke, ef_on: Callable[..., JinaEmbeddingFunction], command: list[str]
) -> None:
    ef_on("alice").embed(TEXTS)
    dead = "redis://:hunter2secret@127.0.0.1:1/0"
    result = machine_cli("alice", *command, url=dead)
    error = one_line_error(result)
    assert error.startswith("Error: SharedCacheError: shared cache redis://127.0.0.1:1/0 failed")
    assert "ConnectionError" in error
    assert "hunter2secret" not in result.output


def test_an_empty_local_cache_still_reports_a_dead_redis(machine_cli: Invoke) -> None:
    assert "SharedCacheError" in one_line_error(machine_cli("nobody", "sync", url=DEAD))


def test_sync_without_a_redis_url_is_a_usage_error(machine_cli: Invoke) -> None:
    error = one_line_error(machine_cli("alice", "sync"), code=2)
    assert "--redis-url" in error
    assert "EMBEDCACHE_REDIS_URL" in error


def test_the_embedding_path_still_falls_back_silently_on_a_dead_redis(
    emulator: JinaEmulator, machine_cli: Invoke
) -> None:
    result = ok(machine_cli("alice", "get", "one text", url=DEAD))
    assert json.loads(result.stdout.splitlines()[0])["text"] == "one text"


def test_maintenance_calls_walk_the_namespace_a_page_per_round_trip(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    shared = RedisStore(redis_server.url, prefix="t*[x]", strict=True)
    fp = fingerprint(OPTIONS)
    keys = text_keys(fp, [f"text {i}" for i in range(25)])
    vectors = np.random.default_rng(0).standard_normal((25, 8)).astype(np.float32)
    shared.put_many(fp, [(k, v, 1.5) for k, v in zip(keys, vectors, strict=True)])
    raw.set(b"t*[x]:1.2:not-a-key", b"foreign")
    raw.set(b"tx:1.2:" + keys[0].hex().encode(), b"another prefix")
    scans = calls(raw, "scan")
    assert sorted(k for k, _ in shared.raw_values(batch=10)) == sorted(keys)
    assert calls(raw, "scan") - scans >= 3  # pages, not one huge reply
    assert shared.count() == 25
    assert shared.usage() == (25, 25 * (32 + 32))
    assert shared.contains_many([keys[0], b"\x00" * 16]) == [True, False]
    assert shared.delete_many([keys[0], b"\x00" * 16]) == 1
    assert shared.count() == 24
    assert shared.fingerprints() == {fp.id: fp}
    assert Fingerprint.from_canonical(fp.canonical) == fp
    shared.close()


def test_a_malformed_redis_url_is_a_one_line_error_without_the_password(
    machine_cli: Invoke, tmp_path: Path
) -> None:
    Store(tmp_path / "alice").close()  # stats reads only an existing cache
    result = machine_cli("alice", "stats", url="redis://:hunter2secret@127.0.0.1:notaport/0")
    assert "InvalidInputError: bad Redis URL" in one_line_error(result)
    assert "hunter2secret" not in result.output


def test_redis_ttl_applies_to_what_the_cli_writes(
    redis_server: RedisServer, raw: redis.Redis, machine_cli: Invoke
) -> None:
    ok(machine_cli("alice", "--redis-ttl", "600", "get", *TEXTS, url=redis_server.url))
    names = entry_names(raw)
    assert len(names) == len(TEXTS)
    assert all(0 < raw.ttl(name) <= 600 for name in names)
