"""The answering half of a connection of the proxy's HTTP/1.1 server (the reading half is
:class:`~embedcache.proxy.http.connection.HttpConnection`, built on this): the queue of read
requests answered strictly in order, the last answer (an error or a refusal) written
after them, how a connection ends, and how long it may stay in the phase it is in.

Deadlines cost the request path nothing: the worker's sweep looks at each connection's
progress (:meth:`Answers.overdue`: requests begun, what is being read, whether it is
answering, sending, closing) and times a connection from the first sweep that saw it in
its present state. So a timeout is honoured to within one sweep.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .asgi import call_app
from .messages import Refusal, Request, error_bytes, response_bytes

if TYPE_CHECKING:
    from .connections import Connections

__all__ = ["Answers"]

IDLE, HEAD, BODY = 0, 1, 2
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_OK_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
_NO_REQUEST = Request()
_INF = float("inf")

log = logging.getLogger("embedcache")


class Answers(asyncio.Protocol):
    """A connection's state, and all of it that answers requests (see the module)."""

    def __init__(self, owner: Connections) -> None:
        self._owner = owner
        handlers = owner.handlers
        self._fast = handlers.fast
        self._app = handlers.app
        self._admit = handlers.admit
        self._log_access = handlers.log_access
        self._transport: asyncio.Transport | None = None
        self._request = _NO_REQUEST  # being read when ``_phase`` is not idle
        self._phase = IDLE
        self._begun = 0  # requests begun: the sweep's sign of progress
        self._queue: deque[Request] = deque()  # read, waiting for the ones before them
        self._busy = False  # a task answers the queue (or waits to)
        self._read_paused = False
        self._write_paused = False
        self._stopped = False  # nothing more is read: an error, a refusal, a last request
        self._shut = False  # the transport is closing
        self._closing = False  # the server drains: answer what is read, then close
        self._admitting = 0  # admissions being decided
        self._continue_for: Request | None = None  # owed a 100 Continue after earlier answers
        self._final: tuple[Request | None, int, bytes] | None = None  # the last answer
        self._waiter: asyncio.Future[None] | None = None  # the answering task waits on it
        self._lost = asyncio.Event()
        self._scope_base: dict[str, Any] = {}
        self._seen: tuple[int, int, bool, bool, bool] | None = None  # by the last sweep
        self._seen_since = owner.clock  # when the sweep first saw it in that state

    # What the owner and the tests look at

    @property
    def idle(self) -> bool:
        """Nothing is being read, queued or answered on this connection."""
        return not self._phase and not self._queue and not self._busy

    @property
    def idle_since(self) -> float:
        """When the sweep first saw the connection as it is (the owner's clock)."""
        return self._seen_since

    @property
    def phase(self) -> str:
        """What is being read: ``"idle"`` (no request), ``"head"`` or ``"body"``."""
        return ("idle", "head", "body")[self._phase]

    @property
    def queued(self) -> int:
        """Requests read and not answered yet."""
        return len(self._queue)

    @property
    def writing_paused(self) -> bool:
        """Answers wait for the client to read the ones before them."""
        return self._write_paused

    @property
    def reading_paused(self) -> bool:
        """Nothing more is being read from the client for now."""
        return self._read_paused

    def overdue(self, now: float) -> bool:
        """Whether the connection has been in its present state past its timeout, as
        seen by the sweeps (``now`` on the owner's clock)."""
        state = (self._begun, self._phase, self._busy, self._write_paused, self._shut)
        if state != self._seen:
            self._seen = state
            self._seen_since = now
            return False
        owner = self._owner
        if self._shut or self._write_paused:
            timeout = owner.send_timeout
        elif self._busy:
            return False  # its requests are being answered: no read deadline
        elif self._phase == HEAD:
            timeout = owner.header_timeout
        elif self._phase == BODY:
            timeout = owner.body_timeout
        else:
            timeout = owner.idle_timeout
        return now - self._seen_since >= timeout

    # Reading, as far as answering needs it (the reading half does the rest)

    def _feed_slices(self, view: memoryview) -> None:
        raise NotImplementedError

    def _pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()

    def _maybe_resume(self) -> None:
        """Read again once nothing holds the connection back."""
        raise NotImplementedError

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
                    if self._transport is None:
                        return  # the client has gone; the work is done (and committed)
                    self._transport.writelines(answer)
                    if self._log_access is not None:
                        self._log(request, status)
                finally:
                    self._owner.body_bytes -= request.body_size
                if not request.keep_alive:
                    self._close()
                    return
            transport = self._transport
            if transport is None:
                return
            if self._continue_for is self._request and self._phase == BODY:
                transport.write(CONTINUE)
            self._continue_for = None
            if self._final is not None:
                self._write_final()
            elif self._closing and not self._phase:
                self._close()
        finally:
            self._busy = False
            self._waiter = None

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
                self._owner.body_bytes -= dropped.body_size
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
        self._continue_for = None
        self._drop_request()
        self._pause_reading()
        self._final = (request, status, data)
        if self._busy:
            self._wake()
        else:
            self._write_final()

    def _drop_request(self) -> None:
        """Forget the request being read, and its body."""
        if self._phase:
            request = self._request
            self._owner.body_bytes -= request.body_size
            request.chunks.clear()
            self._phase = IDLE
        self._request = _NO_REQUEST

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
        self._stopped = self._shut = True
        if self._transport is not None:
            self._transport.close()

    def expire(self) -> None:
        """It is :meth:`overdue`: close it (a request being read gets a 408 first)."""
        transport = self._transport
        if transport is None:
            return
        if self._shut or self._write_paused:
            transport.abort()  # its client reads nothing: what is buffered is never sent
        elif self._phase:
            request = self._request if self._phase == BODY else None
            head_only = request is not None and request.method == b"HEAD"
            detail = b"request not received in time"
            self._finish(request, 408, error_bytes(408, detail, head_only=head_only))
        else:
            self._close()

    def shut_down(self) -> None:
        """The server drains: answer what has been read, take no new request, close."""
        self._closing = True
        if self._phase == BODY:
            self._request.keep_alive = False
        if self.idle and not self._shut:
            self._close()

    def evict(self) -> None:
        """Close an idle connection to make room: at once, unless what it has written is
        still being sent (then once it is). The owner stops sweeping it, so it must not
        linger: a connection already closing, or with answers unsent, is aborted."""
        transport = self._transport
        if transport is None:
            return
        if self._shut or transport.get_write_buffer_size():
            transport.abort()
        else:
            self._close()

    def abort(self) -> None:
        """Close now, whatever is being read or written."""
        if self._transport is not None:
            self._transport.abort()
