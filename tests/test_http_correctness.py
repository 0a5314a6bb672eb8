"""The HTTP/1.1 server's correctness where clients rely on it, over loopback: HEAD,
absolute-form targets, the Host rules, answers on a pipelined connection strictly in
request order (``100 Continue`` and errors included), and the access-log hook."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from embedcache.proxy.http import ServerLimits

from .bare_server import (
    BareServer,
    bare_servers,
    closed_by_server,
    connect,
    exchange,
    post,
    read_answers,
    refuse,
)

CONTINUE = b"POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"


@pytest.fixture
def server() -> Iterator[BareServer]:
    with bare_servers() as serve:
        yield serve(ServerLimits(max_body=1000))


def test_head_is_answered_with_the_length_of_get_and_no_body(server: BareServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(
            b"HEAD /other HTTP/1.1\r\nHost: x\r\n\r\nGET /other HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        (head_status, head, nothing), (status, _, body) = read_answers(
            sock, 2, heads=frozenset({0})
        )
    assert head_status == status == b"HTTP/1.1 200 OK"
    assert nothing == b""
    assert body == b'{"app":"/other","method":"GET","body":0,"query":""}'
    assert int(head[b"content-length"]) == len(body.replace(b"GET", b"HEAD"))


def test_an_absolute_form_target_is_served_as_its_path_and_query(server: BareServer) -> None:
    raw = post(b"http://x/other?y=2", b"abc") + post(b"http://x:80/fast", b"12345")
    (_, _, app_body), (_, headers, fast_body) = exchange(server.port, raw, 2)
    assert app_body == b'{"app":"/other","method":"POST","body":3,"query":"y=2"}'
    assert headers[b"x-path"] == b"fast"
    assert fast_body == b'{"fast":true,"body":5}'


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"GET /fast HTTP/1.1\r\n\r\n", id="no-host"),
        pytest.param(b"GET /fast HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts"),
        pytest.param(b"GET /fast HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts-1.0"),
    ],
)
def test_an_http_1_1_request_without_exactly_one_host_is_a_400(
    server: BareServer, raw: bytes
) -> None:
    [(status, headers, body)] = exchange(server.port, raw, 1)
    assert status == b"HTTP/1.1 400 Bad Request"
    assert headers[b"connection"] == b"close"
    assert b"Host" in body


def test_100_continue_waits_for_the_answers_before_it(server: BareServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(post(b"/gated") + CONTINUE)
        server.wait_for(
            lambda: server.site.entered == 1 and [c.phase for c in server.connections] == ["body"],
            "the gated request answering, the next one's headers read",
        )
        server.call(server.site.gate.set)
        (gated, _, body), (interim, _, _) = read_answers(sock, 2)
        assert gated == b"HTTP/1.1 200 OK"
        assert body.startswith(b'{"app":"/gated"')
        assert interim == b"HTTP/1.1 100 Continue"
        sock.sendall(b"{}")
        [(_, _, fast_body)] = read_answers(sock, 1)
        assert fast_body == b'{"fast":true,"body":2}'


def test_garbage_after_a_slow_good_request_gets_the_good_answer_then_a_400(
    server: BareServer,
) -> None:
    with connect(server.port) as sock:
        sock.sendall(post(b"/gated") + b"GARBAGE\r\n\r\n" + post(b"/fast"))
        server.wait_for(
            lambda: (
                server.site.entered == 1
                and [c.reading_paused for c in server.connections] == [True]
            ),
            "the garbage read while the good request is answered",
        )
        server.call(server.site.gate.set)
        (good, _, _), (bad, headers, _) = read_answers(sock, 3)
        assert good == b"HTTP/1.1 200 OK"
        assert bad == b"HTTP/1.1 400 Bad Request"
        assert headers[b"connection"] == b"close"
        assert closed_by_server(sock)


def test_a_refusal_after_a_slow_good_request_comes_after_the_good_answer(
    server: BareServer,
) -> None:
    server.site.decide = lambda request: refuse(403) if request.path == b"/no" else None
    with connect(server.port) as sock:
        sock.sendall(post(b"/gated") + post(b"/no", b"x" * 100) + post(b"/fast"))
        server.wait_for(
            lambda: (
                server.site.entered == 1
                and [c.reading_paused for c in server.connections] == [True]
            ),
            "the refusal decided while the good request is answered",
        )
        server.call(server.site.gate.set)
        (good, _, _), (refused, headers, body) = read_answers(sock, 3)
        assert good == b"HTTP/1.1 200 OK"
        assert refused == b"HTTP/1.1 403 Forbidden"
        assert headers[b"connection"] == b"close"
        assert body == b'{"detail":"refused"}'
        assert closed_by_server(sock)
    assert server.connections.body_bytes == 0


def test_every_answer_is_told_to_the_access_log_with_its_status(server: BareServer) -> None:
    server.site.decide = lambda request: refuse(401) if request.path == b"/no" else None
    exchange(server.port, post(b"/fast") + post(b"/other"), 2)
    exchange(server.port, post(b"/no"), 1)
    exchange(server.port, b"GET /fast HTTP/1.1\r\n\r\n", 1)
    exchange(server.port, post(b"/fast", b"x" * 1001), 1)
    server.wait_for(lambda: len(server.site.lines) == 5, "five access lines")
    assert server.site.lines == [
        (b"POST", b"/fast", 200, -1),
        (b"POST", b"/other", 200, 7),  # texts as the app set them on scope's request
        (b"POST", b"/no", 401, -1),
        (b"GET", b"/fast", 400, -1),
        (b"POST", b"/fast", 413, -1),
    ]
