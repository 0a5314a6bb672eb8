"""The HTTP/1.1 server's deadlines and draining, over loopback: a client that is idle,
slow to send its request, or not reading its answers is closed (with a 408 when a
request was under way), and a draining server closes whatever is still open at its end."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from embedcache.proxy.http import ServerLimits

from .bare_server import (
    DEADLINE,
    BareServer,
    bare_servers,
    closed_by_server,
    connect,
    post,
    read_answers,
)

SHORT = 0.3  # every deadline under test; the others stay far away
FAR = 600.0


@pytest.fixture
def serve() -> Iterator[Callable[..., BareServer]]:
    with bare_servers() as serve:
        yield serve


def limits(
    idle_timeout: float = FAR,
    header_timeout: float = FAR,
    body_timeout: float = FAR,
    send_timeout: float = FAR,
) -> ServerLimits:
    return ServerLimits(
        idle_timeout=idle_timeout,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        send_timeout=send_timeout,
    )


def test_an_idle_kept_alive_connection_is_closed_after_the_idle_timeout(
    serve: Callable[..., BareServer],
) -> None:
    server = serve(limits(idle_timeout=SHORT))
    with connect(server.port) as sock:
        sock.sendall(post(b"/fast"))
        [(status, _, _)] = read_answers(sock, 1)
        assert status == b"HTTP/1.1 200 OK"
        assert closed_by_server(sock)
    assert server.connections.timed_out == 1


def test_a_connection_that_never_sends_a_byte_is_closed_after_the_idle_timeout(
    serve: Callable[..., BareServer],
) -> None:
    server = serve(limits(idle_timeout=SHORT))
    with connect(server.port) as sock:
        assert closed_by_server(sock)


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"POST /fast HT", id="half-a-request-line"),
        pytest.param(
            b"POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n", id="no-final-crlf"
        ),
    ],
)
def test_a_request_head_not_finished_in_time_gets_a_408_and_is_closed(
    serve: Callable[..., BareServer], sent: bytes
) -> None:
    server = serve(limits(header_timeout=SHORT))
    with connect(server.port) as sock:
        sock.sendall(sent)
        [(status, headers, body)] = read_answers(sock, 1)
        assert status == b"HTTP/1.1 408 Request Timeout"
        assert headers[b"connection"] == b"close"
        assert body == b'{"detail":"request not received in time"}'
        assert closed_by_server(sock)


def test_half_a_body_gets_a_408_and_is_closed(serve: Callable[..., BareServer]) -> None:
    server = serve(limits(body_timeout=SHORT))
    with connect(server.port) as sock:
        sock.sendall(post(b"/fast", b"0123456789")[:-5])
        [(status, _, _)] = read_answers(sock, 1)
        assert status == b"HTTP/1.1 408 Request Timeout"
        assert closed_by_server(sock)
    server.wait_for(lambda: server.connections.body_bytes == 0, "the half body released")
    assert server.site.lines == [(b"POST", b"/fast", 408, -1)]


def test_expect_100_continue_and_no_body_is_closed_after_the_body_timeout(
    serve: Callable[..., BareServer],
) -> None:
    server = serve(limits(body_timeout=SHORT))
    with connect(server.port) as sock:
        sock.sendall(post(b"/fast", extra=b"Expect: 100-continue\r\n")[:-2])
        interim, timed_out = read_answers(sock, 2)
        assert interim[0] == b"HTTP/1.1 100 Continue"
        assert timed_out[0] == b"HTTP/1.1 408 Request Timeout"
        assert closed_by_server(sock)


def test_a_client_not_reading_its_answers_is_closed_after_the_send_timeout(
    serve: Callable[..., BareServer],
) -> None:
    server = serve(limits(send_timeout=SHORT))
    sock = connect(server.port)
    raw = b"".join(post(b"/big?%d" % number) for number in range(3000))
    sender = threading.Thread(target=_send_quietly, args=(sock, raw), daemon=True)
    sender.start()
    try:
        server.wait_for(lambda: server.connections.timed_out == 1, "the send timeout")
        server.wait_for(lambda: len(server.connections) == 0, "the connection closed")
    finally:
        sock.close()
        sender.join(DEADLINE)


def _send_quietly(sock: socket.socket, raw: bytes) -> None:
    with contextlib.suppress(OSError):  # the server closed the connection, as it should
        sock.sendall(raw)


def test_drain_closes_a_connection_still_sending_a_body_at_its_end(
    serve: Callable[..., BareServer],
) -> None:
    server = serve(limits())
    with connect(server.port) as sock:
        sock.sendall(post(b"/fast", b"x" * 100)[:-50])
        server.wait_for(lambda: server.connections.body_bytes == 50, "half the body read")
        drained = asyncio.run_coroutine_threadsafe(server.connections.drain(SHORT), server.loop)
        assert closed_by_server(sock)
        drained.result(DEADLINE)
    assert server.connections.body_bytes == 0


def test_drain_answers_what_was_read_and_closes_idle_connections_at_once(
    serve: Callable[..., BareServer],
) -> None:
    server = serve(limits())
    with connect(server.port) as idle, connect(server.port) as busy:
        busy.sendall(post(b"/gated"))
        server.wait_for(lambda: server.site.entered == 1, "the gated request in the app")
        server.wait_for(lambda: len(server.connections) == 2, "both connections open")
        drained = asyncio.run_coroutine_threadsafe(server.connections.drain(FAR), server.loop)
        assert closed_by_server(idle)
        server.call(server.site.gate.set)
        [(status, _, body)] = read_answers(busy, 1)
        assert status == b"HTTP/1.1 200 OK"
        assert body.startswith(b'{"app":"/gated"')
        assert closed_by_server(busy)
        drained.result(DEADLINE)
