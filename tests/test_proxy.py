"""``embedcache serve`` on loopback, the emulator upstream, driven by httpx: in this process
(``make_proxy``), and as a subprocess where a signal is the point (``make_served``)."""

from __future__ import annotations

import base64
import signal
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from embedcache import JinaEmbeddingFunction
from embedcache.storage.store import Store
from embedcache.testing import Fault, JinaEmulator

from .conftest import API_KEY, MakeProxy, MakeServed, wait_for
from .serving import Served

V3 = "jina-embeddings-v3"


@pytest.fixture
def proxy(make_proxy: MakeProxy) -> Served:
    return make_proxy()


def direct(emulator: JinaEmulator, body: dict[str, Any], key: str = API_KEY) -> httpx.Response:
    """The emulator's own answer to ``body``."""
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(emulator.url + "/v1/embeddings", json=body, headers=headers, timeout=30)


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in body.items() if name != "request_id"}


def upstream_count(emulator: JinaEmulator) -> int:
    return len(emulator.requests)


def sent_types(emulator: JinaEmulator) -> list[str]:
    """The ``embedding_type`` of every request the emulator got, oldest first."""
    return [
        request.body.get("embedding_type", "float") for request in emulator.requests if request.body
    ]


def test_float_answers_are_the_emulators_values_for_a_miss_and_a_hit_in_either_float_style(
    emulator: JinaEmulator, proxy: Served, float_style: str
) -> None:
    body = {"model": V3, "task": "retrieval.query", "input": ["alpha", "beta", "alpha"]}
    expected = direct(emulator, body).json()
    before = upstream_count(emulator)

    first = proxy.embed(body, API_KEY)
    assert first.status_code == 200, first.text
    # The float64 values a float client parses (Python's json: float64), compared exactly:
    # the other style's text would differ at about 1e-8.
    assert first.json()["data"] == expected["data"]
    assert first.json()["usage"]["total_tokens"] > 0
    assert first.headers["X-Embedcache-Cached"] == "0"
    assert upstream_count(emulator) == before + 1

    second = proxy.embed(body, API_KEY)
    assert second.json()["data"] == expected["data"]
    assert second.json()["usage"] == {"total_tokens": 0, "prompt_tokens": 0}
    assert second.json()["model"] == V3
    assert second.json()["object"] == "list"
    assert second.headers["X-Embedcache-Cached"] == "2"  # distinct inputs
    assert upstream_count(emulator) == before + 1


def test_the_proxy_learns_the_float_style_from_its_first_fill_then_asks_for_base64(
    emulator: JinaEmulator, proxy: Served, float_style: str
) -> None:
    proxy.embed({"model": V3, "input": ["first"], "embedding_type": "base64"}, API_KEY)
    proxy.embed({"model": V3, "input": ["second"]}, API_KEY)
    proxy.embed({"model": V3, "input": ["third"]}, API_KEY)
    assert sent_types(emulator) == ["float", "base64", "base64"]
    for text in ("first", "second"):  # stored from float text, then from base64
        answer = proxy.embed({"model": V3, "input": [text]}, API_KEY)
        assert answer.headers["X-Embedcache-Cached"] == "1"
        assert (
            answer.json()["data"] == direct(emulator, {"model": V3, "input": [text]}).json()["data"]
        )


def test_a_fresh_proxy_on_the_directory_writes_the_learned_style_before_any_fetch(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    emulator.float_style = "float32"  # not the default: only a stored style gives it
    body = {"model": V3, "input": ["kept"]}
    expected = direct(emulator, body).json()["data"]
    first = make_proxy()
    first.embed(body, API_KEY)
    first.stop()
    before = upstream_count(emulator)
    restarted = make_proxy()
    hit = restarted.embed(body)
    assert hit.status_code == 200, hit.text
    assert hit.json()["data"] == expected
    assert upstream_count(emulator) == before
    # Each process still learns for itself from its first miss, so an upstream that
    # changed its style is followed after a restart.
    restarted.embed({"model": V3, "input": ["new"]}, API_KEY)
    restarted.embed({"model": V3, "input": ["newer"]}, API_KEY)
    assert sent_types(emulator)[-2:] == ["float", "base64"]


def test_a_worker_that_never_fetched_writes_the_style_another_worker_learned(
    emulator: JinaEmulator, make_proxy: MakeProxy, make_ef: Callable[..., JinaEmbeddingFunction]
) -> None:
    emulator.float_style = "float32"
    early = {"model": V3, "input": ["cached by the library"], "task": "retrieval.passage"}
    make_ef().encode_documents(["cached by the library"])  # the library learns no float style
    filler, server = make_proxy(), make_proxy()  # two workers on one directory
    vector = emulator.expected_embedding("cached by the library", task="retrieval.passage")
    before_learning = server.embed(early).json()["data"][0]["embedding"]
    assert before_learning == [float(value) for value in vector]  # the default style
    body = {"model": V3, "input": ["filled by one, served by the other"]}
    filler.embed(body, API_KEY)  # learns float32 from its first fill
    expected = [direct(emulator, request).json()["data"] for request in (body, early)]
    before = upstream_count(emulator)
    # The other server reads the directory's style once a second, never on a request.
    wait_for(lambda: server.embed(early).json()["data"] == expected[1], "style not followed")
    for request, data in zip((body, early), expected, strict=True):
        hit = server.embed(request)
        assert hit.headers["X-Embedcache-Cached"] == "1"
        assert hit.json()["data"] == data
    assert upstream_count(emulator) == before  # every answer a hit


@pytest.mark.parametrize("field", ["embedding_type", "encoding_type"])
def test_base64_answers_carry_the_emulators_bytes_whatever_its_float_style(
    emulator: JinaEmulator, proxy: Served, field: str, float_style: str
) -> None:
    texts = ["one", "two"]
    proxy.embed({"model": V3, "input": texts}, API_KEY)  # cached from a float request
    answer = proxy.embed({"model": V3, "input": texts, field: "base64"}, API_KEY)
    assert answer.status_code == 200
    assert answer.headers["X-Embedcache-Cached"] == "2"
    for item, text in zip(answer.json()["data"], texts, strict=True):
        got = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        assert got.tobytes() == emulator.expected_embedding(text).tobytes()


def test_string_input_and_text_objects_share_entries_with_plain_strings(
    emulator: JinaEmulator, proxy: Served
) -> None:
    proxy.embed({"model": V3, "input": ["hello", "world"]}, API_KEY)
    before = upstream_count(emulator)
    single = proxy.embed({"model": V3, "input": "hello"}, API_KEY).json()
    objects = proxy.embed({"model": V3, "input": [{"text": "world"}, "hello"]}, API_KEY).json()
    assert upstream_count(emulator) == before
    assert [item["index"] for item in objects["data"]] == [0, 1]
    hello = emulator.expected_embedding("hello")
    assert np.asarray(single["data"][0]["embedding"], dtype=np.float32).tobytes() == hello.tobytes()
    assert (
        np.asarray(objects["data"][1]["embedding"], dtype=np.float32).tobytes() == hello.tobytes()
    )


def test_mixed_hits_and_misses_come_back_in_index_order_and_usage_counts_only_misses(
    emulator: JinaEmulator, proxy: Served
) -> None:
    proxy.embed({"model": V3, "input": ["b", "d"]}, API_KEY)
    before = len(emulator.requests)
    texts = ["a", "b", "c", "d", "a"]
    answer = proxy.embed({"model": V3, "input": texts}, API_KEY)
    spent = sum(request.tokens for request in emulator.requests[before:])
    assert answer.json()["usage"]["total_tokens"] == spent > 0
    assert [request.inputs for request in emulator.requests[before:]] == [2]  # a, c
    assert answer.headers["X-Embedcache-Cached"] == "2"
    data = answer.json()["data"]
    assert [item["index"] for item in data] == list(range(len(texts)))
    for item, text in zip(data, texts, strict=True):
        vector = np.asarray(item["embedding"], dtype=np.float32)
        assert vector.tobytes() == emulator.expected_embedding(text).tobytes()


def test_a_large_all_hit_request_is_answered_from_the_cache_too(
    emulator: JinaEmulator, proxy: Served
) -> None:
    body = {"model": V3, "input": [f"text number {i}" for i in range(300)]}
    first = proxy.embed(body, API_KEY)
    before = upstream_count(emulator)
    second = proxy.embed(body, API_KEY)
    assert upstream_count(emulator) == before
    assert second.json()["data"] == first.json()["data"]
    assert second.headers["X-Embedcache-Cached"] == "300"
    lines = proxy.http.get("/metrics").text.splitlines()
    assert 'embedcache_requests_total{outcome="cached"} 1' in lines


def test_every_output_changing_field_keys_the_cache(emulator: JinaEmulator, proxy: Served) -> None:
    base: dict[str, Any] = {"model": V3, "input": ["same text"]}
    variants: list[dict[str, Any]] = [
        {},
        {"task": "retrieval.passage"},
        {"dimensions": 256},
        {"normalized": False},
        {"truncate": True},
    ]
    for variant in variants:
        before = upstream_count(emulator)
        answer = proxy.embed(base | variant, API_KEY)
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"] == direct(emulator, base | variant).json()["data"]
        assert upstream_count(emulator) == before + 2  # the proxy's miss, then our check


def test_late_chunking_groups_are_cached_whole(emulator: JinaEmulator, proxy: Served) -> None:
    body = {"model": V3, "input": ["part one", "part two"], "late_chunking": True}
    expected = direct(emulator, body).json()["data"]
    assert proxy.embed(body, API_KEY).json()["data"] == expected
    before = upstream_count(emulator)
    assert proxy.embed(body, API_KEY).json()["data"] == expected
    reordered = proxy.embed(body | {"input": ["part two", "part one"]}, API_KEY)
    assert reordered.json()["data"] != list(reversed(expected))  # a different group
    assert upstream_count(emulator) == before + 1


@pytest.mark.parametrize(
    "body",
    [
        {"model": "jina-embeddings-v4", "input": ["text"], "return_tokenized_input": True},
        {"model": V3, "input": ["text"], "embedding_type": ["float", "base64"]},
        {"model": V3, "input": ["text"], "late_interaction": True},
    ],
    ids=["tokenized-input", "several-types", "unknown-field"],
)
def test_requests_the_cache_cannot_key_are_forwarded_and_never_stored(
    emulator: JinaEmulator, proxy: Served, body: dict[str, Any]
) -> None:
    expected = direct(emulator, body)
    for _ in range(2):
        before = upstream_count(emulator)
        answer = proxy.embed(body, API_KEY)
        assert answer.status_code == expected.status_code
        assert without_request_id(answer.json()) == without_request_id(expected.json())
        assert answer.headers["X-Embedcache-Cached"] == "0"
        assert upstream_count(emulator) == before + 1
    proxy.stop()
    with Store(proxy.cache_dir) as store:
        assert len(store) == 0


def test_upstream_errors_keep_the_status_detail_code_and_request_id(
    emulator: JinaEmulator, proxy: Served
) -> None:
    body = {"model": V3, "input": ["needs a key"]}
    expected = direct(emulator, body, key="jina_wrong").json()
    answer = proxy.embed(body, "jina_wrong")
    assert answer.status_code == 401
    got = answer.json()
    assert got["detail"] == expected["detail"]
    assert got["request_id"]
    assert got["request_id"] != expected["request_id"]

    emulator.inject(Fault(status=402))
    answer = proxy.embed(body, API_KEY)
    assert answer.status_code == 402
    assert "detail" in answer.json()


def test_a_request_without_any_key_is_a_401_before_any_upstream_call(
    emulator: JinaEmulator, proxy: Served
) -> None:
    answer = proxy.embed({"model": V3, "input": ["no key anywhere"]})
    assert answer.status_code == 401
    assert "JINAAI_API_KEY" in answer.json()["detail"]
    assert upstream_count(emulator) == 0


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"model": "jina-embeddings-v3", "input": ["x"], "task": "nope"}', "nope"),
        (b'{"model": "jina-embeddings-v3", "input": ["x"], "dimensions": 4096}', "dimensions"),
        (b'{"model": "jina-embeddings-v3", "input": ["x"], "normalized": "yes"}', "normalized"),
        (b"not json", "JSON"),
        (b'["x"]', "object"),
    ],
    ids=["task", "dimensions", "flag", "not-json", "not-object"],
)
def test_bad_requests_are_refused_locally_with_422(
    emulator: JinaEmulator, proxy: Served, content: bytes, fragment: str
) -> None:
    answer = proxy.http.post("/v1/embeddings", content=content)
    assert answer.status_code == 422
    assert fragment in answer.json()["detail"]
    assert upstream_count(emulator) == 0


def test_the_server_key_pays_when_the_client_sends_none(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    proxy = make_proxy(env={"JINAAI_API_KEY": API_KEY})
    answer = proxy.embed({"model": V3, "input": ["paid by the server"]})
    assert answer.status_code == 200, answer.text
    assert emulator.requests[-1].authorized


def test_with_a_token_clients_must_present_it_and_the_server_key_pays(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    token = "local-proxy-token"
    proxy = make_proxy(env={"JINAAI_API_KEY": API_KEY, "EMBEDCACHE_PROXY_TOKEN": token})
    body = {"model": V3, "input": ["guarded"]}
    for key in (None, "wrong-token", API_KEY):
        answer = proxy.embed(body, key)
        assert answer.status_code == 401
        assert "token" in answer.json()["detail"]
    assert proxy.http.get("/health").status_code == 200  # probes need no token
    assert upstream_count(emulator) == 0
    answer = proxy.embed(body, token)
    assert answer.status_code == 200, answer.text
    assert emulator.requests[-1].authorized  # the server's key, not the token


def test_health_and_prometheus_metrics(emulator: JinaEmulator, proxy: Served) -> None:
    health = proxy.http.get("/health")
    assert health.json()["status"] == "ok"
    proxy.embed({"model": V3, "input": ["m1", "m2"]}, API_KEY)
    proxy.embed({"model": V3, "input": ["m1"]}, API_KEY)
    proxy.embed({"model": V3, "input": ["x"], "task": "bad"}, API_KEY)
    metrics = proxy.http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    lines = set(metrics.text.splitlines())
    for line in (
        'embedcache_requests_total{outcome="fetched"} 1',
        'embedcache_requests_total{outcome="cached"} 1',
        'embedcache_requests_total{outcome="error"} 1',
        'embedcache_entries_total{result="hit"} 1',
        'embedcache_entries_total{result="miss"} 2',
        "embedcache_upstream_requests_total 1",
        f"embedcache_tokens_spent_total {emulator.requests[-1].tokens}",
        'embedcache_request_duration_seconds_bucket{le="+Inf"} 3',
        "embedcache_request_duration_seconds_count 3",
    ):
        assert line in lines, metrics.text


def test_unknown_routes_and_methods_answer_in_jinas_error_shape(proxy: Served) -> None:
    missing = proxy.http.post("/v2/embeddings", json={})
    assert missing.status_code == 404
    assert "detail" in missing.json()
    wrong = proxy.http.get("/v1/embeddings")
    assert wrong.status_code == 405
    assert "detail" in wrong.json()


def test_an_offline_proxy_serves_hits_and_answers_misses_with_503(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    online = make_proxy()
    online.embed({"model": V3, "input": ["kept"]}, API_KEY)
    online.stop()
    before = upstream_count(emulator)
    offline = make_proxy("--offline")
    assert offline.embed({"model": V3, "input": ["kept"]}).status_code == 200
    missing = offline.embed({"model": V3, "input": ["kept", "new"]}, API_KEY)
    assert missing.status_code == 503
    assert "offline" in missing.json()["detail"]
    assert upstream_count(emulator) == before


def metric(proxy: Served, name: str) -> float:
    """The value of an unlabelled metric on the proxy's ``/metrics``."""
    for line in proxy.http.get("/metrics").text.splitlines():
        if line.startswith(f"embedcache_{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no metric embedcache_{name}")


def test_concurrent_identical_requests_share_one_upstream_call(
    emulator: JinaEmulator, proxy: Served
) -> None:
    body = {"model": V3, "input": ["shared", "by", "everyone"]}
    clients = 8

    def call() -> httpx.Response:
        with httpx.Client(base_url=proxy.url, timeout=30) as http:
            headers = {"Authorization": f"Bearer {API_KEY}"}
            return http.post("/v1/embeddings", json=body, headers=headers)

    def all_in() -> bool:
        # Each client in the proxy either fetches (its request held upstream) or waits for
        # another's fetch; a second request held upstream already shows they were not shared.
        return gate.held > 1 or gate.held + metric(proxy, "waiting_calls") == clients

    # Upstream answers are held until every client is in, so all of them overlap the fetch.
    with ThreadPoolExecutor(clients) as pool, emulator.hold(times=clients) as gate:
        pending = [pool.submit(call) for _ in range(clients)]
        wait_for(all_in, lambda: f"{gate.held} upstream, {metric(proxy, 'waiting_calls')} waiting")
    answers = [answer.result(timeout=30) for answer in pending]
    assert upstream_count(emulator) == 1
    assert all(answer.status_code == 200 for answer in answers)
    assert (
        len({answer.content for answer in answers if answer.json()["usage"]["total_tokens"] == 0})
        == 1
    )
    cached = sorted(int(answer.headers["X-Embedcache-Cached"]) for answer in answers)
    assert cached == [0] + [3] * (clients - 1)


def refuses_connections(url: str) -> bool:
    where = urlsplit(url)
    try:
        socket.create_connection((where.hostname, where.port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_finishes_the_in_flight_fetch_and_commits_it(
    emulator: JinaEmulator, make_served: MakeServed
) -> None:
    proxy = make_served()
    body = {"model": V3, "input": ["in flight at shutdown"]}
    with ThreadPoolExecutor(1) as pool, emulator.hold() as gate:
        answer = pool.submit(proxy.embed, body, API_KEY)
        assert gate.arrived(1)  # the proxy's fetch is upstream, and held there
        proxy.process.send_signal(signal.SIGTERM)
        # Shutting down closes the listening socket first: only then is the fetch let go.
        wait_for(lambda: refuses_connections(proxy.url), "still accepting after SIGTERM")
    assert answer.result(timeout=30).status_code == 200
    proxy.process.wait(timeout=30)  # before stop(), whose own SIGTERM would force an exit
    # The server ends by the signal once shut down, so the exit status says "terminated".
    assert proxy.stop() == -signal.SIGTERM
    with Store(proxy.cache_dir) as store:
        assert len(store) == 1
