"""JinaClient learning how the upstream writes float text (for the proxy's float answers),
over real loopback HTTP to an emulator of each float style."""

from __future__ import annotations

import json
import logging

import pytest

from embedcache import JinaClient
from embedcache.errors import ResponseFormatError
from embedcache.models import RequestOptions
from embedcache.testing import Fault, JinaEmulator
from embedcache.upstream.float_style import FloatStyle

from .conftest import API_KEY

V3 = RequestOptions("jina-embeddings-v3", task="retrieval.passage")
STYLES = ["float64", "float32"]


@pytest.fixture(params=STYLES)
def style(request: pytest.FixtureRequest, emulator: JinaEmulator) -> str:
    """Run the test against an emulator writing each float style."""
    emulator.float_style = request.param
    return str(request.param)


@pytest.fixture
def learning(client: JinaClient) -> FloatStyle:
    """Start the client learning; what it learns into."""
    return client.learn_float_style()


def sent_types(emulator: JinaEmulator) -> list[str]:
    return [request.body["embedding_type"] for request in emulator.requests if request.body]


def float_answer(*vectors: list[float]) -> bytes:
    """A success body with these float embeddings, as an upstream would send it."""
    data = [
        {"object": "embedding", "index": index, "embedding": vector}
        for index, vector in enumerate(vectors)
    ]
    usage = {"total_tokens": 1, "prompt_tokens": 1}
    return json.dumps({"model": V3.model, "object": "list", "usage": usage, "data": data}).encode()


def test_a_learning_client_asks_for_float_text_once_then_goes_back_to_base64(
    client: JinaClient, emulator: JinaEmulator, style: str, learning: FloatStyle
) -> None:
    first = client.embed(["alpha", "beta"], V3)
    assert client.float_style is learning
    assert learning.learned_here == style
    second = client.embed(["alpha", "gamma"], V3)
    assert sent_types(emulator) == ["float", "base64"]
    expected = emulator.expected_embedding("alpha", task="retrieval.passage")
    # The float text reads back as exactly the float32 values base64 carries.
    assert first.vectors[0].tobytes() == second.vectors[0].tobytes() == expected.tobytes()
    assert first.total_tokens == emulator.requests[0].tokens > 0


def test_a_client_not_asked_to_learn_always_asks_for_base64(
    client: JinaClient, emulator: JinaEmulator
) -> None:
    client.embed(["a"], V3)
    client.embed(["b"], V3)
    assert sent_types(emulator) == ["base64", "base64"]
    assert client.float_style is None


def test_per_key_clients_share_what_any_of_them_learned(
    client: JinaClient, emulator: JinaEmulator, style: str, learning: FloatStyle
) -> None:
    before = client.for_key(API_KEY)  # made before anything was learned
    before.embed(["a"], V3)
    assert learning.current == style
    client.embed(["b"], V3)
    after = client.for_key(API_KEY, max_attempts=2)
    after.embed(["c"], V3)
    assert after.float_style is before.float_style is learning
    assert sent_types(emulator) == ["float", "base64", "base64"]
    assert learning.learned_here == style


@pytest.mark.parametrize("types", ["float", ["float", "base64"]], ids=["float", "several"])
def test_a_passthrough_answer_with_float_embeddings_teaches_the_style(
    client: JinaClient,
    emulator: JinaEmulator,
    style: str,
    learning: FloatStyle,
    types: str | list[str],
) -> None:
    body = {"model": V3.model, "input": ["x"], "embedding_type": types, "dimensions": 32}
    assert client.forward(json.dumps(body).encode()).status == 200
    assert learning.learned_here == style
    client.embed(["y"], V3)
    assert sent_types(emulator)[-1] == "base64"


@pytest.mark.parametrize("types", ["binary", "ubinary", "base64"])
def test_a_passthrough_answer_without_float_embeddings_teaches_nothing(
    client: JinaClient, emulator: JinaEmulator, style: str, learning: FloatStyle, types: str
) -> None:
    body = {"model": V3.model, "input": ["x"], "embedding_type": types}
    assert client.forward(json.dumps(body).encode()).status == 200
    assert learning.learned_here is None
    client.embed(["y"], V3)
    assert sent_types(emulator)[-1] == "float"
    assert learning.learned_here == style


def test_an_answer_that_does_not_tell_the_style_keeps_the_client_learning(
    client: JinaClient, emulator: JinaEmulator, learning: FloatStyle
) -> None:
    emulator.float_style = "float32"
    emulator.inject(Fault(body=float_answer([0.5, -0.25, 0.0, 1.0])))
    assert client.embed(["x"], V3).vectors.tolist() == [[0.5, -0.25, 0.0, 1.0]]
    assert learning.learned_here is None
    client.embed(["x"], V3)
    assert learning.learned_here == "float32"
    assert sent_types(emulator) == ["float", "float"]


def test_float_text_that_is_not_float32_values_is_refused_and_learning_stops(
    client: JinaClient,
    emulator: JinaEmulator,
    learning: FloatStyle,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An upstream whose floats carry more than float32 holds: no cache of float32 vectors
    # could give them back, and asking it for float text again would only fail again.
    emulator.inject(Fault(body=float_answer([0.1234567890123, 0.5])))
    with (
        caplog.at_level(logging.WARNING, logger="embedcache"),
        pytest.raises(ResponseFormatError, match="not a float32 value"),
    ):
        client.embed(["x"], V3)
    assert "stopped learning" in caplog.text
    client.embed(["x"], V3)
    assert sent_types(emulator)[-1] == "base64"
    assert learning.learned_here is None
    assert learning.current == "float64"  # the default: nothing was learned
