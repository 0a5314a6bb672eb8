"""One client connection of the proxy's HTTP/1.1 server (re-exported by
:mod:`embedcache.proxy.http`): the asyncio protocol, parsing with httptools, and deciding
each request's admission; answering is :class:`~embedcache.proxy.http.answers.Answers`'.

Reading stops (the transport is paused) while answers are not being read (writes paused),
while an admission is decided, while :data:`MAX_PIPELINED` requests wait, and for good
after an error or a refusal. What a read brought in beyond that is parsed no further than
one slice (:data:`_SLICE`); the rest waits unparsed. So a connection holds at most a few
hundred small requests and about one read of bytes, whatever its client sends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from time import perf_counter
from typing import TYPE_CHECKING, cast

import httptools

from .answers import BODY, CONTINUE, HEAD, IDLE, Answers
from .messages import MAX_HEADER_BYTES, MAX_HEADERS, MAX_PIPELINED, Refusal, Request

if TYPE_CHECKING:
    from .connections import Connections

__all__ = ["WRITE_BUFFER_HIGH", "HttpConnection"]

#: Bytes of answers buffered for a connection before it counts as not reading them.
WRITE_BUFFER_HIGH = 64 * 1024
#: Bytes parsed at a time from one read: the most parsed after reading is paused.
_SLICE = 16 * 1024
_INTERNAL = Refusal(500, b'{"detail":"internal error in the embedcache proxy"}')
_BUSY = b"too many request bodies in flight; retry later"

log = logging.getLogger("embedcache")


class _Stop(Exception):
    """Raised from a parser callback: parse nothing more (the answer is decided)."""


class _Reject(Exception):
    """Raised from a parser callback: answer with this error and close."""

    def __init__(self, status: int, detail: bytes) -> None:
        super().__init__(detail.decode())
        self.status = status
        self.detail = detail


# What a closed connection's parser is swapped for: the parser holds its protocol and the
# protocol its parser, a cycle only the (rarely run) cyclic collector would free.
_DEAD_PARSER = httptools.HttpRequestParser(object())


class HttpConnection(Answers):
    """One client connection: parsing, the queue of its pipelined requests, and writing.

    :param owner: the worker's :class:`~embedcache.proxy.http.connections.Connections` (its
        handlers, limits, clock and body-memory count).
    """

    def __init__(self, owner: Connections) -> None:
        super().__init__(owner)
        self._parser = httptools.HttpRequestParser(self)
        self._backlog: memoryview | None = None  # read, not parsed yet (reading paused)

    @property
    def buffered(self) -> int:
        """Bytes held for this connection: read and not parsed, or written and not sent."""
        backlog = 0 if self._backlog is None else len(self._backlog)
        transport = self._transport
        return backlog + (0 if transport is None else transport.get_write_buffer_size())

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are transports without deriving from asyncio's class.
        self._transport = cast(asyncio.Transport, transport)
        if not self._owner.opened(self, self._transport):
            self._stopped = self._shut = True
            return
        self._transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self._scope_base = {
            "client": transport.get_extra_info("peername"),
            "server": transport.get_extra_info("sockname"),
        }

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.closed(self)
        self._transport = None
        self._stopped = True
        self._parser = _DEAD_PARSER
        # Everything this connection read goes now, by reference counting.
        self._drop_request()
        for request in self._queue:
            self._owner.body_bytes -= request.body_size
        self._queue.clear()
        self._final = None
        self._backlog = None
        self._wake()
        self._lost.set()

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        if len(data) > _SLICE:
            self._feed_slices(memoryview(data))
            return
        try:  # _feed, inlined: a read of one small request is the common case
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parse_failed(exc)

    def pause_writing(self) -> None:
        self._write_paused = True
        if not self._busy and not self._shut:
            self._start_answering()  # it waits: nothing more is answered until drained
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self._shut:
            self._wake()
            self._maybe_resume()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._request = Request()
        self._phase = HEAD
        self._begun += 1

    def on_url(self, url: bytes) -> None:
        request = self._request
        request.target += url
        request.header_bytes += len(url)
        if request.header_bytes > MAX_HEADER_BYTES:
            raise _Reject(431, b"request headers too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Kept short (it runs per header): the names are looked at once they are all in.
        request = self._request
        request.headers.append((name, value))
        request.header_bytes += len(name) + len(value)
        if request.header_bytes > MAX_HEADER_BYTES:
            raise _Reject(431, b"request headers too large")
        if len(request.headers) > MAX_HEADERS:
            raise _Reject(431, b"too many request headers")

    def on_headers_complete(self) -> None:
        request = self._request
        owner = self._owner
        parser = self._parser
        request.method = parser.get_method()
        if self._log_access is not None:
            request.received = perf_counter()
            request.client = self._scope_base["client"]
        request.headers = headers = [(name.lower(), value) for name, value in request.headers]
        hosts = 0
        for name, value in headers:
            if name == b"authorization":
                request.authorization = value
            elif name == b"host":
                hosts += 1
            elif name == b"content-length":
                if value.isdigit():
                    length = int(value)
                    if length > owner.max_body:
                        raise _Reject(413, b"request body too large")
                    if owner.body_bytes + length > owner.max_body_memory:
                        raise _Reject(503, _BUSY)
            elif name == b"expect" and value.lower() == b"100-continue":
                request.expects_continue = True
        # RFC 9112 section 3.2: exactly one Host (none allowed only before HTTP/1.1).
        if hosts != 1 and (hosts or parser.get_http_version() != "1.0"):
            raise _Reject(400, b"a request needs exactly one Host header")
        if request.target[0] != 47 and request.target != b"*":  # not "/": absolute-form
            request.target = _origin_form(request.target)
        request.keep_alive = bool(parser.should_keep_alive()) and not self._closing
        self._phase = BODY
        if self._admit is not None and self._admission_pending(request):
            return
        if request.expects_continue:
            if self._busy or self._queue:
                self._continue_for = request  # once the answers before it are written
            elif self._transport is not None:
                self._transport.write(CONTINUE)

    def on_body(self, body: bytes) -> None:
        request = self._request
        size = len(body)
        request.chunks.append(body)
        request.body_size += size
        owner = self._owner
        owner.body_bytes += size
        if request.body_size > owner.max_body:
            raise _Reject(413, b"request body too large")
        if owner.body_bytes > owner.max_body_memory:
            raise _Reject(503, _BUSY)

    def on_message_complete(self) -> None:
        request = self._request
        self._phase = IDLE
        chunks = request.chunks
        request.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if self._log_access is not None:
            request.received = perf_counter()
        queue = self._queue
        if not self._busy and not queue:
            answer = self._try_fast(request)
            if answer is not None:
                transport = self._transport
                if transport is not None:
                    transport.writelines(answer)
                self._owner.body_bytes -= request.body_size
                if self._log_access is not None:
                    self._log(request, 200)
                if not request.keep_alive:
                    self._close()
                    raise _Stop
                return
        queue.append(request)
        if len(queue) >= MAX_PIPELINED:
            self._pause_reading()
        if not self._busy:
            self._start_answering()
        else:
            self._wake()
        if not request.keep_alive:
            self._stopped = True
            raise _Stop  # its answer is the last: what follows it is not read

    # Reading

    def _feed_slices(self, view: memoryview) -> None:
        size = len(view)
        offset = 0
        while offset < size:
            if self._stopped:
                return
            if self._read_paused:
                self._backlog = view[offset:]
                return
            try:
                self._parser.feed_data(view[offset : offset + _SLICE])
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                self._parse_failed(exc)
            offset += _SLICE

    def _parse_failed(self, exc: Exception) -> None:
        if isinstance(exc, httptools.HttpParserUpgrade):
            self._fail(501, b"protocol upgrades are not supported")
            return
        # A callback's exception reaches here wrapped, as the error's context.
        cause = exc.__context__
        if isinstance(cause, _Stop):
            return
        if isinstance(cause, _Reject):
            self._fail(cause.status, cause.detail)
        else:
            self._fail(400, b"malformed HTTP request")

    def _maybe_resume(self) -> None:
        if (
            not self._read_paused
            or self._stopped
            or self._write_paused
            or self._admitting
            or len(self._queue) >= MAX_PIPELINED // 2
        ):
            return
        self._read_paused = False
        backlog = self._backlog
        if backlog is not None:
            self._backlog = None
            self._feed_slices(backlog)
            if self._read_paused or self._stopped:
                return
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _finish(self, request: Request | None, status: int, data: bytes) -> None:
        self._backlog = None
        super()._finish(request, status, data)

    # Admission

    def _admission_pending(self, request: Request) -> bool:
        """Ask :attr:`Handlers.admit` about ``request``: ``True`` while it is decided
        elsewhere; a refusal stops the parse."""
        assert self._admit is not None
        try:
            decision = self._admit(request)
        except Exception:
            log.exception("embedcache proxy: unexpected error deciding a request")
            decision = _INTERNAL
        if decision is None:
            return False
        if isinstance(decision, Refusal):
            self._refuse(request, decision)
            raise _Stop
        request.admitting = True
        self._admitting += 1
        self._pause_reading()
        self._owner.keep(asyncio.get_running_loop().create_task(self._decide(request, decision)))
        if not self._busy:
            self._start_answering()  # it waits for the decision: nothing overtakes it
        return True

    async def _decide(self, request: Request, pending: Awaitable[Refusal | None]) -> None:
        try:
            decision = await pending
        except Exception:
            log.exception("embedcache proxy: unexpected error deciding a request")
            decision = _INTERNAL
        request.admitting = False
        self._admitting -= 1
        if self._transport is None:
            return
        if isinstance(decision, Refusal):
            self._refuse(request, decision)
        elif request is self._request and self._phase == BODY and request.expects_continue:
            self._continue_for = request  # written by the answering task, in order
        self._wake()
        self._maybe_resume()


def _origin_form(target: bytes) -> bytes:
    """The path and query of an absolute-form target (``http://host/path?query``)."""
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        raise _Reject(400, b"malformed request target") from None
    path = url.path or b"/"
    return path + b"?" + url.query if url.query else path
