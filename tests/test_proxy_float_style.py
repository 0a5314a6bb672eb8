"""The proxy's float style in process: every answer reads it from memory, and the cache
directory keeps it, written and followed once a second off the request path."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from embedcache import JinaEmbeddingFunction
from embedcache.assembly import CacheSettings
from embedcache.config import upstream_id
from embedcache.proxy.app import Proxy, ProxySettings
from embedcache.proxy.http import Request
from embedcache.proxy.wire import parse_request, render_vector
from embedcache.storage.store import Store
from embedcache.testing import JinaEmulator
from embedcache.upstream.float_style import setting_name

from .conftest import API_KEY

V3 = "jina-embeddings-v3"
PASSAGE = {"model": V3, "task": "retrieval.passage"}

MakeServer = Callable[[], Proxy]


@pytest.fixture
def make_server(emulator: JinaEmulator, cache_dir: Path) -> Iterator[MakeServer]:
    """In-process proxies on the emulator and the test's cache directory; all are closed."""
    made: list[Proxy] = []

    def make() -> Proxy:
        cache = CacheSettings(cache_dir=cache_dir, base_url=emulator.url, api_key=API_KEY)
        made.append(Proxy(ProxySettings(cache=cache)))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def answer(proxy: Proxy, text: str, cached_only: bool = True) -> bytes:
    """A small request's embedding as the route writes it (on the event loop when every
    text is cached)."""
    parsed = parse_request({**PASSAGE, "input": [text]})
    assert parsed is not None
    rendered = proxy.filler.render(parsed, proxy.upstreams.server, cached_only=cached_only)
    assert rendered is not None
    return rendered[0][0]


def in_style(emulator: JinaEmulator, text: str, style: str) -> bytes:
    vector = emulator.expected_embedding(text, task="retrieval.passage")
    return render_vector(vector, "float", style)


def test_answers_never_read_the_cache_directory_for_the_float_style(
    emulator: JinaEmulator,
    make_server: MakeServer,
    make_ef: Callable[..., JinaEmbeddingFunction],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator.float_style = "float32"
    make_ef().encode_documents(["cached by the library"])  # the library learns no style
    proxy = make_server()
    reads: list[str] = []
    read = proxy.store.setting

    def counted(name: str) -> str | None:
        reads.append(name)
        return read(name)

    monkeypatch.setattr(proxy.store, "setting", counted)
    content = json.dumps({**PASSAGE, "input": ["cached by the library"]}).encode()
    body = Request(b"POST", b"/v1/embeddings", content)
    for _ in range(3):  # nothing learned nor stored: the default style, from memory
        assert answer(proxy, "cached by the library") == in_style(
            emulator, "cached by the library", "float64"
        )
        assert proxy.answer_hit(body) is not None
    assert reads == []


def test_another_server_follows_the_learned_style_at_its_next_look_at_the_directory(
    emulator: JinaEmulator, make_server: MakeServer, cache_dir: Path
) -> None:
    emulator.float_style = "float32"
    learner, other = make_server(), make_server()  # two servers on one directory
    assert answer(learner, "fetched", cached_only=False) == in_style(emulator, "fetched", "float32")
    assert (learner.float_style, other.float_style) == ("float32", "float64")
    other.keep_float_style()
    assert other.float_style == "float64"  # not in the directory until the learner's look
    learner.keep_float_style()
    other.keep_float_style()
    assert other.float_style == "float32"
    assert answer(other, "fetched") == in_style(emulator, "fetched", "float32")
    with Store(cache_dir) as store:
        assert store.setting(setting_name(upstream_id(emulator.url))) == "float32"


def test_a_style_learned_since_the_last_look_is_kept_when_the_server_closes(
    emulator: JinaEmulator, make_server: MakeServer, cache_dir: Path
) -> None:
    emulator.float_style = "float32"
    proxy = make_server()
    answer(proxy, "fetched", cached_only=False)
    proxy.close()
    with Store(cache_dir) as store:
        assert store.setting(setting_name(upstream_id(emulator.url))) == "float32"
