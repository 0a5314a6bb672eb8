"""What the proxy's HTTP/1.1 server and its users share: a request as read off the wire,
a refusal given at its headers, the limits a worker holds its clients to, the handlers that
answer, and how a whole response is written (re-exported by :mod:`embedcache.proxy.http`).
"""

from __future__ import annotations

import http
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_PIPELINED",
    "ASGIApp",
    "Admit",
    "Handlers",
    "LogAccess",
    "Refusal",
    "Request",
    "ServerLimits",
    "error_bytes",
    "response_bytes",
]

MAX_HEADERS = 100
MAX_HEADER_BYTES = 64 * 1024
#: Requests a connection may have read and not yet answered before it stops being read.
MAX_PIPELINED = 32

ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]

_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}
_JSON = b"application/json"


class Request:
    """One request as it came off the wire (names lower-cased in ``headers``; ``target``
    is the path and query, also when the client sent the absolute form)."""

    __slots__ = (
        "admitting", "authorization", "body", "body_size", "chunks", "client", "expects_continue",
        "header_bytes", "headers", "hits", "keep_alive", "method", "received",
        "target", "texts",
    )  # fmt: skip

    #: When its last byte was read (``time.perf_counter``), set only with an access log.
    received: float
    #: The peer's ``(host, port)``, set only with an access log.
    client: tuple[str, int]

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
        # Its admission is still being decided (the connection's own bookkeeping).
        self.admitting = False
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
    head_only: bool = False,
) -> bytes:
    """A whole HTTP/1.1 response; ``content-length`` is added when ``headers`` lacks one.
    With ``head_only`` (the answer to a ``HEAD``) the body is left out, its length kept."""
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
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head_only else body)


def error_bytes(status: int, detail: bytes, *, head_only: bool = False) -> bytes:
    """The server's own JSON error answer (``{"detail": ...}``), closing the connection."""
    body = b'{"detail":"' + detail + b'"}'
    return response_bytes(
        status, [(b"content-type", _JSON)], body, keep_alive=False, head_only=head_only
    )
