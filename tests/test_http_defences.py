"""The HTTP/1.1 server's bounds on what one client can make a worker hold, over loopback:
open connections, answers a client does not read, bodies of refused or aborted requests,
and body bytes in flight."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterator

import pytest

from embedcache.proxy.http import MAX_PIPELINED, WRITE_BUFFER_HIGH, Request, ServerLimits

from .bare_server import (
    BIG,
    DEADLINE,
    BareServer,
    bare_servers,
    closed_by_server,
    connect,
    exchange,
    post,
    read_answers,
    refuse,
)

MiB = 1024 * 1024


@pytest.fixture
def serve() -> Iterator[Callable[..., BareServer]]:
    with bare_servers() as serve:
        yield serve


def test_at_the_cap_a_new_connection_closes_the_oldest_idle_one(
    serve: Callable[..., BareServer],
) -> None:
    server = serve(ServerLimits(max_connections=2))
    with connect(server.port) as oldest, connect(server.port) as other:
        server.wait_for(lambda: len(server.connections) == 2, "two connections open")
        with connect(server.port) as newest:
            assert closed_by_server(oldest)
            newest.sendall(post(b"/fast"))
            assert read_answers(newest, 1)[0][0] == b"HTTP/1.1 200 OK"
            other.sendall(post(b"/fast"))
            assert read_answers(other, 1)[0][0] == b"HTTP/1.1 200 OK"
    assert server.connections.evicted == 1
    assert server.connections.refused == 0


def test_at_the_cap_with_no_idle_connection_a_new_one_gets_a_503_logged_once(
    serve: Callable[..., BareServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(ServerLimits(max_connections=2))
    with connect(server.port) as first, connect(server.port) as second:
        first.sendall(b"POST /fast HT")
        second.sendall(b"POST /fast HT")
        server.wait_for(
            lambda: [each.phase for each in server.connections] == ["head", "head"],
            "both connections reading a request",
        )
        with caplog.at_level(logging.WARNING, logger="embedcache"):
            for _ in range(2):
                with connect(server.port) as refused:
                    [(status, headers, body)] = read_answers(refused, 1)
                    assert status == b"HTTP/1.1 503 Service Unavailable"
                    assert headers[b"connection"] == b"close"
                    assert "detail" in json.loads(body)
                    assert closed_by_server(refused)
    assert server.connections.refused == 2
    assert len([r for r in caplog.records if "open connections" in r.getMessage()]) == 1


def test_max_connections_is_lowered_to_fit_the_open_file_limit() -> None:
    code = (
        "import logging, resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))\n"
        "logging.basicConfig()\n"
        "from embedcache.proxy.http import Connections, Handlers, ServerLimits\n"
        "handlers = Handlers(fast=lambda request: None, app=None)\n"
        "print(Connections(handlers, ServerLimits(max_connections=1024)).max_connections)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=DEADLINE
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(256 - 64)
    assert "at most 192 connections per worker, not 1024" in done.stderr
    assert "ulimit -n" in done.stderr


def test_pipelining_thousands_of_requests_without_reading_holds_bounded_memory(
    serve: Callable[..., BareServer],
) -> None:
    server = serve(ServerLimits())
    requests = [post(b"/big?%d" % number) for number in range(12_000)]
    sock = connect(server.port)
    sender = threading.Thread(target=sock.sendall, args=(b"".join(requests),), daemon=True)
    sender.start()
    try:
        server.wait_for(
            lambda: [each.writing_paused for each in server.connections] == [True],
            "writes paused: the client reads nothing",
        )

        def held() -> tuple[bool, int, int]:
            [connection] = server.connections
            return connection.writing_paused, connection.queued, connection.buffered

        # What a connection may hold: the requests queued before reading paused and what
        # one slice of a read held; the unparsed rest of one read and a write buffer.
        most_queued = MAX_PIPELINED + 16 * 1024 // len(requests[0]) + 1
        most_buffered = 256 * 1024 + WRITE_BUFFER_HIGH + len(BIG) + 200
        for _ in range(50):
            paused, queued, buffered = server.call(held)
            assert queued <= most_queued
            assert buffered <= most_buffered
            if not paused:
                break
        answers = read_answers(sock, len(requests))
    finally:
        sock.close()
        sender.join(DEADLINE)
    assert len(answers) == len(requests)
    numbers = [json.loads(body)["n"] for _, _, body in answers]
    assert numbers == list(range(len(requests)))


def test_a_refusal_at_the_headers_is_answered_before_the_body_is_read(
    serve: Callable[..., BareServer],
) -> None:
    server = serve(ServerLimits())
    server.site.decide = lambda request: None if request.authorization else refuse(401)
    size = 32 * MiB
    with connect(server.port) as sock:
        sock.sendall(b"POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        [(status, headers, _)] = read_answers(sock, 1)
        assert status == b"HTTP/1.1 401 Unauthorized"
        assert headers[b"connection"] == b"close"
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            sock.sendall(b"x" * size)  # the server closed: the body is never read
    assert server.connections.body_bytes == 0
    assert server.site.lines == [(b"POST", b"/fast", 401, -1)]


def test_a_pending_admission_stops_reading_until_it_is_decided(
    serve: Callable[..., BareServer],
) -> None:
    server = serve(ServerLimits())
    decided: asyncio.Future[None] = server.call(server.loop.create_future)
    asked: list[Request] = []

    def decide(request: Request) -> asyncio.Future[None]:
        asked.append(request)
        return decided

    server.site.decide = decide
    body = b"x" * (2 * MiB)
    sock = connect(server.port)
    sender = threading.Thread(target=sock.sendall, args=(post(b"/fast", body),), daemon=True)
    sender.start()
    try:
        server.wait_for(
            lambda: bool(asked) and [c.reading_paused for c in server.connections] == [True],
            "reading paused while the admission is decided",
        )
        assert server.call(lambda: server.connections.body_bytes) <= 16 * 1024
        server.call(lambda: decided.set_result(None))
        [(status, _, answer)] = read_answers(sock, 1)
    finally:
        sock.close()
        sender.join(DEADLINE)
    assert status == b"HTTP/1.1 200 OK"
    assert answer == b'{"fast":true,"body":%d}' % len(body)


def test_an_aborted_upload_is_freed_at_once_without_the_cyclic_collector(
    serve: Callable[..., BareServer],
) -> None:
    server = serve(ServerLimits())
    gc.collect()
    gc.disable()
    try:
        with connect(server.port) as sock:
            sock.sendall(post(b"/fast", b"x" * (32 * MiB))[: 8 * MiB])
            server.wait_for(lambda: server.connections.body_bytes > 7 * MiB, "the body read")
            connection = server.call(lambda: weakref.ref(next(iter(server.connections))))
        server.wait_for(lambda: server.connections.body_bytes == 0, "the body released")
        server.wait_for(lambda: connection() is None, "the connection freed")
    finally:
        gc.enable()


def test_a_body_over_the_workers_body_memory_gets_a_503(
    serve: Callable[..., BareServer],
) -> None:
    server = serve(ServerLimits(max_body=10_000, max_body_memory=1000))
    chunked = (
        b"POST /fast HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (2000, b"x" * 2000)
    )
    for raw in (post(b"/fast", b"x" * 2000), chunked):
        [(status, headers, body)] = exchange(server.port, raw, 2)
        assert status == b"HTTP/1.1 503 Service Unavailable"
        assert headers[b"connection"] == b"close"
        assert b"too many request bodies in flight" in body
    [(status, _, _)] = exchange(server.port, post(b"/fast", b"x" * 900), 1)
    assert status == b"HTTP/1.1 200 OK"
    server.wait_for(lambda: server.connections.body_bytes == 0, "every body released")
