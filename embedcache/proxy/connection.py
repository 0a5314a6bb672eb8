"""One client connection of the proxy's HTTP/1.1 server (re-exported by
:mod:`embedcache.proxy.http`): parsing with httptools, the queue of its pipelined requests,
writing their answers in order, and the state its deadlines are judged by.

A connection is in one phase at a time, and :class:`~embedcache.proxy.connections.Connections`
closes it once its :attr:`HttpConnection.deadline` (on the worker's coarse clock) is past:
idle (before a request's first byte) by the idle timeout, a head being read by the header
timeout, a body by the body timeout, answers unread (writes paused) by the send timeout.
While the connection's requests are being answered it has no read deadline.

Reading stops (the transport is paused) while answers are not being read, while an
admission is decided, while :data:`MAX_PIPELINED` requests wait, and for good after an
error or a refusal; what a read brought in beyond that is parsed no further than one
slice (:data:`_SLICE`), the rest waits unparsed. So a connection holds at most a few dozen
requests and about one read of bytes, whatever its client sends.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable
from time import perf_counter
from typing import TYPE_CHECKING, Any, cast

import httptools

from .asgi import call_app
from .messages import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_PIPELINED,
    Refusal,
    Request,
    error_bytes,
    response_bytes,
)

if TYPE_CHECKING:
    from .connections import Connections

__all__ = ["WRITE_BUFFER_HIGH", "HttpConnection"]

#: Bytes of answers buffered for a connection before it counts as not reading them.
WRITE_BUFFER_HIGH = 64 * 1024
#: Bytes parsed at a time from one read: the most parsed after reading is paused.
_SLICE = 16 * 1024
_INF = float("inf")
_IDLE, _HEAD, _BODY = 0, 1, 2

_OK_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_INTERNAL = Refusal(500, b'{"detail":"internal error in the embedcache proxy"}')

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
_NO_REQUEST = Request()


class HttpConnection(asyncio.Protocol):
    """One client connection: parsing, the queue of its pipelined requests, and writing.

    :param owner: the worker's :class:`~embedcache.proxy.connections.Connections` (its
        handlers, limits, clock and body-memory count).
    """

    def __init__(self, owner: Connections) -> None:
        self._owner = owner
        handlers = owner.handlers
        self._fast = handlers.fast
        self._app = handlers.app
        self._admit = handlers.admit
        self._log_access = handlers.log_access
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._request = _NO_REQUEST  # being read when ``_phase`` is not idle
        self._phase = _IDLE
        self._queue: deque[Request] = deque()  # read, waiting for the ones before them
        self._busy = False  # a task answers the queue (or waits to)
        self._read_paused = False
        self._write_paused = False
        self._stopped = False  # nothing more is read: an error, a refusal, a last request
        self._shut = False  # the transport is closing
        self._closing = False  # the server drains: answer what is read, then close
        self._admitting = 0  # admissions being decided
        self._continue_due = False  # a 100 Continue waits for earlier answers
        self._final: tuple[Request | None, int, bytes] | None = None  # the last answer
        self._backlog: memoryview | None = None  # read, not parsed yet (reading paused)
        self._waiter: asyncio.Future[None] | None = None  # the answering task waits on it
        self._lost = asyncio.Event()
        self._scope_base: dict[str, Any] = {}
        #: When the sweep closes this connection (the owner's coarse clock).
        self.deadline = _INF

    # What the owner and the tests look at

    @property
    def idle(self) -> bool:
        """Nothing is being read, queued or answered on this connection."""
        return not self._phase and not self._queue and not self._busy

    @property
    def phase(self) -> str:
        """What is being read: ``"idle"`` (no request), ``"head"`` or ``"body"``."""
        return ("idle", "head", "body")[self._phase]

    @property
    def queued(self) -> int:
        """Requests read and not answered yet."""
        return len(self._queue)

    @property
    def buffered(self) -> int:
        """Bytes held for this connection: read and not parsed, or written and not sent."""
        backlog = 0 if self._backlog is None else len(self._backlog)
        transport = self._transport
        return backlog + (0 if transport is None else transport.get_write_buffer_size())

    @property
    def writing_paused(self) -> bool:
        """Answers wait for the client to read the ones before them."""
        return self._write_paused

    @property
    def reading_paused(self) -> bool:
        """Nothing more is being read from the client for now."""
        return self._read_paused

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
        owner = self._owner
        self.deadline = owner.clock + owner.idle_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.closed(self)
        self._transport = None
        self._stopped = True
        self._parser = _DEAD_PARSER
        # Everything this connection read goes now, by reference counting.
        self._release(self._request)
        self._request = _NO_REQUEST
        for request in self._queue:
            self._release(request)
        self._queue.clear()
        self._final = None
        self._backlog = None
        self._phase = _IDLE
        self._wake()
        self._lost.set()

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        if len(data) > _SLICE:
            self._feed_slices(memoryview(data))
        else:
            self._feed(data)

    def pause_writing(self) -> None:
        self._write_paused = True
        if not self._busy and not self._shut:
            self._start_answering()  # it waits: nothing more is answered until drained
        owner = self._owner
        self.deadline = owner.clock + owner.send_timeout
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._shut:
            return
        self._arm()
        self._wake()
        self._maybe_resume()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._request = Request()
        self._phase = _HEAD
        if not self._busy:
            owner = self._owner
            self.deadline = owner.clock + owner.header_timeout

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
                        raise _Reject(503, b"too many request bodies in flight; retry later")
            elif name == b"expect" and value.lower() == b"100-continue":
                request.expects_continue = True
        # RFC 9112 section 3.2: exactly one Host (none allowed only before HTTP/1.1).
        if hosts != 1 and (hosts or parser.get_http_version() != "1.0"):
            raise _Reject(400, b"a request needs exactly one Host header")
        if request.target[:1] != b"/" and request.target != b"*":
            request.target = _origin_form(request.target)
        request.keep_alive = bool(parser.should_keep_alive()) and not self._closing
        self._phase = _BODY
        if not self._busy:
            self.deadline = owner.clock + owner.body_timeout
        if self._admit is not None and self._admission_pending(request):
            return
        if request.expects_continue:
            self._invite()

    def on_body(self, body: bytes) -> None:
        request = self._request
        size = len(body)
        request.chunks.append(body)
        request.body_size += size
        request.held += size
        owner = self._owner
        owner.body_bytes += size
        if request.body_size > owner.max_body:
            raise _Reject(413, b"request body too large")
        if owner.body_bytes > owner.max_body_memory:
            raise _Reject(503, b"too many request bodies in flight; retry later")

    def on_message_complete(self) -> None:
        request = self._request
        self._phase = _IDLE
        chunks = request.chunks
        request.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if request.expects_continue:
            self._continue_due = False  # the client sent the body without waiting
        if self._log_access is not None:
            request.received = perf_counter()
        queue = self._queue
        if not self._busy and not queue:
            answer = self._try_fast(request)
            if answer is not None:
                owner = self._owner
                self.deadline = owner.clock + owner.idle_timeout  # before a pause re-arms it
                transport = self._transport
                if transport is not None:
                    transport.writelines(answer)
                if request.held:
                    owner.body_bytes -= request.held
                    request.held = 0
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

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(501, b"protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            # A callback's exception reaches here wrapped, as the error's context.
            cause = exc.__context__
            if isinstance(cause, _Stop):
                return
            if isinstance(cause, _Reject):
                self._fail(cause.status, cause.detail)
            else:
                self._fail(400, b"malformed HTTP request")

    def _feed_slices(self, view: memoryview) -> None:
        size = len(view)
        offset = 0
        while offset < size:
            if self._stopped:
                return
            if self._read_paused:
                self._backlog = view[offset:]
                return
            self._feed(view[offset : offset + _SLICE])
            offset += _SLICE

    def _pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()

    def _maybe_resume(self) -> None:
        """Read again once nothing holds the connection back."""
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
        elif request is self._request and self._phase == _BODY and request.expects_continue:
            self._continue_due = True  # sent by the answering task, after earlier answers
        self._wake()
        self._maybe_resume()

    def _invite(self) -> None:
        """Ask for the body (``100 Continue``) now, or once earlier answers are written."""
        if self._busy or self._queue:
            self._continue_due = True
        elif self._transport is not None:
            self._transport.write(_CONTINUE)

    # Answering

    def _try_fast(self, request: Request) -> list[bytes] | None:
        """The whole response from :attr:`Handlers.fast`, as pieces written without joining
        (the body is most of it), or ``None``."""
        try:
            answer = self._fast(request)
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
        if request.method == b"HEAD":
            return [b"".join(head)]
        return [b"".join(head), body]

    def _start_answering(self) -> None:
        self._busy = True
        self.deadline = _INF  # no read deadline while its requests are answered
        asyncio.get_running_loop().create_task(self._answer_queue())

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _answer_queue(self) -> None:
        try:
            queue = self._queue
            while self._transport is not None:
                if (
                    self._write_paused
                    or (queue and queue[0].admitting)
                    or (not queue and self._admitting)
                ):
                    self._waiter = asyncio.get_running_loop().create_future()
                    await self._waiter
                    self._waiter = None
                    continue
                if not queue:
                    break
                request = queue.popleft()
                if self._read_paused:
                    self._maybe_resume()
                try:
                    status = 200
                    answer = self._try_fast(request)
                    if answer is None:
                        data, status = await call_app(
                            self._app, request, self._scope_base, self._lost
                        )
                        answer = [data]
                    transport = self._transport
                    if transport is None:
                        return  # the client has gone; the work is done (and committed)
                    transport.writelines(answer)
                    if self._log_access is not None:
                        self._log(request, status)
                finally:
                    self._release(request)
                if not request.keep_alive:
                    self._close()
                    return
            if self._transport is None:
                return
            if self._continue_due and self._phase == _BODY:
                self._continue_due = False
                self._transport.write(_CONTINUE)
            if self._final is not None:
                self._write_final()
            elif self._closing and not self._phase:
                self._close()
        finally:
            self._busy = False
            self._waiter = None
            if not self._shut and self._transport is not None:
                self._arm()

    def _arm(self) -> None:
        """Set the deadline of the phase the connection is in, from now."""
        owner = self._owner
        if self._write_paused:
            self.deadline = owner.clock + owner.send_timeout
        elif self._busy:
            self.deadline = _INF
        elif self._phase == _HEAD:
            self.deadline = owner.clock + owner.header_timeout
        elif self._phase == _BODY:
            self.deadline = owner.clock + owner.body_timeout
        else:
            self.deadline = owner.clock + owner.idle_timeout

    def _release(self, request: Request) -> None:
        """Take ``request``'s body bytes off the worker's count (once)."""
        if request.held:
            self._owner.body_bytes -= request.held
            request.held = 0

    def _log(self, request: Request, status: int) -> None:
        assert self._log_access is not None
        received = getattr(request, "received", None)
        seconds = 0.0 if received is None else perf_counter() - received
        try:
            self._log_access(request, status, seconds)
        except Exception:
            log.exception("embedcache proxy: unexpected error writing an access line")

    # Ending

    def _fail(self, status: int, detail: bytes) -> None:
        """Answer the request being read with an error, after earlier answers, and close."""
        request = self._request if self._phase and self._request.method else None
        head_only = request is not None and request.method == b"HEAD"
        self._finish(request, status, error_bytes(status, detail, head_only=head_only))

    def _refuse(self, request: Request, refusal: Refusal) -> None:
        """Answer ``request`` with ``refusal`` (after earlier answers) and close; it and
        whatever was read after it are dropped unanswered."""
        queue = self._queue
        if request in queue:
            while queue:
                dropped = queue.pop()
                self._release(dropped)
                if dropped is request:
                    break
        elif request is not self._request or not self._phase:
            return  # already dropped after an earlier request's refusal
        data = response_bytes(
            refusal.status,
            list(refusal.headers),
            refusal.body,
            keep_alive=False,
            head_only=request.method == b"HEAD",
        )
        self._finish(request, refusal.status, data)

    def _finish(self, request: Request | None, status: int, data: bytes) -> None:
        """Stop reading; write ``data`` once earlier answers are written, then close."""
        self._stopped = True
        self._continue_due = False
        if self._phase:
            self._release(self._request)
            self._request.chunks.clear()
            self._phase = _IDLE
        self._backlog = None
        self._pause_reading()
        self._final = (request, status, data)
        if self._busy:
            self._wake()
        else:
            self._write_final()

    def _write_final(self) -> None:
        final = self._final
        transport = self._transport
        if final is None or transport is None:
            return
        self._final = None
        request, status, data = final
        transport.write(data)
        if request is not None and self._log_access is not None:
            self._log(request, status)
        self._close()

    def _close(self) -> None:
        """Close once what is written is sent; aborted if it is not by the send timeout."""
        transport = self._transport
        self._stopped = self._shut = True
        if transport is not None:
            transport.close()
            owner = self._owner
            self.deadline = owner.clock + owner.send_timeout

    def expire(self) -> None:
        """Its deadline is past: close it (a request being read gets a 408 first)."""
        transport = self._transport
        if transport is None:
            return
        if self._shut or self._write_paused:
            transport.abort()  # its client reads nothing: what is buffered is never sent
        elif self._phase:
            request = self._request if self._phase == _BODY else None
            head_only = request is not None and request.method == b"HEAD"
            detail = b"request not received in time"
            self._finish(request, 408, error_bytes(408, detail, head_only=head_only))
        else:
            self._close()

    def shut_down(self) -> None:
        """The server drains: answer what has been read, take no new request, close."""
        self._closing = True
        if self._phase == _BODY:
            self._request.keep_alive = False
        if self.idle and not self._shut:
            self._close()

    def close(self) -> None:
        """Close once what is written is sent (an idle connection making room)."""
        if not self._shut:
            self._close()

    def abort(self) -> None:
        """Close now, whatever is being read or written."""
        if self._transport is not None:
            self._transport.abort()


def _origin_form(target: bytes) -> bytes:
    """The path and query of an absolute-form target (``http://host/path?query``)."""
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        raise _Reject(400, b"malformed request target") from None
    path = url.path or b"/"
    return path + b"?" + url.query if url.query else path
