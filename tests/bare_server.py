"""The proxy's HTTP/1.1 server alone on a free loopback port, on its own event loop thread,
and a raw client for it: for the tests of the server itself."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, MutableMapping
from typing import Any, TypeVar

from embedcache.proxy.http import (
    Connections,
    Handlers,
    HttpConnection,
    Refusal,
    Request,
    ServerLimits,
)

DEADLINE = 20.0
#: How often the test servers check deadlines (the real one: every second).
SWEEP_SECONDS = 0.02

T = TypeVar("T")
Answer = tuple[bytes, dict[bytes, bytes], bytes]


#: The body of ``/big`` answers (plus the request's number): big enough that a client not
#: reading fills the socket buffers quickly.
BIG = b"x" * 4000
AccessLine = tuple[bytes, bytes, int, int]


class Site:
    """Handlers the tests steer: ``/fast`` and ``/big?N`` answered from memory, ``/gated``
    by the app once :attr:`gate` is set, anything else by the app at once; each request
    decided by :attr:`decide` (when set) and logged into :attr:`lines` (``(method,
    target, status, texts)``)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.entered = 0  # requests the app has started answering
        self.decide: Callable[[Request], Any] | None = None
        self.lines: list[AccessLine] = []

    def fast(self, request: Request) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
        if request.path == b"/fast":
            return b'{"fast":true,"body":%d}' % len(request.body), [(b"x-path", b"fast")]
        if request.path == b"/big":
            number = request.target.partition(b"?")[2]
            return b'{"n":%s,"pad":"%s"}' % (number, BIG), []
        return None

    async def app(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        self.entered += 1
        if scope["path"] == "/gated":
            await self.gate.wait()
        scope["embedcache.request"].texts = 7
        body = b'{"app":"%s","method":"%s","body":%d,"query":"%s"}' % (
            scope["path"].encode(),
            scope["method"].encode(),
            len(message["body"]),
            scope["query_string"],
        )
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def admit(self, request: Request) -> Any:
        return None if self.decide is None else self.decide(request)

    def log_access(self, request: Request, status: int, seconds: float) -> None:
        assert seconds >= 0
        self.lines.append((request.method, request.target, status, request.texts))

    def handlers(self) -> Handlers:
        return Handlers(fast=self.fast, app=self.app, admit=self.admit, log_access=self.log_access)


def new_loop() -> asyncio.AbstractEventLoop:
    """The loop the proxy serves on: uvloop's where it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def refuse(status: int) -> Refusal:
    return Refusal(status, b'{"detail":"refused"}')


class BareServer:
    """``Connections(handlers, limits)`` serving on 127.0.0.1 in a thread of its own."""

    def __init__(
        self,
        handlers: Handlers,
        limits: ServerLimits | None = None,
        site: Site | None = None,
    ) -> None:
        self.site = site or Site()
        self.loop = new_loop()
        self.connections = Connections(handlers, limits, sweep_seconds=SWEEP_SECONDS)
        started = threading.Event()
        bound: list[int] = []

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            server = self.loop.run_until_complete(
                self.loop.create_server(self.connections, "127.0.0.1", 0)
            )
            bound.append(server.sockets[0].getsockname()[1])
            started.set()
            self.loop.run_forever()
            server.close()
            self.loop.run_until_complete(server.wait_closed())

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        assert started.wait(DEADLINE)
        self.port = bound[0]

    def call(self, function: Callable[[], T]) -> T:
        """``function()`` run on the server's loop (its state is only consistent there)."""

        async def run() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(DEADLINE)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """``coroutine`` run to its end on the server's loop."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(DEADLINE)

    def open(self) -> list[HttpConnection]:
        """The server's open connections, oldest first."""
        return self.call(lambda: list(self.connections))

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Poll ``condition`` (run on the server's loop) until it holds, or fail."""
        deadline = time.monotonic() + DEADLINE
        while not self.call(condition):
            assert time.monotonic() < deadline, f"never happened: {what}"
            time.sleep(0.01)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.connections.drain(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(DEADLINE)
        self.loop.close()


@contextlib.contextmanager
def bare_servers() -> Iterator[Callable[..., BareServer]]:
    """``serve(limits)``: a :class:`BareServer` of a new :class:`Site`; all closed at the
    end."""
    servers: list[BareServer] = []

    def serve(limits: ServerLimits | None = None) -> BareServer:
        site = Site()
        servers.append(BareServer(site.handlers(), limits, site))
        return servers[-1]

    try:
        yield serve
    finally:
        for server in servers:
            server.close()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)


def read_answers(
    sock: socket.socket, count: int, *, heads: frozenset[int] = frozenset()
) -> list[Answer]:
    """Read ``count`` answers (fewer if the server closes first); those numbered in
    ``heads`` answer a HEAD: no body follows their head."""
    out: list[Answer] = []
    buffer = b""
    while len(out) < count:
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                return out
            buffer += chunk
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = dict(line.split(b": ", 1) for line in lines)
        length = 0 if len(out) in heads else int(headers.get(b"content-length", b"0"))
        while len(buffer) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
        out.append((status, headers, buffer[:length]))
        buffer = buffer[length:]
    return out


def exchange(port: int, raw: bytes, responses: int) -> list[Answer]:
    """Send ``raw`` on one connection and read ``responses`` answers (status line, headers,
    body), or fewer if the server closes first."""
    with connect(port) as sock:
        sock.sendall(raw)
        return read_answers(sock, responses)


def closed_by_server(sock: socket.socket) -> bool:
    """Read until the server closes the connection (``True``), or the socket's timeout."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def post(path: bytes, body: bytes = b"{}", extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n%s" % (
        path,
        len(body),
        extra,
        body,
    )
