"""Credentials in the upstream URL (``http://user:password@host``) are never shown, logged
or written to disk, by the client or by the proxy; requests still carry the API key."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from embedcache import JinaClient
from embedcache.config import upstream_id
from embedcache.errors import TransportError
from embedcache.models import RequestOptions
from embedcache.storage.store import Store
from embedcache.testing import JinaEmulator
from embedcache.upstream.float_style import setting_name

from .conftest import API_KEY, MakeProxy, wait_for

V3 = RequestOptions("jina-embeddings-v3", task="retrieval.passage")
# Distinctive, so finding them anywhere (random vector bytes included) means a leak.
USER, PASSWORD = "upstreamuser", "hunter2PW"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def with_credentials(url: str) -> str:
    """``http://host:port`` as ``http://USER:PASSWORD@host:port``."""
    return url.replace("://", f"://{USER}:{PASSWORD}@", 1)


def assert_no_credentials(text: str) -> None:
    assert PASSWORD not in text
    assert USER not in text


@pytest.mark.parametrize(
    ("scheme", "failure"), [("http", "no response from"), ("ftp", "cannot send to")]
)
def test_a_client_that_cannot_reach_its_upstream_never_shows_the_urls_credentials(
    scheme: str, failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{scheme}://{USER}:{PASSWORD}@127.0.0.1:{closed_port()}"
    client = JinaClient(API_KEY, base_url=url, max_attempts=2, backoff_base=0.001)
    with caplog.at_level(logging.DEBUG), pytest.raises(TransportError) as raised:
        client.embed(["a"], V3)
    message = str(raised.value)
    assert failure in message
    assert f"{scheme}://***@127.0.0.1:" in message  # still says where it went
    assert_no_credentials(message)
    assert_no_credentials(caplog.text)
    assert_no_credentials(repr(client))
    assert_no_credentials(client.base_url)
    assert_no_credentials(repr(client.for_key("another")))
    client.close()


def test_credentials_in_the_url_neither_replace_the_api_key_nor_reach_the_logs(
    emulator: JinaEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    # httpx turns a URL's userinfo into HTTP Basic auth, in place of the Bearer key (the
    # API would refuse every request), and logs each request's URL at INFO.
    client = JinaClient(API_KEY, base_url=with_credentials(emulator.url), max_attempts=1)
    with caplog.at_level(logging.DEBUG):
        result = client.embed(["a"], V3)
    assert result.vectors.shape == (1, 1024)
    assert "HTTP Request: POST" in caplog.text
    assert_no_credentials(caplog.text)
    client.close()


def test_a_proxy_whose_upstream_is_down_shows_no_credentials_in_answers_or_output(
    make_proxy: MakeProxy,
) -> None:
    proxy = make_proxy(upstream=f"http://{USER}:{PASSWORD}@127.0.0.1:{closed_port()}")
    answer = proxy.embed({"model": "jina-embeddings-v3", "input": ["a miss"]}, API_KEY)
    assert answer.status_code == 502
    assert "127.0.0.1" in answer.text  # the failure is explained, without the credentials
    assert_no_credentials(answer.text)
    assert_no_credentials(proxy.output())
    proxy.stop()
    assert_no_credentials(proxy.output())


def test_the_float_style_learned_through_an_upstream_with_credentials_is_kept_without_them(
    emulator: JinaEmulator, make_proxy: MakeProxy, cache_dir: Path
) -> None:
    emulator.float_style = "float32"
    upstream = with_credentials(emulator.url)
    proxy = make_proxy(upstream=upstream)
    answer = proxy.embed({"model": "jina-embeddings-v3", "input": ["filled"]}, API_KEY)
    assert answer.status_code == 200, answer.text
    with Store(cache_dir) as store:
        name = setting_name(upstream_id(upstream))
        wait_for(lambda: store.setting(name) == "float32", "style not kept")
    assert name == f"float_style {emulator.url}"  # kept under the upstream, not its secrets
    proxy.stop()
    assert_no_credentials(proxy.output())
    for path in cache_dir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert PASSWORD.encode() not in content, path
            assert USER.encode() not in content, path
