"""The proxy's HTTP/1.1 server alone, over real loopback sockets: a fast handler that
answers one path, and a tiny ASGI app for the rest."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest

from embedcache.proxy.http import MAX_HEADERS, Handlers, Request

from .bare_server import BareServer, connect, exchange, post


def fast(request: Request) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    if request.path == b"/fast":
        return b'{"fast":true,"body":%d}' % len(request.body), [(b"x-path", b"fast")]
    return None


async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    message = await receive()
    if scope["path"] == "/slow":
        await asyncio.sleep(0.05)  # answered after a later pipelined request has arrived
    body = b'{"app":"%s","method":"%s","body":%d,"query":"%s"}' % (
        scope["path"].encode(),
        scope["method"].encode(),
        len(message["body"]),
        scope["query_string"],
    )
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def port() -> Iterator[int]:
    """The server on a free loopback port, on its own event loop thread."""
    server = BareServer(Handlers(fast=fast, app=app, max_body=1000))
    yield server.port
    server.close()


def test_a_fast_answer_is_a_200_with_its_headers_and_length(port: int) -> None:
    [(status, headers, body)] = exchange(port, post(b"/fast", b"12345"), 1)
    assert status == b"HTTP/1.1 200 OK"
    assert headers[b"x-path"] == b"fast"
    assert headers[b"content-type"] == b"application/json"
    assert body == b'{"fast":true,"body":5}'


def test_anything_else_reaches_the_asgi_app_with_method_path_query_and_body(port: int) -> None:
    [(status, _, body)] = exchange(port, post(b"/other?x=1", b"abc"), 1)
    assert status == b"HTTP/1.1 200 OK"
    assert body == b'{"app":"/other","method":"POST","body":3,"query":"x=1"}'


def test_pipelined_requests_are_answered_in_order_on_one_kept_alive_connection(
    port: int,
) -> None:
    raw = post(b"/slow") + post(b"/fast") + post(b"/other") + post(b"/fast")
    answers = exchange(port, raw, 4)
    assert [body.split(b",")[0] for _, _, body in answers] == [
        b'{"app":"/slow"',
        b'{"fast":true',
        b'{"app":"/other"',
        b'{"fast":true',
    ]
    assert all(b"connection" not in headers for _, headers, _ in answers)


def test_connection_close_is_honoured_after_the_answer(port: int) -> None:
    raw = post(b"/fast", extra=b"Connection: close\r\n") + post(b"/fast")
    answers = exchange(port, raw, 2)
    assert len(answers) == 1
    assert answers[0][1][b"connection"] == b"close"


def test_http_1_0_closes_unless_asked_to_keep_alive(port: int) -> None:
    raw = b"POST /fast HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}" * 2
    assert len(exchange(port, raw, 2)) == 1


def test_expect_100_continue_gets_an_interim_answer_first(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(
            b"POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"{}")
        assert b'{"fast":true,"body":2}' in sock.recv(1000)


def test_a_body_over_the_limit_is_a_413_and_the_connection_closes(port: int) -> None:
    [(status, headers, _)] = exchange(port, post(b"/fast", b"x" * 1001) + post(b"/fast"), 2)
    assert status.startswith(b"HTTP/1.1 413")
    assert headers[b"connection"] == b"close"


def test_too_many_headers_is_a_431(port: int) -> None:
    extra = b"".join(b"X-%d: y\r\n" % i for i in range(MAX_HEADERS + 1))
    [(status, _, body)] = exchange(port, post(b"/fast", extra=extra), 1)
    assert status.startswith(b"HTTP/1.1 431")
    assert b"too many request headers" in body


def test_malformed_requests_are_a_400(port: int) -> None:
    [(status, _, _)] = exchange(port, b"NOT HTTP AT ALL\r\n\r\n", 1)
    assert status.startswith(b"HTTP/1.1 400")
