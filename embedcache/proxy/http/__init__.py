"""A small HTTP/1.1 server on asyncio (uvloop) and httptools: hits answered without a
framework in the way, anything else handed to the ASGI application.

Per request, :attr:`Handlers.fast` may answer from what is already in memory (a full
response body, or ``None``); every other request goes to :attr:`Handlers.app`, a plain
ASGI 3 application, through a minimal bridge (one ``http.request`` message carrying the
whole body, the response buffered and written with its length). Connections are kept
alive as HTTP/1.1 says, and pipelined requests are answered strictly in order (an interim
``100 Continue`` and the server's own errors included): a request waits for the ones
before it on its connection.

Defences, each bounded by :class:`ServerLimits`: deadlines for an idle connection, a
request's head, its body, and answers left unread; a cap on open connections per worker;
write backpressure (a connection whose answers are not read is not read either); a
decision on each request (:attr:`Handlers.admit`) before its body is read; a bound on the
request line and headers (:data:`MAX_HEADER_BYTES`, :data:`MAX_HEADERS`), on one body and
on the body bytes a worker holds at once. Over a limit the answer is a 4xx or 503 and the
connection closes.

The parts: :mod:`.messages` (what is shared), :mod:`.connection` (reading one connection),
:mod:`.answers` (answering it), :mod:`.connections` (all of a worker's), :mod:`.asgi` (the
bridge); this package gathers their public names.
"""

from __future__ import annotations

from .connection import WRITE_BUFFER_HIGH, HttpConnection
from .connections import Connections
from .messages import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_PIPELINED,
    Admit,
    Handlers,
    LogAccess,
    Refusal,
    Request,
    ServerLimits,
    response_bytes,
)

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_PIPELINED",
    "WRITE_BUFFER_HIGH",
    "Admit",
    "Connections",
    "Handlers",
    "HttpConnection",
    "LogAccess",
    "Refusal",
    "Request",
    "ServerLimits",
    "response_bytes",
]
