"""TEI's ``POST /embed`` and ``GET /info`` on ``embedcache serve``, replaying what Milvus's
``tei`` provider sends (shared/docs/clients.md), over loopback to the emulator."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from embedcache.proxy.tei import MAX_BODY_BYTES
from embedcache.storage.store import Store
from embedcache.testing import JinaEmulator

from .conftest import API_KEY, MakeProxy, wait_for
from .serving import ProxyInProcess, Served
from .test_proxy import direct, metric, upstream_count

V3 = "jina-embeddings-v3"
PASSAGE, QUERY = "retrieval.passage: ", "retrieval.query: "
DOCS = [f"Milvus document number {i} about vector search." for i in range(32)]


@pytest.fixture
def proxy(make_proxy: MakeProxy) -> Served:
    return make_proxy()


def milvus_embed(proxy: Served, texts: list[str], prompt: str = "", **fields: Any) -> Any:
    """What Milvus's tei provider posts: ``{"inputs": [prompt + text, ...]}`` plus
    ``truncate``/``truncation_direction`` when configured, with the credential as Bearer."""
    body: dict[str, Any] = {"inputs": [prompt + text for text in texts], **fields}
    return proxy.http.post("/embed", json=body, headers={"Authorization": f"Bearer {API_KEY}"})


def as_milvus_parses(answer: httpx.Response) -> list[list[float]]:
    """Milvus decodes the body into ``[][]float32``: a bare array of arrays of numbers."""
    assert answer.status_code == 200, answer.text
    rows = json.loads(answer.content)
    assert isinstance(rows, list)
    assert all(isinstance(row, list) for row in rows)
    assert all(isinstance(value, float) for row in rows for value in row)
    return rows


def jina_floats(emulator: JinaEmulator, texts: list[str], task: str) -> list[list[float]]:
    """The float values the API itself writes for ``texts`` with ``task``."""
    data = direct(emulator, {"model": V3, "input": texts, "task": task}).json()["data"]
    return [item["embedding"] for item in data]


def test_a_milvus_insert_batch_of_32_is_embedded_as_passages_and_a_repeat_is_cached(
    emulator: JinaEmulator, proxy: Served, float_style: str
) -> None:
    rows = as_milvus_parses(milvus_embed(proxy, DOCS, PASSAGE))
    sent = emulator.requests[-1].body
    assert sent is not None
    assert sent["task"] == "retrieval.passage"
    assert sent["input"] == DOCS  # the prompt removed before sending
    assert upstream_count(emulator) == 1
    # The API's own float text for the same request, in either style, in input order.
    assert rows == jina_floats(emulator, DOCS, "retrieval.passage")
    for row, doc in zip(rows, DOCS, strict=True):
        expected = emulator.expected_embedding(doc, task="retrieval.passage")
        assert np.asarray(row, dtype=np.float32).tobytes() == expected.tobytes()
    before = upstream_count(emulator)
    repeat = milvus_embed(proxy, DOCS, PASSAGE)
    assert as_milvus_parses(repeat) == rows
    assert repeat.headers["X-Embedcache-Cached"] == "32"
    assert upstream_count(emulator) == before


def test_a_milvus_search_prompt_embeds_the_query_with_the_query_task(
    emulator: JinaEmulator, proxy: Served
) -> None:
    question = "which database stores vectors?"
    rows = as_milvus_parses(milvus_embed(proxy, [question], QUERY))
    sent = emulator.requests[-1].body
    assert sent is not None
    assert (sent["task"], sent["input"]) == ("retrieval.query", [question])
    assert rows == jina_floats(emulator, [question], "retrieval.query")
    passage = as_milvus_parses(milvus_embed(proxy, [question], PASSAGE))
    assert passage != rows  # the same text as a document is another vector


def test_mixed_prompts_in_one_request_come_back_in_input_order_one_upstream_call_per_task(
    emulator: JinaEmulator, proxy: Served
) -> None:
    inputs = [PASSAGE + "doc a", QUERY + "query b", "plain c", QUERY + "query d", PASSAGE + "doc a"]
    answer = proxy.http.post("/embed", json={"inputs": inputs}, headers=_auth())
    rows = as_milvus_parses(answer)
    sent = [(r.body or {}).get("task") for r in emulator.requests]
    assert sent == ["retrieval.passage", "retrieval.query"]  # first appearance first
    expected = [
        ("doc a", "retrieval.passage"),
        ("query b", "retrieval.query"),
        ("plain c", "retrieval.passage"),  # no prefix: the server's --tei-task
        ("query d", "retrieval.query"),
        ("doc a", "retrieval.passage"),
    ]
    for row, (text, task) in zip(rows, expected, strict=True):
        vector = emulator.expected_embedding(text, task=task)
        assert np.asarray(row, dtype=np.float32).tobytes() == vector.tobytes()


def test_an_unknown_prefix_is_part_of_the_text(emulator: JinaEmulator, proxy: Served) -> None:
    texts = [
        "passage: not a jina task",
        "Retrieval.Query: case matters",
        "retrieval.query:no space",
    ]
    as_milvus_parses(proxy.http.post("/embed", json={"inputs": texts}, headers=_auth()))
    sent = emulator.requests[-1].body
    assert sent is not None
    assert (sent["task"], sent["input"]) == ("retrieval.passage", texts)


def test_a_single_string_input_and_the_library_share_entries_with_milvus_inserts(
    emulator: JinaEmulator, proxy: Served
) -> None:
    milvus_embed(proxy, DOCS[:2], PASSAGE)
    before = upstream_count(emulator)
    single = proxy.http.post("/embed", json={"inputs": PASSAGE + DOCS[0]}, headers=_auth())
    assert len(as_milvus_parses(single)) == 1
    # The Jina route with the same task is a hit too: the TEI route keys the bare text.
    jina = proxy.embed({"model": V3, "task": "retrieval.passage", "input": DOCS[:2]}, API_KEY)
    assert jina.headers["X-Embedcache-Cached"] == "2"
    assert [item["embedding"] for item in jina.json()["data"]] == as_milvus_parses(
        milvus_embed(proxy, DOCS[:2], PASSAGE)
    )
    assert upstream_count(emulator) == before


@pytest.mark.parametrize(
    ("fields", "upstream_field"),
    [
        ({"normalize": False}, {"normalized": False}),
        ({"truncate": True}, {"truncate": True}),
        ({"truncate": True, "truncation_direction": "right"}, {"truncate": True}),
    ],
    ids=["normalize-false", "truncate", "truncate-right"],
)
def test_tei_options_map_to_jina_fields_and_key_the_cache(
    emulator: JinaEmulator,
    proxy: Served,
    fields: dict[str, Any],
    upstream_field: dict[str, Any],
) -> None:
    plain = as_milvus_parses(milvus_embed(proxy, ["same text"], PASSAGE))
    before = upstream_count(emulator)
    varied = as_milvus_parses(milvus_embed(proxy, ["same text"], PASSAGE, **fields))
    assert upstream_count(emulator) == before + 1  # not the plain request's entry
    sent = emulator.requests[-1].body
    assert sent is not None
    assert {name: sent.get(name) for name in upstream_field} == upstream_field
    body = {"model": V3, "input": ["same text"], "task": "retrieval.passage", **upstream_field}
    assert varied == [direct(emulator, body).json()["data"][0]["embedding"]]
    if "normalized" in upstream_field:
        assert varied != plain


def test_tei_defaults_send_the_apis_defaults_and_share_entries(
    emulator: JinaEmulator, proxy: Served
) -> None:
    plain = as_milvus_parses(milvus_embed(proxy, ["defaults"], PASSAGE))
    sent = emulator.requests[-1].body
    assert sent is not None
    assert not {"normalized", "truncate"} & sent.keys()
    before = upstream_count(emulator)
    # LlamaIndex sends truncate always; TEI's defaults are normalize true, truncate false.
    for fields in ({"normalize": True}, {"truncate": False}, {"truncation_direction": "Left"}):
        assert as_milvus_parses(milvus_embed(proxy, ["defaults"], PASSAGE, **fields)) == plain
    assert upstream_count(emulator) == before


@pytest.mark.parametrize(
    ("content", "status", "error_type", "fragment"),
    [
        (b"not json", 422, "validation", "JSON"),
        (b'["x"]', 422, "validation", "object"),
        (b"{}", 422, "validation", "inputs"),
        (b'{"inputs": 3}', 422, "validation", "inputs"),
        (b'{"inputs": ["ok", 17]}', 422, "validation", "inputs[1]"),
        (b'{"inputs": [[101, 102]]}', 422, "validation", "inputs[0]"),
        (b'{"inputs": []}', 400, "empty", "empty"),
        (b'{"inputs": ["x"], "normalize": "yes"}', 422, "validation", "normalize"),
        (b'{"inputs": ["x"], "truncate": 1}', 422, "validation", "truncate"),
        (b'{"inputs": ["x"], "truncation_direction": "up"}', 422, "validation", "direction"),
        (
            b'{"inputs": ["x"], "truncate": true, "truncation_direction": "left"}',
            422,
            "validation",
            "Left",
        ),
        (b'{"inputs": ["x"], "prompt_name": "query"}', 422, "validation", "prompt_name"),
        (b'{"inputs": ["x"], "dimensions": 256}', 422, "validation", "dimensions"),
        (json.dumps({"inputs": ["x"] * 2049}).encode(), 413, "validation", "batch size"),
        (json.dumps({"inputs": ["x" * MAX_BODY_BYTES]}).encode(), 413, "validation", "bytes"),
    ],
    ids=[
        "not-json",
        "not-object",
        "no-inputs",
        "inputs-number",
        "inputs-mixed",
        "token-ids",
        "empty",
        "normalize-type",
        "truncate-type",
        "direction-unknown",
        "truncate-left",
        "prompt-name-unknown",
        "unknown-field",
        "too-many",
        "oversize-body",
    ],
)
def test_bad_tei_requests_get_a_one_line_tei_error_and_nothing_is_spent_or_cached(
    emulator: JinaEmulator,
    proxy: Served,
    content: bytes,
    status: int,
    error_type: str,
    fragment: str,
) -> None:
    answer = proxy.http.post("/embed", content=content, headers=_auth())
    assert answer.status_code == status
    body = answer.json()
    assert body.keys() == {"error", "error_type"}
    assert body["error_type"] == error_type
    assert fragment in body["error"]
    assert "\n" not in body["error"]
    assert upstream_count(emulator) == 0
    proxy.stop()
    with Store(proxy.cache_dir) as store:
        assert len(store) == 0


def test_normalize_false_on_a_model_without_the_field_is_a_clear_error(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    proxy = make_proxy("--tei-model", "jina-embeddings-v4", "--tei-task", "retrieval.query")
    answer = milvus_embed(proxy, ["x"], normalize=False)
    assert answer.status_code == 422
    assert "normalize" in answer.json()["error"]
    assert upstream_count(emulator) == 0
    rows = as_milvus_parses(milvus_embed(proxy, ["x"], PASSAGE))  # v4 knows the task too
    sent = emulator.requests[-1].body
    assert sent is not None
    assert (sent["model"], sent["task"], sent["input"]) == (
        "jina-embeddings-v4",
        "retrieval.passage",
        ["x"],
    )
    assert len(rows[0]) == 2048


def test_prompt_name_sets_the_task_and_a_text_prefix_still_wins(
    emulator: JinaEmulator, proxy: Served
) -> None:
    body = {"inputs": ["asked", PASSAGE + "stored"], "prompt_name": "retrieval.query"}
    as_milvus_parses(proxy.http.post("/embed", json=body, headers=_auth()))
    sent = [((r.body or {}).get("task"), (r.body or {}).get("input")) for r in emulator.requests]
    assert sent == [("retrieval.query", ["asked"]), ("retrieval.passage", ["stored"])]


def test_the_server_settings_choose_the_tei_model_and_default_task(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    proxy = make_proxy("--tei-task", "text-matching")
    as_milvus_parses(milvus_embed(proxy, ["settings"]))
    sent = emulator.requests[-1].body
    assert sent is not None
    assert (sent["model"], sent["task"]) == (V3, "text-matching")
    info = proxy.http.get("/info").json()
    assert info["model_id"] == V3
    assert info["max_client_batch_size"] == 2048
    assert info["embedcache"]["task"] == "text-matching"
    assert QUERY in info["embedcache"]["task_prefixes"]


def test_a_tei_task_the_model_does_not_take_stops_the_server_at_start(
    emulator: JinaEmulator, cache_dir: Path
) -> None:
    with pytest.raises(RuntimeError, match="tei-task"):
        ProxyInProcess(emulator.url, cache_dir, "--tei-task", "retrieval.nope")


def test_with_a_token_tei_clients_must_present_it_and_nothing_is_spent_before(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    token = "local-proxy-token"
    proxy = make_proxy(env={"JINAAI_API_KEY": API_KEY, "EMBEDCACHE_PROXY_TOKEN": token})
    for key in (None, "wrong-token", API_KEY):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        answer = proxy.http.post("/embed", json={"inputs": ["guarded"]}, headers=headers)
        assert answer.status_code == 401
        assert answer.json().keys() == {"error", "error_type"}
    assert upstream_count(emulator) == 0
    allowed = proxy.http.post(
        "/embed", json={"inputs": ["guarded"]}, headers={"Authorization": f"Bearer {token}"}
    )
    assert len(as_milvus_parses(allowed)) == 1
    assert emulator.requests[-1].authorized  # the server's key paid


def test_with_an_allowlist_a_cached_tei_vector_is_not_served_to_an_unlisted_key(
    emulator: JinaEmulator, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{API_KEY}\n", encoding="utf-8")
    proxy = make_proxy("--allow-keys", str(keys))
    keys.unlink()  # the suite's leak check scans the disk for the key
    as_milvus_parses(milvus_embed(proxy, ["team only"], PASSAGE))
    other = {"Authorization": "Bearer jina_" + "x" * 60}
    refused = proxy.http.post("/embed", json={"inputs": [PASSAGE + "team only"]}, headers=other)
    assert refused.status_code == 401
    assert refused.json()["error_type"] == "validation"
    assert upstream_count(emulator) == 1


def test_with_verify_keys_a_key_the_upstream_refuses_gets_no_cached_tei_vector(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    proxy = make_proxy("--verify-keys")
    as_milvus_parses(milvus_embed(proxy, ["verified"], PASSAGE))  # cached for the good key
    before = upstream_count(emulator)
    other = {"Authorization": "Bearer jina_" + "y" * 60}
    refused = proxy.http.post("/embed", json={"inputs": [PASSAGE + "verified"]}, headers=other)
    assert refused.status_code == 401
    assert refused.json().keys() == {"error", "error_type"}
    # Only the other key's probe went upstream, and no vector came back to it.
    assert [(r.body or {}).get("input") for r in emulator.requests[before:]] == [["a"]]


def test_an_upstream_refusal_keeps_its_status_in_teis_error_shape(
    emulator: JinaEmulator, proxy: Served
) -> None:
    answer = proxy.http.post(
        "/embed", json={"inputs": ["x"]}, headers={"Authorization": "Bearer jina_wrong"}
    )
    assert answer.status_code == 401
    assert answer.json().keys() == {"error", "error_type"}


def test_a_wrong_method_on_a_tei_path_answers_in_teis_error_shape(proxy: Served) -> None:
    wrong = proxy.http.get("/embed")
    assert wrong.status_code == 405
    assert wrong.json().keys() == {"error", "error_type"}


def test_an_offline_proxy_serves_tei_hits_and_answers_misses_with_503_unhealthy(
    emulator: JinaEmulator, make_proxy: MakeProxy
) -> None:
    online = make_proxy()
    rows = as_milvus_parses(milvus_embed(online, ["kept"], PASSAGE))
    online.stop()
    before = upstream_count(emulator)
    offline = make_proxy("--offline")
    assert as_milvus_parses(milvus_embed(offline, ["kept"], PASSAGE)) == rows
    missing = milvus_embed(offline, ["kept", "new"], PASSAGE)
    assert missing.status_code == 503
    assert missing.json()["error_type"] == "unhealthy"
    assert "offline" in missing.json()["error"]
    assert upstream_count(emulator) == before


def test_concurrent_identical_milvus_batches_share_one_upstream_call(
    emulator: JinaEmulator, proxy: Served
) -> None:
    clients = 6

    def call() -> httpx.Response:
        with httpx.Client(base_url=proxy.url, timeout=30) as http:
            body = {"inputs": [PASSAGE + doc for doc in DOCS]}
            return http.post("/embed", json=body, headers=_auth())

    def all_in() -> bool:
        return gate.held > 1 or gate.held + metric(proxy, "waiting_calls") == clients

    with ThreadPoolExecutor(clients) as pool, emulator.hold(times=clients) as gate:
        pending = [pool.submit(call) for _ in range(clients)]
        wait_for(all_in, lambda: f"{gate.held} upstream, {metric(proxy, 'waiting_calls')} waiting")
    answers = [answer.result(timeout=30) for answer in pending]
    assert upstream_count(emulator) == 1
    assert len({answer.content for answer in answers}) == 1
    assert all(len(as_milvus_parses(answer)) == 32 for answer in answers)
    cached = sorted(int(answer.headers["X-Embedcache-Cached"]) for answer in answers)
    assert cached == [0] + [32] * (clients - 1)


def test_tei_requests_are_counted_in_the_metrics(emulator: JinaEmulator, proxy: Served) -> None:
    milvus_embed(proxy, ["m1", "m2"], PASSAGE)
    milvus_embed(proxy, ["m1"], PASSAGE)
    proxy.http.post("/embed", content=b"{}", headers=_auth())
    lines = set(proxy.http.get("/metrics").text.splitlines())
    for line in (
        'embedcache_requests_total{outcome="fetched"} 1',
        'embedcache_requests_total{outcome="cached"} 1',
        'embedcache_requests_total{outcome="error"} 1',
    ):
        assert line in lines


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}
