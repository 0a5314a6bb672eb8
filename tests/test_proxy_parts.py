"""The proxy's parts in process: request limits, the verification budget, single-flight
verification at the headers, and the access-log figures the routes give."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest

from embedcache.assembly import CacheSettings
from embedcache.errors import InvalidInputError
from embedcache.models import resolve_options
from embedcache.proxy.access import Access, Decision
from embedcache.proxy.app import Proxy, ProxySettings
from embedcache.proxy.gate import Gate
from embedcache.proxy.http import Refusal, Request
from embedcache.proxy.keys import VerifyBudget
from embedcache.proxy.limits import RequestLimits, answer_bytes, refuse_overlong
from embedcache.testing import JinaEmulator
from embedcache.tokens import estimate_tokens

from .conftest import API_KEY

V3 = "jina-embeddings-v3"


def test_the_answer_estimate_follows_count_dimensions_and_encoding() -> None:
    floats = answer_bytes(10, 1024, "float", "float64")
    assert floats >= 10 * 1024 * 20  # at least the digits a float64-style value takes
    assert answer_bytes(10, 1024, "float", "float32") < floats
    assert answer_bytes(10, 1024, "base64", "float64") < floats / 4
    assert answer_bytes(10, None, "float", "float64") == floats  # an unknown model: 1024
    limits = RequestLimits(max_inputs=3, max_answer_bytes=floats - 1)
    assert limits.inputs_problem(3) is None
    assert "--max-inputs" in (limits.inputs_problem(4) or "")
    assert "--max-answer" in (limits.answer_problem(floats) or "")


def test_an_overlong_text_is_refused_by_slices_and_a_text_the_library_takes_is_not() -> None:
    options = resolve_options(V3)
    near = "abcdef " * 8000  # 8000 estimated tokens in 56,000 characters: under the limit
    assert estimate_tokens(near) == 8000
    refuse_overlong([near], options)
    with pytest.raises(InvalidInputError, match=r"input\[1\] is over the 8192-token limit"):
        refuse_overlong(["short", "word " * 10_000_000], options)
    refuse_overlong(["word " * 10_000], resolve_options(V3, truncate=True))  # the API cuts it


def test_the_verification_budget_allows_a_burst_then_names_the_wait() -> None:
    budget = VerifyBudget(2)
    assert [budget.take(), budget.take()] == [0, 0]
    assert budget.take() == 1  # one more after half a second: whole seconds for Retry-After
    assert VerifyBudget(0).take() == 0  # no bound


def test_twenty_requests_with_one_new_key_at_the_headers_share_one_verification() -> None:
    asked: list[str] = []
    release = threading.Event()

    def verify(key: str) -> None:
        asked.append(key)
        release.wait(10)

    async def run() -> list[Refusal | None]:
        loop = asyncio.get_running_loop()

        async def in_thread(work: Callable[[], Decision]) -> Decision:
            return await loop.run_in_executor(None, work)

        gate = Gate(Access(verify=verify), verify_rate=1, run=in_thread)
        requests = [Request(b"POST", b"/v1/embeddings", authorization=b"Bearer new-key")]
        waits = [gate.admit(request) for request in requests * 20]
        assert all(asyncio.iscoroutine(wait) for wait in waits)
        other = gate.admit(Request(b"POST", b"/embed", authorization=b"Bearer other-key"))
        assert isinstance(other, Refusal)  # the budget of 1 a second is spent
        assert other.status == 429
        assert (b"retry-after", b"1") in other.headers
        assert "--verify-rate" in json.loads(other.body)["error"]
        release.set()
        answers = await asyncio.gather(*waits)  # type: ignore[arg-type]
        assert gate.admit(requests[0]) is None  # remembered: decided at once
        return list(answers)

    assert asyncio.run(run()) == [None] * 20
    assert asked == ["new-key"]


def test_health_metrics_admin_and_info_are_not_gated_at_the_headers(tmp_path: Path) -> None:
    settings = ProxySettings(
        cache=CacheSettings(cache_dir=tmp_path / "cache", offline=True), token="proxy-token"
    )
    proxy = Proxy(settings)
    try:
        for path in (b"/health", b"/metrics", b"/admin/stats", b"/admin/flush", b"/info"):
            assert proxy.admit(Request(b"GET", path)) is None
        refused = proxy.admit(Request(b"POST", b"/v1/embeddings"))
        assert isinstance(refused, Refusal)
        assert refused.status == 401
        body = json.loads(refused.body)
        assert body["detail"] == body["error"]["message"]
        assert (
            proxy.admit(Request(b"POST", b"/v1/embeddings", authorization=b"Bearer proxy-token"))
            is None
        )
    finally:
        proxy.close()


def test_the_routes_give_the_access_log_the_requests_texts_and_hits(
    tmp_path: Path, emulator: JinaEmulator
) -> None:
    cache = CacheSettings(cache_dir=tmp_path / "cache", base_url=emulator.url, api_key=API_KEY)
    proxy = Proxy(ProxySettings(cache=cache))
    body = json.dumps({"model": V3, "input": ["a", "b", "a"]}).encode()

    async def call(path: str, content: bytes) -> Request:
        raw = Request(b"POST", path.encode(), content)
        scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "headers": [], "client": None,
            "server": None, "embedcache.request": raw,
        }  # fmt: skip

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": content, "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            pass

        await proxy.app(scope, receive, send)
        return raw

    try:
        fetched = asyncio.run(call("/v1/embeddings", body))
        assert (fetched.texts, fetched.hits) == (3, 0)
        again = asyncio.run(call("/v1/embeddings", body))
        assert (again.texts, again.hits) == (3, 2)
        tei = asyncio.run(call("/embed", json.dumps({"inputs": ["a", "c"]}).encode()))
        assert (tei.texts, tei.hits) == (2, 0)  # another task than /v1's default: not cached
    finally:
        proxy.close()
