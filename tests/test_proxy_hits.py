"""The proxy's hit path and its workers: ``embedcache serve`` on loopback, the emulator
upstream; in this process, or as a subprocess of two workers where several are the point."""

from __future__ import annotations

from typing import Any

import httpx

from embedcache.testing import JinaEmulator

from .conftest import API_KEY, MakeProxy, MakeServed, wait_for
from .serving import Served

V3 = "jina-embeddings-v3"
ADMIN = "admin-secret-for-tests"


def fresh_post(proxy: Served, body: dict[str, Any], key: str = API_KEY) -> httpx.Response:
    """One request on a new connection, so the kernel may give it to any worker."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        return http.post("/v1/embeddings", json=body, headers=headers)


def samples(proxy: Served, name: str) -> dict[str, float]:
    """Every sample of metric ``embedcache_NAME``, by its labels ('' for none)."""
    headers = {"Authorization": f"Bearer {ADMIN}"}
    out = {}
    for line in proxy.http.get("/metrics", headers=headers).text.splitlines():
        if line.startswith(f"embedcache_{name}{{") or line.startswith(f"embedcache_{name} "):
            labels = line[len(f"embedcache_{name}") :].split(" ")[0].strip("{}")
            out[labels] = float(line.rsplit(" ", 1)[1])
    return out


def test_repeat_hits_on_any_worker_are_byte_identical_and_cost_nothing(
    emulator: JinaEmulator, make_served: MakeServed
) -> None:
    proxy = make_served("--admin-token", ADMIN)
    body = {"model": V3, "input": ["served from memory", "and from memory"]}
    first = fresh_post(proxy, body)
    repeats: list[httpx.Response] = []

    def both_workers_answered() -> bool:
        repeats.append(fresh_post(proxy, body))
        held = samples(proxy, "rendered_bytes")
        return len(held) == 2 and min(held.values()) > 0

    wait_for(both_workers_answered, lambda: f"rendered: {samples(proxy, 'rendered_bytes')}")
    repeats += [fresh_post(proxy, body) for _ in range(6)]  # from memory, on either worker
    assert len(emulator.requests) == 1
    assert len({answer.content for answer in repeats}) == 1
    assert repeats[0].json()["data"] == first.json()["data"]
    assert repeats[0].json()["usage"] == {"total_tokens": 0, "prompt_tokens": 0}
    assert all(answer.headers["X-Embedcache-Cached"] == "2" for answer in repeats)


def test_metrics_add_up_every_worker(emulator: JinaEmulator, make_served: MakeServed) -> None:
    proxy = make_served("--admin-token", ADMIN)
    body = {"model": V3, "input": ["counted once per request"]}
    for _ in range(20):
        assert fresh_post(proxy, body).status_code == 200
    assert samples(proxy, "workers") == {"": 2}
    requests = samples(proxy, "requests_total")
    assert requests['outcome="fetched"'] + requests['outcome="cached"'] == 20
    entries = samples(proxy, "entries_total")
    assert (entries['result="miss"'], entries['result="hit"']) == (1, 19)

    def both_report_memory() -> bool:
        resident = samples(proxy, "resident_bytes")
        return set(resident) == {'worker="0"', 'worker="1"'} and min(resident.values()) > 0

    wait_for(both_report_memory, lambda: f"resident: {samples(proxy, 'resident_bytes')}")


def test_admin_flush_empties_the_memory_of_every_worker(
    emulator: JinaEmulator, make_served: MakeServed
) -> None:
    proxy = make_served("--admin-token", ADMIN)
    body = {"model": V3, "input": ["held by both workers"]}

    def both_hold_answers() -> bool:
        fresh_post(proxy, body)
        return min(samples(proxy, "rendered_bytes").values()) > 0

    wait_for(both_hold_answers, lambda: f"rendered: {samples(proxy, 'rendered_bytes')}")
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert proxy.http.post("/admin/flush", headers=admin).json() == {"flushed": True}
    wait_for(
        lambda: max(samples(proxy, "rendered_bytes").values()) == 0,
        lambda: f"rendered after the flush: {samples(proxy, 'rendered_bytes')}",
    )
    stats = proxy.http.get("/admin/stats", headers=admin).json()
    assert stats["workers"] == 2
    assert stats["since_start"]["misses"] == 1


def test_a_hit_in_memory_is_still_refused_without_the_token(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    proxy = make_proxy(
        "--token", "the-proxy-token", "--admin-token", ADMIN, env={"JINAAI_API_KEY": API_KEY}
    )
    body = {"model": V3, "input": ["only for token holders"]}

    def both_workers_hold_it() -> bool:
        assert fresh_post(proxy, body, key="the-proxy-token").status_code == 200
        return min(samples(proxy, "rendered_bytes").values()) > 0

    wait_for(both_workers_hold_it, lambda: f"rendered: {samples(proxy, 'rendered_bytes')}")
    for _ in range(4):  # whichever worker it reaches, it holds the answer in memory
        refused = fresh_post(proxy, body, key="not-the-token")
        assert refused.status_code == 401
        assert "token" in refused.json()["detail"]


def test_one_worker_serves_as_before(emulator: JinaEmulator, make_proxy: MakeProxy) -> None:
    proxy = make_proxy("--workers", "1", "--admin-token", ADMIN)
    body = {"model": V3, "input": ["a single process"]}
    assert fresh_post(proxy, body).json()["data"] == fresh_post(proxy, body).json()["data"]
    assert samples(proxy, "workers") == {"": 1}
    assert len(emulator.requests) == 1
