"""The bundled Jina emulator, over real loopback HTTP with httpx."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from typing import Any

import httpx
import numpy as np
import pytest

from embedcache.testing import Fault, Gate, JinaEmulator, RecordedRequest
from embedcache.tokens import estimate_tokens

from .conftest import API_KEY
from .emulator_module import post_to_module, running_module

V3 = "jina-embeddings-v3"
PATH = "/v1/embeddings"


def embed(http: httpx.Client, **body: Any) -> httpx.Response:
    body.setdefault("model", V3)
    return http.post(PATH, json=body)


def vectors(response: httpx.Response) -> list[np.ndarray]:
    assert response.status_code == 200, response.text
    return [np.array(item["embedding"], dtype=np.float32) for item in response.json()["data"]]


def from_base64(payload: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(payload), dtype="<f4")


def assert_jina_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert isinstance(body["detail"], str)
    assert len(body["request_id"]) == 16
    int(body["request_id"], 16)
    assert response.headers["x-request-id"] == body["request_id"]
    return body


# --- routing and auth -----------------------------------------------------------------


def test_health_is_ok_without_a_key(emulator: JinaEmulator) -> None:
    with httpx.Client() as anonymous:
        response = anonymous.get(emulator.url + "/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_unknown_path_is_404_with_detail(http: httpx.Client) -> None:
    body = assert_jina_error(http.get("/v1/nothing"), 404, "RESOURCE_NOT_FOUND")
    assert body["detail"] == "Not Found"
    assert http.get(PATH).status_code == 404  # embeddings is POST only


def test_missing_bearer_is_401(emulator: JinaEmulator) -> None:
    with httpx.Client() as anonymous:
        response = anonymous.post(emulator.url + PATH, json={"model": V3, "input": "x"})
    assert_jina_error(response, 401, "AUTH_MISSING_API_KEY")
    assert emulator.requests[0].authorized is False
    assert emulator.requests[0].tokens == 0


def test_wrong_bearer_is_401_invalid_key(emulator: JinaEmulator) -> None:
    with httpx.Client(headers={"Authorization": "Bearer jina_wrong"}) as wrong:
        response = wrong.post(emulator.url + PATH, json={"model": V3, "input": "x"})
    assert_jina_error(response, 401, "AUTH_INVALID_API_KEY")


def test_auth_is_checked_before_the_body(emulator: JinaEmulator) -> None:
    with httpx.Client() as anonymous:
        response = anonymous.post(emulator.url + PATH, content=b"not json")
    assert response.status_code == 401


def test_any_bearer_is_accepted_without_a_configured_key() -> None:
    with JinaEmulator() as emu, httpx.Client(headers={"Authorization": "Bearer x"}) as client:
        response = client.post(emu.url + PATH, json={"model": V3, "input": "x"})
        assert response.status_code == 200
        assert emu.requests[0].authorized is True


def test_request_log_never_holds_the_key(emulator: JinaEmulator, http: httpx.Client) -> None:
    embed(http, input=["a"])
    with httpx.Client(headers={"Authorization": "Bearer " + API_KEY + "x"}) as wrong:
        refused = wrong.post(emulator.url + PATH, json={"model": V3, "input": "a"})
    emulator.inject(Fault(status=401))
    injected = embed(http, input=["a"])
    visible = repr(emulator) + repr(emulator.requests) + refused.text + injected.text
    visible += "".join(str(r.headers) for r in (refused, injected))
    assert API_KEY not in visible
    assert [r.status for r in emulator.requests] == [200, 401, 401]


# --- vectors --------------------------------------------------------------------------


def test_response_has_the_reference_shape(http: httpx.Client) -> None:
    response = embed(http, input=["alpha", "beta gamma"], task="retrieval.passage")
    body = response.json()
    assert list(body) == ["model", "object", "usage", "data"]
    assert body["model"] == V3
    assert body["object"] == "list"
    tokens = estimate_tokens("alpha") + estimate_tokens("beta gamma")
    assert body["usage"] == {"total_tokens": tokens, "prompt_tokens": tokens}
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0), ("embedding", 1)]
    assert all(len(d["embedding"]) == 1024 for d in body["data"])
    assert response.headers["content-type"] == "application/json"
    assert "content-encoding" not in response.headers


def test_same_text_gives_same_vector_across_emulators(http: httpx.Client) -> None:
    first = embed(http, input=["déjà vu"], task="text-matching")
    with (
        JinaEmulator() as other,
        httpx.Client(headers={"Authorization": "Bearer y"}) as client,
    ):
        second = client.post(
            other.url + PATH, json={"model": V3, "input": ["déjà vu"], "task": "text-matching"}
        )
    assert first.json()["data"] == second.json()["data"]


def test_vector_does_not_depend_on_the_rest_of_the_batch(http: httpx.Client) -> None:
    alone = vectors(embed(http, input=["b"]))[0]
    batched = vectors(embed(http, input=["a", "b", "c"]))[1]
    assert alone.tobytes() == batched.tobytes()


def test_model_task_and_text_each_change_the_vector(http: httpx.Client) -> None:
    base = vectors(embed(http, input="t", task="retrieval.query"))[0]
    for other in (
        embed(http, input="t", task="retrieval.passage"),
        embed(http, input="u", task="retrieval.query"),
        embed(http, input="t", task="retrieval.query", model="jina-embeddings-v5-text-small"),
    ):
        assert float(np.dot(base, vectors(other)[0])) < 0.5


def test_expected_embedding_is_bit_identical_to_the_wire(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    response = embed(http, input=["x", "y"], task="retrieval.passage", embedding_type="base64")
    expected = emulator.expected_embedding("y", task="retrieval.passage")
    assert expected.dtype == np.float32
    assert from_base64(response.json()["data"][1]["embedding"]).tobytes() == expected.tobytes()
    assert float(np.linalg.norm(expected)) == pytest.approx(1.0, abs=1e-6)


def test_expected_embedding_rejects_what_the_server_rejects(emulator: JinaEmulator) -> None:
    with pytest.raises(ValueError, match="less than or equal to 1024"):
        emulator.expected_embedding("x", dimensions=2000)
    with pytest.raises(ValueError, match="not found"):
        emulator.expected_embedding("x", model="no-such-model")


@pytest.mark.parametrize("style", ["float64", "float32"])
def test_base64_and_float_encode_the_same_float32_values_in_either_float_style(
    emulator: JinaEmulator, http: httpx.Client, style: str
) -> None:
    emulator.float_style = style
    floats = embed(http, input="same", embedding_type="float").json()["data"][0]["embedding"]
    packed = embed(http, input="same", embedding_type="base64").json()["data"][0]["embedding"]
    decoded = from_base64(packed)
    assert decoded.tobytes() == np.array(floats, dtype=np.float32).tobytes()
    if style == "float64":  # float64 round-trip digits of each float32 value (§12, Milvus)
        assert floats == [float(value) for value in decoded]
    else:  # the shortest decimal of each float32 (about 8 digits, the docs playground)
        assert floats == [float(str(value)) for value in decoded]
    assert floats != [
        float(value) if style == "float32" else float(str(value)) for value in decoded
    ]


def test_float_text_is_float64_digits_by_default_and_the_style_is_checked() -> None:
    with JinaEmulator(api_key=API_KEY) as emu:
        assert emu.float_style == "float64"
        text = httpx.post(
            emu.url + PATH,
            json={"model": V3, "input": "x"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ).text
        first = text.split('"embedding":[', 1)[1].split(",", 1)[0]
        assert first == repr(float(emu.expected_embedding("x")[0]))
        with pytest.raises(ValueError, match="float_style"):
            emu.float_style = "float16"
    with pytest.raises(ValueError, match="float_style"):
        JinaEmulator(float_style="shortest")


def test_several_encodings_write_their_float_in_the_float_style(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    emulator.float_style = "float32"
    embedding = embed(http, input="both", embedding_type=["float", "base64"]).json()["data"][0][
        "embedding"
    ]
    assert embedding["float"] == [float(str(value)) for value in from_base64(embedding["base64"])]


def test_binary_and_ubinary_are_packed_sign_bits(http: httpx.Client) -> None:
    response = embed(http, input="bits", embedding_type=["float", "binary", "ubinary", "base64"])
    embedding = response.json()["data"][0]["embedding"]
    assert list(embedding) == ["float", "binary", "ubinary", "base64"]
    signs = np.array(embedding["float"]) > 0
    assert len(embedding["ubinary"]) == 1024 // 8
    assert np.unpackbits(np.array(embedding["ubinary"], dtype=np.uint8)).astype(bool).tolist() == (
        signs.tolist()
    )
    assert [b + 128 for b in embedding["binary"]] == embedding["ubinary"]
    assert min(embedding["binary"]) >= -128
    assert max(embedding["binary"]) <= 127


def test_encoding_type_alias_is_accepted(http: httpx.Client) -> None:
    response = embed(http, input="a", encoding_type="base64")
    assert isinstance(response.json()["data"][0]["embedding"], str)


@pytest.mark.parametrize("value", ["int8", [], ["float", "nope"], 3])
def test_invalid_embedding_type_is_422(http: httpx.Client, value: object) -> None:
    assert_jina_error(embed(http, input="a", embedding_type=value), 422, "INPUT_VALIDATION_ERROR")


def test_dimensions_truncates_then_renormalises(emulator: JinaEmulator, http: httpx.Client) -> None:
    short = vectors(embed(http, input="m", dimensions=64, task="text-matching"))[0]
    raw = emulator.expected_embedding("m", task="text-matching", normalized=False)
    assert short.shape == (64,)
    assert float(np.linalg.norm(short)) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(short, raw[:64] / np.linalg.norm(raw[:64]), rtol=1e-5)


@pytest.mark.parametrize(
    ("model", "dimensions", "message"),
    [
        (V3, 1025, "Input should be less than or equal to 1024"),
        ("jina-embeddings-v5-text-small", 2048, "Input should be less than or equal to 1024"),
        (V3, 0, "Input should be greater than or equal to 1"),
        (V3, "64", "valid integer"),
    ],
)
def test_dimensions_out_of_range_is_422(
    http: httpx.Client, model: str, dimensions: object, message: str
) -> None:
    response = embed(http, model=model, input="a", dimensions=dimensions)
    assert message in assert_jina_error(response, 422, "INPUT_VALIDATION_ERROR")["detail"]


def test_normalized_false_returns_the_raw_draw(http: httpx.Client) -> None:
    raw = vectors(embed(http, input="n", normalized=False))[0]
    assert float(np.linalg.norm(raw)) > 10  # a 1024-d standard normal has norm ~32
    unit = vectors(embed(http, input="n"))[0]
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw), rtol=1e-5)


def test_models_without_normalized_field_always_normalise(http: httpx.Client) -> None:
    response = embed(http, model="jina-code-embeddings-0.5b", input="def f(): pass")
    assert float(np.linalg.norm(vectors(response)[0])) == pytest.approx(1.0, abs=1e-6)


def test_unknown_task_is_422_naming_the_valid_ones(http: httpx.Client) -> None:
    response = embed(http, input="a", task="clustering")
    detail = assert_jina_error(response, 422, "INPUT_VALIDATION_ERROR")["detail"]
    assert "separation" in detail
    assert "retrieval.query" in detail


def test_v2_ignores_task_dimensions_and_late_chunking_false_like_pymilvus_sends(
    http: httpx.Client,
) -> None:
    model = "jina-embeddings-v2-base-en"
    plain = vectors(embed(http, model=model, input=["a"]))[0]
    sent = {"task": "retrieval.passage", "late_chunking": False, "dimensions": 768}
    pymilvus = embed(http, model=model, input=["a"], **sent)
    assert vectors(pymilvus)[0].tobytes() == plain.tobytes()
    assert plain.shape == (768,)


def test_late_chunking_vector_depends_on_group_order(http: httpx.Client) -> None:
    forward = vectors(embed(http, input=["a", "b", "c"], late_chunking=True))
    backward = vectors(embed(http, input=["c", "b", "a"], late_chunking=True))
    swapped_tail = vectors(embed(http, input=["a", "c", "b"], late_chunking=True))
    assert len(forward) == 3
    assert forward[0].tobytes() != backward[2].tobytes()
    assert forward[1].tobytes() != backward[1].tobytes()
    assert forward[0].tobytes() != swapped_tail[0].tobytes()
    again = vectors(embed(http, input=["a", "b", "c"], late_chunking=True))
    assert [v.tobytes() for v in again] == [v.tobytes() for v in forward]


def test_late_chunking_vector_depends_on_the_other_items(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    group = vectors(embed(http, input=["a", "b"], late_chunking=True))
    other_group = vectors(embed(http, input=["a", "d"], late_chunking=True))
    assert group[0].tobytes() != other_group[0].tobytes()
    assert group[0].tobytes() != emulator.expected_embedding("a").tobytes()
    assert float(np.linalg.norm(group[0])) == pytest.approx(1.0, abs=1e-6)
    alone = vectors(embed(http, input=["a"], late_chunking=True))[0]
    assert alone.tobytes() == emulator.expected_embedding("a").tobytes()


def test_late_chunking_on_a_model_without_it_is_422(http: httpx.Client) -> None:
    response = embed(http, model="jina-embeddings-v5-text-small", input=["a"], late_chunking=True)
    assert "late_chunking" in assert_jina_error(response, 422, "INPUT_VALIDATION_ERROR")["detail"]


def test_string_textdoc_and_list_inputs_are_equivalent(http: httpx.Client) -> None:
    forms = [embed(http, input=form) for form in ("q", {"text": "q"}, ["q"], [{"text": "q"}])]
    assert len({json.dumps(r.json()["data"]) for r in forms}) == 1


def test_empty_string_input_is_accepted(emulator: JinaEmulator, http: httpx.Client) -> None:
    response = embed(http, input=[""], task=None, late_chunking=False)
    assert len(vectors(response)[0]) == 1024
    assert emulator.requests[0].tokens == 0


def test_images_are_accepted_only_by_multimodal_models(http: httpx.Client) -> None:
    items = [{"image": "https://example.com/a.png"}, {"url": "https://example.com/a.png"}, "cat"]
    response = embed(http, model="jina-clip-v1", input=items)
    got = vectors(response)
    assert got[0].tobytes() == got[1].tobytes()
    assert response.json()["usage"]["total_tokens"] == 2000 + estimate_tokens("cat")
    rejected = embed(http, input=[{"bytes": "aGVsbG8="}])
    detail = assert_jina_error(rejected, 422, "INPUT_VALIDATION_ERROR")["detail"]
    assert "text inputs only" in detail


@pytest.mark.parametrize(
    "body",
    [
        {"input": "a"},
        {"model": V3},
        {"model": V3, "input": []},
        {"model": V3, "input": [1]},
        {"model": V3, "input": "a", "normalized": "yes"},
        {"model": V3, "input": "a", "prompt_name": "query"},
    ],
    ids=["no-model", "no-input", "empty-list", "number-item", "non-bool", "extra-field"],
)
def test_schema_violations_are_422(http: httpx.Client, body: dict[str, Any]) -> None:
    assert_jina_error(http.post(PATH, json=body), 422, "INPUT_VALIDATION_ERROR")


def test_extra_field_is_named_in_the_detail(http: httpx.Client) -> None:
    response = embed(http, input="a", user="me")
    assert response.json()["detail"] == "user: Extra inputs are not permitted"


def test_invalid_json_is_422(http: httpx.Client) -> None:
    assert_jina_error(http.post(PATH, content=b'{"model": '), 422, "INPUT_VALIDATION_ERROR")


def test_unknown_model_is_400_listing_available_models(http: httpx.Client) -> None:
    body = assert_jina_error(embed(http, model="jina-x", input="a"), 400, "INPUT_MODEL_NOT_FOUND")
    assert body["detail"].startswith("Model 'jina-x' not found. Available models: ")
    assert V3 in body["detail"]


def test_too_many_items_is_400_with_jina_detail(emulator: JinaEmulator, http: httpx.Client) -> None:
    response = embed(http, input=["x"] * 2049)
    assert response.status_code == 400
    assert response.json()["detail"] == (
        '"input" length 2049 is larger than the largest allowed size 2048'
    )
    assert emulator.requests[0].inputs == 2049
    assert embed(http, input=["x"] * 2048, embedding_type="base64").status_code == 200


def test_v4_item_limit_is_512_with_its_own_detail(http: httpx.Client) -> None:
    response = embed(http, model="jina-embeddings-v4", input=["x"] * 513)
    assert response.status_code == 400
    assert response.json()["detail"] == (
        "Validation error: 'body -> jina-embeddings-v4' Each input list can contain at most "
        "512 items."
    )


def test_too_long_input_is_400_unless_truncate(emulator: JinaEmulator, http: httpx.Client) -> None:
    text = "word " * 8193
    refused = embed(http, input=["ok", text])
    body = assert_jina_error(refused, 400, "INPUT_TOKEN_LIMIT_EXCEEDED")
    assert "8192" in body["detail"]
    assert "input 1" in body["detail"]
    cut = embed(http, input=["ok", text], truncate=True)
    assert cut.json()["usage"]["total_tokens"] == estimate_tokens("ok") + 8192
    assert vectors(cut)[1].tobytes() == emulator.expected_embedding(text).tobytes()
    assert vectors(cut)[1].tobytes() != emulator.expected_embedding("word " * 8000).tobytes()


def test_usage_is_logged_and_errors_charge_nothing(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    ok = embed(http, input=["one two three", "four"])
    embed(http, input="x", dimensions=5000)
    tokens = [r.tokens for r in emulator.requests]
    assert tokens == [ok.json()["usage"]["total_tokens"], 0]
    assert tokens[0] == estimate_tokens("one two three") + estimate_tokens("four")


# --- faults ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, "AUTH_INVALID_API_KEY"),
        (429, "RATE_REQUEST_LIMIT_EXCEEDED"),
        (500, "INTERNAL_ERROR"),
        (503, "SERVICE_UNAVAILABLE"),
        (504, "SERVICE_TIMEOUT"),
        (502, "HTTP_502"),
    ],
)
def test_status_fault_answers_a_jina_shaped_error(
    emulator: JinaEmulator, http: httpx.Client, status: int, code: str
) -> None:
    emulator.inject(Fault(status=status))
    assert_jina_error(embed(http, input="a"), status, code)
    assert emulator.requests[0].fault == Fault(status=status)
    assert emulator.requests[0].tokens == 0


def test_retry_after_fault_is_sent_then_cleared(emulator: JinaEmulator, http: httpx.Client) -> None:
    emulator.inject(Fault(status=429, retry_after="3"))
    limited = embed(http, input="a")
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "3"
    after = embed(http, input="a")
    assert after.status_code == 200
    assert "retry-after" not in after.headers
    assert [r.status for r in emulator.requests] == [429, 200]


def test_faults_are_taken_in_order_and_times_repeats_one(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    emulator.inject(Fault(status=503, times=2), Fault(status=500))
    statuses = [embed(http, input="a").status_code for _ in range(4)]
    assert statuses == [503, 503, 500, 200]


def test_drop_fault_raises_and_is_logged_without_status(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    emulator.inject(Fault(drop=True))
    with pytest.raises(httpx.RemoteProtocolError):
        embed(http, input="a")
    assert emulator.requests[0].status is None
    assert emulator.requests[0].inputs == 1
    assert embed(http, input="a").status_code == 200  # the client reconnects


def test_cut_body_fault_raises_mid_body(emulator: JinaEmulator, http: httpx.Client) -> None:
    emulator.inject(Fault(cut_body=True))
    with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
        embed(http, input="a")
    assert emulator.requests[0].status == 200


def test_delay_fault_trips_a_client_read_timeout(emulator: JinaEmulator) -> None:
    emulator.inject(Fault(delay=2.0))
    with (
        httpx.Client(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=0.05) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.post(emulator.url + PATH, json={"model": V3, "input": "a"})


def test_delay_and_latency_hold_the_answer_back(emulator: JinaEmulator, http: httpx.Client) -> None:
    emulator.inject(Fault(delay=0.1))
    started = time.monotonic()
    assert embed(http, input="a").status_code == 200
    assert time.monotonic() - started >= 0.1
    emulator.latency = 0.05
    started = time.monotonic()
    assert http.get("/health").status_code == 200
    assert time.monotonic() - started >= 0.05


def test_a_held_request_waits_in_flight_until_its_gate_is_released(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    with ThreadPoolExecutor(1) as pool:
        with emulator.hold() as gate:
            held = pool.submit(embed, http, input="held")
            assert gate.arrived(1)
            assert gate.held == 1
            # Only the next request takes the hold: this one passes the held one.
            assert embed(http, input="passes").status_code == 200
            assert not held.done()
            assert emulator.received_texts() == ["passes"]  # logged when answered
            assert not gate.arrived(2, timeout=0.01)
        assert held.result(timeout=10).status_code == 200
    assert gate.held == 0
    assert emulator.received_texts() == ["passes", "held"]


def test_a_gate_holds_its_times_requests_at_once_and_opens_for_good(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    gate = emulator.hold(times=3)
    with ThreadPoolExecutor(2) as pool:
        pending = [pool.submit(embed, http, input=f"t{i}") for i in range(2)]
        assert gate.arrived(2)
        assert gate.held == 2
        gate.release()
        assert [answer.result(timeout=10).status_code for answer in pending] == [200, 200]
    assert embed(http, input="t2").status_code == 200  # the third use: straight through
    assert gate.arrived(3, timeout=0)
    assert embed(http, input="t3").status_code == 200  # no fault left
    assert [r.fault for r in emulator.requests] == [Fault(hold=gate, times=3)] * 3 + [None]


def test_a_hold_combines_with_another_fault(emulator: JinaEmulator, http: httpx.Client) -> None:
    gate = Gate()
    emulator.inject(Fault(hold=gate, status=503))
    with ThreadPoolExecutor(1) as pool, gate:
        answer = pool.submit(embed, http, input="a")
        assert gate.arrived(1)
        assert not answer.done()
    assert_jina_error(answer.result(timeout=10), 503, "SERVICE_UNAVAILABLE")


def test_stopping_the_emulator_lets_held_requests_go() -> None:
    emu = JinaEmulator().start()
    gate = emu.hold()
    with (
        httpx.Client(headers={"Authorization": "Bearer k"}, timeout=10) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        pending = pool.submit(client.post, emu.url + PATH, json={"model": V3, "input": "a"})
        assert gate.arrived(1)
        emu.stop()
        # Answered or cut off by the stop: either way the client is not left waiting.
        with contextlib.suppress(httpx.TransportError):
            pending.result(timeout=10)
    assert gate.held == 0  # stop() joined the handler, which had left the gate


def test_raw_body_fault_is_sent_verbatim(emulator: JinaEmulator, http: httpx.Client) -> None:
    emulator.inject(
        Fault(body=b'{"data": [{"ind'),
        Fault(status=403, body=b"<html>Forbidden</html>", content_type="text/html"),
    )
    truncated = embed(http, input="a")
    assert (truncated.status_code, truncated.content) == (200, b'{"data": [{"ind')
    page = embed(http, input="a")
    assert (page.status_code, page.text) == (403, "<html>Forbidden</html>")
    assert page.headers["content-type"] == "text/html"
    assert [r.tokens for r in emulator.requests] == [0, 0]


def test_count_faults_drop_or_append_items(emulator: JinaEmulator, http: httpx.Client) -> None:
    emulator.inject(Fault(count_delta=-1), Fault(count_delta=2))
    fewer = embed(http, input=["a", "b"]).json()["data"]
    more = embed(http, input=["a", "b"]).json()["data"]
    assert [d["index"] for d in fewer] == [0]
    assert [d["index"] for d in more] == [0, 1, 2, 3]
    assert more[3]["embedding"] == more[1]["embedding"]


def test_index_faults_break_the_index_set(emulator: JinaEmulator, http: httpx.Client) -> None:
    emulator.inject(Fault(duplicate_index=True), Fault(missing_index=True))
    duplicated = embed(http, input=["a", "b", "c"]).json()["data"]
    missing = embed(http, input=["a", "b", "c"]).json()["data"]
    assert [d["index"] for d in duplicated] == [0, 0, 2]
    assert [d["index"] for d in missing] == [0, 1, 3]


def test_dim_delta_fault_resizes_every_vector(emulator: JinaEmulator, http: httpx.Client) -> None:
    emulator.inject(Fault(dim_delta=2), Fault(dim_delta=-3))
    longer = vectors(embed(http, input=["a", "b"]))
    shorter = vectors(embed(http, input=["a", "b"]))
    assert [v.shape for v in longer] == [(1026,), (1026,)]
    assert longer[1][-2:].tolist() == pytest.approx([0.01, 0.01])
    assert [v.shape for v in shorter] == [(1021,), (1021,)]


def test_bad_value_fault_writes_bare_nan_and_infinity(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    emulator.inject(Fault(bad_value=math.nan), Fault(bad_value=math.inf))
    as_float = embed(http, input=["a", "b"])
    assert "NaN" in as_float.text
    assert math.isnan(json.loads(as_float.text)["data"][0]["embedding"][0])
    as_base64 = embed(http, input=["a"], embedding_type="base64").json()["data"][0]["embedding"]
    assert from_base64(as_base64)[0] == np.inf


def test_bad_base64_fault_is_not_whole_float32s(emulator: JinaEmulator, http: httpx.Client) -> None:
    emulator.inject(Fault(bad_base64=True))
    payload = embed(http, input=["a"], embedding_type="base64").json()["data"][0]["embedding"]
    assert len(base64.b64decode(payload)) == 4 * 1024 - 2


def test_data_faults_leave_error_answers_alone(emulator: JinaEmulator) -> None:
    emulator.inject(Fault(count_delta=-1))
    with httpx.Client() as anonymous:
        response = anonymous.post(emulator.url + PATH, json={"model": V3, "input": "a"})
    assert response.status_code == 401


def test_fault_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="times"):
        Fault(times=0)
    with pytest.raises(ValueError, match="status"):
        Fault(status=99)


# --- lifecycle and concurrency --------------------------------------------------------


def test_reset_clears_log_and_faults(emulator: JinaEmulator, http: httpx.Client) -> None:
    emulator.inject(Fault(status=500, times=5))
    embed(http, input="a")
    emulator.reset()
    assert emulator.requests == []
    assert embed(http, input="a").status_code == 200


def test_requests_is_a_snapshot(emulator: JinaEmulator, http: httpx.Client) -> None:
    snapshot = emulator.requests
    embed(http, input="a")
    assert snapshot == []
    assert isinstance(emulator.requests[0], RecordedRequest)
    assert emulator.requests[0].body == {"model": V3, "input": "a"}


def test_received_texts_are_every_requests_text_inputs_in_order(
    emulator: JinaEmulator, http: httpx.Client
) -> None:
    embed(http, input="alone")
    embed(http, model="jina-clip-v2", input=[{"text": "an object"}, {"image": "aGk="}, "b"])
    emulator.inject(Fault(status=500))
    embed(http, input=["refused", "still received"])
    http.get("/health")
    assert [r.texts for r in emulator.requests] == [
        ["alone"],
        ["an object", "b"],
        ["refused", "still received"],
        [],
    ]
    assert emulator.received_texts() == ["alone", "an object", "b", "refused", "still received"]


def test_keep_alive_serves_many_requests_on_one_connection(emulator: JinaEmulator) -> None:
    connection = HTTPConnection(emulator.url.removeprefix("http://"), timeout=5)
    try:
        for _ in range(3):
            connection.request("GET", "/health")
            response = connection.getresponse()
            assert response.version == 11
            assert response.read() == b'{"status":"ok"}'
        sock = connection.sock
        connection.request("POST", PATH, body=b"{}", headers={"Authorization": "Bearer k"})
        assert connection.getresponse().read()
        assert connection.sock is sock  # error answers keep the connection too
    finally:
        connection.close()


def test_concurrent_requests_are_all_answered_and_logged(emulator: JinaEmulator) -> None:
    emulator.latency = 0.02
    results: list[int] = []

    def worker(i: int) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            response = client.post(emulator.url + PATH, json={"model": V3, "input": f"t{i}"})
            results.append(response.status_code)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 8
    assert sorted(emulator.received_texts()) == [f"t{i}" for i in range(8)]


def test_stop_is_idempotent_and_frees_the_port() -> None:
    emu = JinaEmulator().start()
    with httpx.Client() as client:
        assert client.get(emu.url + "/health").status_code == 200  # connection kept open
        emu.stop()
        emu.stop()
        with pytest.raises(httpx.TransportError):
            client.get(emu.url + "/health")


def test_url_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not been started"):
        _ = JinaEmulator().url


def test_module_writes_the_float_style_it_is_given() -> None:
    body = {"model": V3, "input": "a", "embedding_type": ["float", "base64"]}
    answer = post_to_module(["--float-style", "float32"], body)
    embedding = answer.json()["data"][0]["embedding"]
    assert embedding["float"] == [float(str(value)) for value in from_base64(embedding["base64"])]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery differs on Windows")
def test_module_runs_the_emulator_until_interrupted() -> None:
    with running_module(["--api-key", API_KEY]) as (process, url):
        with httpx.Client(headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            response = client.post(url + PATH, json={"model": V3, "input": "a"})
        assert response.status_code == 200
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert API_KEY not in out + err


def test_the_emulator_on_a_port_in_use_fails_in_one_line_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "embedcache.testing", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"python -m embedcache.testing: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
