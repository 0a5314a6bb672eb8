"""A small HTTP/1.1 server on asyncio (uvloop) and httptools: hits answered without a
framework in the way, anything else handed to the ASGI application.

Per request, :attr:`Handlers.fast` may answer from what is already in memory (a full
response body, or ``None``); every other request goes to :attr:`Handlers.app`, a plain
ASGI 3 application, through a minimal bridge (one ``http.request`` message carrying the
whole body, the response buffered and written with its length). Connections are kept
alive as HTTP/1.1 says, and pipelined requests are answered in order: a request waits for
the ones before it on its connection.

Bounds: the request line and headers (:data:`MAX_HEADER_BYTES`, :data:`MAX_HEADERS`) and
the body (``max_body``) are limited; over a limit the answer is 431 or 413 and the
connection closes. A client may pipeline at most :data:`MAX_PIPELINED` requests before the
server stops reading from it until it has caught up.
"""

from __future__ import annotations

import asyncio
import http
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote

import httptools

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_PIPELINED",
    "Connections",
    "Handlers",
    "HttpConnection",
    "Refusal",
    "Request",
    "ServerLimits",
    "response_bytes",
]

MAX_HEADERS = 100
MAX_HEADER_BYTES = 64 * 1024
MAX_PIPELINED = 32

ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]

log = logging.getLogger("embedcache")

_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}
_JSON = b"application/json"
_OK_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"


class Request:
    """One request as it came off the wire (names lower-cased in ``headers``)."""

    __slots__ = (
        "authorization", "body", "body_size", "chunks", "expects_continue", "header_bytes",
        "headers", "hits", "keep_alive", "method", "target", "texts",
    )  # fmt: skip

    def __init__(
        self,
        method: bytes = b"",
        target: bytes = b"",
        body: bytes = b"",
        authorization: bytes = b"",
    ) -> None:
        self.method = method
        self.target = target
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = body
        self.keep_alive = True
        self.authorization = authorization
        self.expects_continue = False
        self.header_bytes = 0
        self.chunks: list[bytes] = []  # the body as it arrives, joined when it is complete
        self.body_size = 0
        # Filled in by whoever answers the request, for its access line (-1: not known).
        self.texts = -1
        self.hits = -1

    @property
    def path(self) -> bytes:
        return self.target.partition(b"?")[0]


@dataclass(frozen=True)
class Refusal:
    """An answer given as soon as a request's headers are in, before its body is read; the
    connection closes after it."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ((b"content-type", b"application/json"),)


#: Decides a request from its method, target and headers (no body yet): ``None`` to read
#: its body and serve it, a :class:`Refusal`, or an awaitable of either when the decision
#: needs work off the event loop (the connection stops reading meanwhile).
Admit = Callable[[Request], "Refusal | Awaitable[Refusal | None] | None"]
#: Told of every answered request: the request (``texts`` and ``hits`` as the answerer set
#: them), the status written, and the seconds from its last byte read to its answer written.
LogAccess = Callable[[Request, int, float], None]


@dataclass(frozen=True)
class ServerLimits:
    """Every bound a worker puts on its clients (each an option of ``embedcache serve``).

    :param idle_timeout: seconds a kept-alive connection may wait for its next request
        (and a new one for its first byte).
    :param header_timeout: seconds from a request's first byte to its last header.
    :param body_timeout: seconds from a request's last header to its last body byte.
    :param send_timeout: seconds answers may wait unread (writes paused) before the
        connection is closed.
    :param max_connections: open connections per worker; over it the oldest idle one is
        closed to make room, else the new one gets a 503.
    :param max_body: the largest request body accepted, in bytes.
    :param max_body_memory: request body bytes held at once by one worker, over all its
        connections; a body that would pass it gets a 503.
    """

    idle_timeout: float = 15.0
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    send_timeout: float = 30.0
    max_connections: int = 1024
    max_body: int = 64 * 1024 * 1024
    max_body_memory: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class Handlers:
    """What the server does with requests.

    :param fast: answers a request from memory: the JSON body and extra headers of a 200,
        or ``None`` to hand it to ``app``. Runs on the event loop: it must not block.
    :param app: the ASGI application for everything else; the scope carries the
        :class:`Request` as ``scope["embedcache.request"]`` (to set ``texts`` and ``hits``).
    :param admit: decides each request once its headers are in (``None``: all are read).
    :param log_access: told of every answered request (``None``: no access log).
    :param max_body: the largest request body accepted, in bytes (superseded by
        :attr:`ServerLimits.max_body` when the server is built with limits).
    """

    fast: Callable[[Request], tuple[bytes, list[tuple[bytes, bytes]]] | None]
    app: ASGIApp
    admit: Admit | None = None
    log_access: LogAccess | None = None
    max_body: int = 64 * 1024 * 1024


def response_bytes(
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    keep_alive: bool,
) -> bytes:
    """A whole HTTP/1.1 response; ``content-length`` is added when ``headers`` lacks one."""
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Unknown"))]
    has_length = False
    for name, value in headers:
        if name.lower() == b"content-length":
            has_length = True
        lines.append(name + b": " + value)
    if not has_length:
        lines.append(b"content-length: %d" % len(body))
    if not keep_alive:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _error(status: int, detail: bytes) -> bytes:
    body = b'{"detail":"' + detail + b'"}'
    return response_bytes(status, [(b"content-type", _JSON)], body, keep_alive=False)


class HttpConnection(asyncio.Protocol):
    """One client connection: parsing, the queue of its pipelined requests, and writing."""

    def __init__(self, handlers: Handlers, connections: set[HttpConnection]) -> None:
        self._handlers = handlers
        self._connections = connections
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._request = Request()  # being read, when ``_reading``
        self._reading = False
        self._queue: deque[Request] = deque()  # read, waiting for the ones before them
        self._busy = False  # a task is answering the queue
        self._paused = False
        self._closing = False  # answer what is read, then close
        self._lost = asyncio.Event()
        self._scope_base: dict[str, Any] = {}

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are transports without deriving from asyncio's class.
        self._transport = cast(asyncio.Transport, transport)
        self._connections.add(self)
        self._scope_base = {
            "client": transport.get_extra_info("peername"),
            "server": transport.get_extra_info("sockname"),
        }

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None
        self._lost.set()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(501, b"protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            # A callback's exception reaches here wrapped, as the error's context.
            cause = exc.__context__
            if isinstance(cause, _TooLarge):
                self._fail(cause.status, cause.detail)
            else:
                self._fail(400, b"malformed HTTP request")

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._request = Request()
        self._reading = True

    def on_url(self, url: bytes) -> None:
        request = self._request
        request.target += url
        request.header_bytes += len(url)
        if request.header_bytes > MAX_HEADER_BYTES:
            raise _TooLarge(431, b"request headers too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Kept short (it runs per header): the names are looked at once they are all in.
        request = self._request
        request.headers.append((name, value))
        request.header_bytes += len(name) + len(value)
        if request.header_bytes > MAX_HEADER_BYTES:
            raise _TooLarge(431, b"request headers too large")
        if len(request.headers) > MAX_HEADERS:
            raise _TooLarge(431, b"too many request headers")

    def on_headers_complete(self) -> None:
        request = self._request
        request.headers = headers = [(name.lower(), value) for name, value in request.headers]
        for name, value in headers:
            if name == b"authorization":
                request.authorization = value
            elif name == b"content-length":
                if value.isdigit() and int(value) > self._handlers.max_body:
                    raise _TooLarge(413, b"request body too large")
            elif name == b"expect" and value.lower() == b"100-continue":
                request.expects_continue = True
        request.method = self._parser.get_method()
        request.keep_alive = bool(self._parser.should_keep_alive()) and not self._closing
        if request.expects_continue and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        request = self._request
        request.chunks.append(body)
        request.body_size += len(body)
        if request.body_size > self._handlers.max_body:
            raise _TooLarge(413, b"request body too large")

    def on_message_complete(self) -> None:
        request = self._request
        self._reading = False
        chunks = request.chunks
        request.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request.chunks = []
        if not self._busy and not self._queue:
            answer = self._try_fast(request)
            if answer is not None:
                self._write(answer, request.keep_alive)
                return
        self._queue.append(request)
        if len(self._queue) >= MAX_PIPELINED and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._answer_queue())

    # Serving

    @property
    def idle(self) -> bool:
        """Nothing is being read, queued or answered on this connection."""
        return not self._reading and not self._queue and not self._busy

    def shut_down(self) -> None:
        """Answer what has been read, then close (the server is stopping)."""
        self._closing = True
        if self.idle and self._transport is not None:
            self._transport.close()

    def _try_fast(self, request: Request) -> list[bytes] | None:
        """The whole response from :attr:`Handlers.fast`, as pieces written without joining
        (the body is most of it), or ``None``."""
        try:
            answer = self._handlers.fast(request)
        except Exception:
            log.exception("embedcache proxy: unexpected error on the hit path")
            return None  # the application answers it, errors included
        if answer is None:
            return None
        body, headers = answer
        head = [_OK_HEAD]
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        if not request.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        return [b"".join(head), body]

    async def _answer_queue(self) -> None:
        try:
            while self._queue and self._transport is not None:
                request = self._queue.popleft()
                answer = self._try_fast(request) or [await self._call_app(request)]
                self._write(answer, request.keep_alive)
                if not request.keep_alive:
                    return
                if self._paused and len(self._queue) < MAX_PIPELINED // 2:
                    self._paused = False
                    if self._transport is not None:
                        self._transport.resume_reading()
        finally:
            self._busy = False
            if self._closing and self.idle and self._transport is not None:
                self._transport.close()

    async def _call_app(self, request: Request) -> bytes:
        path, _, query = request.target.partition(b"?")
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method.decode("ascii", "replace"),
            "scheme": "http",
            "path": unquote(path.decode("latin-1")),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": request.headers,
            **self._scope_base,
        }
        body = request.body
        delivered = False
        status = 500
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self._lost.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))

        try:
            await self._handlers.app(scope, receive, send)
        except Exception:
            log.exception("embedcache proxy: unexpected error in the application")
            body_text = b'{"detail":"internal error in the embedcache proxy"}'
            return response_bytes(
                500, [(b"content-type", _JSON)], body_text, keep_alive=request.keep_alive
            )
        return response_bytes(status, headers, b"".join(chunks), keep_alive=request.keep_alive)

    def _write(self, answer: list[bytes], keep_alive: bool) -> None:
        transport = self._transport
        if transport is None:
            return  # the client has gone; the work is done (and committed) all the same
        transport.writelines(answer)
        if not keep_alive:
            transport.close()

    def _fail(self, status: int, detail: bytes) -> None:
        if self._transport is not None:
            self._transport.write(_error(status, detail))
            self._transport.close()


class _TooLarge(Exception):
    def __init__(self, status: int, detail: bytes) -> None:
        super().__init__(detail.decode())
        self.status = status
        self.detail = detail


class Connections:
    """A worker's open connections and the limits they are held to: the protocol factory
    for ``loop.create_server``, the once-a-second sweep of their deadlines, and draining
    on shutdown.

    :param handlers: what requests are answered with.
    :param limits: the bounds (:class:`ServerLimits`).
    """

    def __init__(self, handlers: Handlers, limits: ServerLimits | None = None) -> None:
        self.limits = limits or ServerLimits(max_body=handlers.max_body)
        self.handlers = handlers
        self._open: set[HttpConnection] = set()

    def __call__(self) -> HttpConnection:
        """A new connection's protocol (``loop.create_server``'s factory)."""
        return HttpConnection(self.handlers, self._open)

    def __len__(self) -> int:
        return len(self._open)

    async def watch(self) -> None:
        """Close connections past their deadlines, once a second, until cancelled."""
        while True:
            await asyncio.sleep(1.0)

    async def drain(self, seconds: float) -> None:
        """Stop: answer what has been read, close idle connections now, and close every
        connection still open after ``seconds``."""
        for connection in list(self._open):
            connection.shut_down()
        deadline = time.monotonic() + seconds
        while self._open and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
