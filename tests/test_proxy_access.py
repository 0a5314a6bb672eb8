"""A proxy safe to share: who is served, even from the cache, and who may administer it."""

from __future__ import annotations

from pathlib import Path

from embedcache.proxy.access import Access, Decision, KeyRefused, KeyUnverifiable
from embedcache.testing import JinaEmulator

from .conftest import API_KEY, MakeProxy

BODY = {"model": "jina-embeddings-v3", "input": ["a shared document"]}
OTHER_KEY = "jina_" + "x" * 60


# The policy itself


def test_an_open_policy_forwards_whatever_key_the_client_sends() -> None:
    access = Access()
    assert access.decide("client-key") == Decision(0, key="client-key")
    assert access.decide("") == Decision(0, key=None)  # no key: the server's pays


def test_listed_keys_pass_and_others_are_refused_without_asking_anyone() -> None:
    access = Access(allowed_keys=["good"])
    assert access.decide("good") == Decision(0, key="good")  # served, paying for itself
    refused = access.decide("bad")
    assert refused is not None
    assert refused.status == 401
    assert "bad" not in refused.detail


def test_a_verdict_is_asked_once_and_remembered_for_its_ttl() -> None:
    asked: list[str] = []

    def verify(key: str) -> None:
        asked.append(key)
        if key == "bad":
            raise KeyRefused("no")

    access = Access(verify=verify, verdict_ttl=60)
    assert access.decide("good", verify=False) is None  # would have to ask
    for _ in range(3):
        assert access.decide("good") == Decision(0, key="good")
        bad = access.decide("bad")
        assert bad is not None
        assert bad.status == 401
    assert asked == ["good", "bad"]
    access.forget()
    access.decide("good")
    assert asked == ["good", "bad", "good"]


def test_an_unverifiable_key_is_refused_and_asked_about_again_only_after_the_interval() -> None:
    calls = 0
    now = 100.0

    def verify(key: str) -> None:
        nonlocal calls
        calls += 1
        raise KeyUnverifiable("upstream down")

    access = Access(verify=verify, verify_interval=10, clock=lambda: now)
    for _ in range(3):
        decision = access.decide("key")
        assert decision is not None
        assert decision.status == 503
    assert calls == 1  # remembered: a stream of requests is not a stream of probes
    now += 11
    decision = access.decide("key")
    assert decision is not None
    assert decision.status == 503
    assert calls == 2


def test_a_verdict_stands_for_the_interval_even_with_a_shorter_ttl() -> None:
    calls = 0
    now = 0.0

    def verify(key: str) -> None:
        nonlocal calls
        calls += 1

    access = Access(verify=verify, verdict_ttl=0, verify_interval=5, clock=lambda: now)
    assert access.decide("key") == Decision(0, key="key")
    now += 4
    assert access.decide("key", verify=False) == Decision(0, key="key")
    assert calls == 1
    now += 2
    assert access.decide("key", verify=False) is None  # to be asked again


# Through a running proxy


def test_with_an_allowlist_a_cached_vector_is_not_served_to_an_unlisted_key(
    emulator: JinaEmulator, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# team keys\n{API_KEY}\n", encoding="utf-8")
    proxy = make_proxy("--allow-keys", str(keys))
    keys.unlink()  # read at start-up; the suite's leak check scans the disk for the key
    assert proxy.embed(BODY, API_KEY).status_code == 200
    for key in (OTHER_KEY, None):
        refused = proxy.embed(BODY, key)
        assert refused.status_code == 401
        assert "detail" in refused.json()
    assert proxy.embed(BODY, API_KEY).headers["X-Embedcache-Cached"] == "1"


def test_verified_keys_are_asked_about_once_and_refused_keys_stay_refused(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    # One worker: verdicts are each worker's own (a refusal closes its connection, so the
    # next request may reach another worker, which would verify the key once itself).
    proxy = make_proxy("--verify-keys", "--workers", "1")
    first = proxy.embed(BODY, API_KEY)
    assert first.status_code == 200
    probes = len(emulator.requests) - 1  # the fill of BODY is the other request
    assert probes == 1
    before = len(emulator.requests)
    assert proxy.embed(BODY, API_KEY).status_code == 200  # a hit, and no new probe
    assert len(emulator.requests) == before

    for _ in range(2):
        refused = proxy.embed(BODY, OTHER_KEY)  # BODY is cached: still refused
        assert refused.status_code == 401
        assert "refuses" in refused.json()["detail"]
    assert len(emulator.requests) == before + 1  # one probe for the bad key, remembered


def test_verification_fails_closed_when_the_upstream_cannot_be_reached(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    proxy = make_proxy("--verify-keys", upstream="http://127.0.0.1:1")
    refused = proxy.embed(BODY, API_KEY)
    assert refused.status_code == 503
    assert "verify" in refused.json()["detail"]


def test_the_admin_token_guards_metrics_and_enables_stats_and_flush(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    admin = {"Authorization": "Bearer admin-secret"}
    proxy = make_proxy(env={"EMBEDCACHE_ADMIN_TOKEN": "admin-secret"})
    proxy.embed(BODY, API_KEY)
    assert proxy.http.get("/metrics").status_code == 401
    assert (
        proxy.http.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).status_code
        == 401
    )
    assert proxy.http.get("/metrics", headers=admin).status_code == 200
    stats = proxy.http.get("/admin/stats", headers=admin).json()
    assert stats["entries"] == 1
    assert stats["since_start"]["misses"] == 1
    assert proxy.http.post("/admin/flush").status_code == 401
    assert proxy.http.post("/admin/flush", headers=admin).json() == {"flushed": True}
    before = len(emulator.requests)
    assert proxy.embed(BODY, API_KEY).headers["X-Embedcache-Cached"] == "1"  # from disk now
    assert len(emulator.requests) == before


def test_without_an_admin_token_admin_endpoints_are_off(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    off = proxy.http.get("/admin/stats")
    assert off.status_code == 404
    assert "--admin-token" in off.json()["detail"]
    assert proxy.http.get("/metrics").status_code == 200
