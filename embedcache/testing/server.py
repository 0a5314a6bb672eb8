"""The HTTP layer: a threading HTTP/1.1 server that tracks its connections, and the handler.

Kept apart from :class:`~embedcache.testing.JinaEmulator` so that the public class holds
only state and configuration, and this module only HTTP framing and fault timing.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import selectors
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..config import EMBEDDINGS_PATH
from .faults import Fault, Gate, RecordedRequest
from .limits import Admission, RateLimited
from .media import MediaLoader
from .multivector import MULTI_VECTOR_PATH
from .protocol import (
    AUTH_INVALID_API_KEY,
    AUTH_MISSING_API_KEY,
    INPUT_VALIDATION_ERROR,
    INTERNAL_ERROR,
    RESOURCE_NOT_FOUND,
    ApiError,
    error_payload,
    fault_error,
    new_request_id,
    validation_error,
)
from .rerank import RERANK_PATH, parse_rerank, rerank_payload
from .response import embeddings_payload
from .validation import count_inputs, parse_request

if TYPE_CHECKING:
    from .emulator import JinaEmulator

__all__ = ["EmulatorServer"]

_JSON = "application/json"
_MAX_LINE = 65536
_INVALID = object()  # marks a body that is not JSON


class _FramingError(Exception):
    """The request body cannot be delimited; the connection cannot be reused."""


@dataclass
class _Answer:
    status: int | None  # None: drop the connection unanswered
    body: bytes = b""
    content_type: str = _JSON
    tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    #: The rate-limit slot an admitted request holds until its answer is sent.
    admission: Admission | None = None
    wait: float | None = None  # a rate-limit 429's exact wait, for the log

    def release(self) -> None:
        """Give the rate-limit slot back (the request is no longer in flight)."""
        if self.admission is not None:
            self.admission.release()


class EmulatorServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` that stops at once and closes its keep-alive connections.

    Run :meth:`serve` in a thread; to stop, call :meth:`stop_serving`, join that thread,
    then :meth:`close_connections` and ``server_close``. The stock ``server_close`` either
    joins handler threads (blocking while any client holds an idle keep-alive connection)
    or leaves them running; :meth:`close_connections` shuts their sockets down so every
    handler thread ends, then waits for them briefly.
    """

    daemon_threads = True
    block_on_close = False
    # socketserver's default backlog of 5 makes dozens of clients connecting at once (a
    # proxy's fill threads, a load test) wait out SYN retries of a second or more.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: JinaEmulator) -> None:
        self.emulator = emulator
        #: Set on stop, so faults sleeping out a ``delay`` or held at a gate wake up at once.
        self.stopping = threading.Event()
        self._gates: set[Gate] = set()  # every gate a request has waited at, to wake on stop
        self._gates_lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        # serve_forever polls for shutdown, so every stop() would cost a poll interval; this
        # pair wakes the accept loop at once instead. Made before binding: a failed bind
        # (a port in use) calls server_close, which closes it.
        self._wake_reader, self._wake_writer = socket.socketpair()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN (a DNS lookup); plain TCP bind
        # is enough here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def serve(self) -> None:
        """Accept connections until :meth:`stop_serving`; each one is served in a thread."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while not self.stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self.socket and not self.stopping.is_set():
                        self._accept()

    def stop_serving(self) -> None:
        """Make :meth:`serve` return, and wake handlers sleeping out a delay or held."""
        self.stopping.set()
        with self._gates_lock:
            gates = list(self._gates)
        for gate in gates:
            gate._wake()
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")

    def hold(self, gate: Gate) -> None:
        """Wait at ``gate`` until it is released or the server stops."""
        # Registered before waiting: a stop that misses this gate set `stopping` first,
        # and the wait checks it before blocking.
        with self._gates_lock:
            self._gates.add(gate)
        gate._pass(self.stopping)

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def _accept(self) -> None:
        try:
            request, client_address = self.get_request()
        except OSError:
            return
        try:
            self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="jina-emulator-connection",
            daemon=True,
        )
        with self._connections_lock:
            self._connections[request] = thread
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up (timeouts, dropped faults, stop()) are routine, not errors.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    def close_connections(self, timeout: float) -> None:
        """End every open connection and wait up to ``timeout`` for its thread."""
        with self._connections_lock:
            connections = list(self._connections.items())
        for sock, _ in connections:
            with contextlib.suppress(OSError):  # already closed by its handler
                sock.shutdown(socket.SHUT_RDWR)
        for _, thread in connections:
            thread.join(timeout)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY the second one can wait
    # for a delayed ACK (~40 ms) on every keep-alive request.
    disable_nagle_algorithm = True
    server: EmulatorServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the emulator never writes request lines to stderr."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        request_id = new_request_id()
        try:
            raw = self._read_body()
        except (_FramingError, ValueError):
            # No fault is taken: the request cannot be told apart from the next one.
            self.close_connection = True
            error = ApiError(400, INPUT_VALIDATION_ERROR, "Malformed request body framing")
            self._finish(self._error(error, request_id), _INVALID, None, request_id)
            return
        emulator = self.server.emulator
        fault = emulator._faults.take()
        started = time.monotonic()
        parsed = _parse_json(raw)
        # One per request: what it fetched goes into this request's log entry.
        loader = MediaLoader(
            fetch_remote=emulator.fetch_remote_images, timeout=emulator.fetch_timeout
        )
        answer = self._answer(parsed, fault, request_id, loader)
        try:
            if fault is not None and fault.hold is not None:
                self.server.hold(fault.hold)
            # `latency` is the whole time a request takes, as a client sees a real server's:
            # computing the answer counts toward it. A fault's delay comes on top.
            wait = emulator.latency - (time.monotonic() - started)
            wait = max(wait, 0.0) + (fault.delay if fault is not None else 0.0)
            if wait > 0:
                self.server.stopping.wait(wait)
            self._finish(answer, parsed, fault, request_id, loader)
        finally:
            # An admitted request is in flight (for the concurrency cap) through the hold,
            # the sleep and the send, until its answer is out or its connection gone.
            answer.release()

    def _finish(
        self,
        answer: _Answer,
        parsed: object,
        fault: Fault | None,
        request_id: str,
        loader: MediaLoader | None = None,
    ) -> None:
        # Logged before sending: a client that has its answer must find the request logged.
        self.server.emulator._record(
            RecordedRequest(
                method=self.command,
                path=self.path,
                body=parsed if isinstance(parsed, dict) else None,
                status=answer.status,
                inputs=count_inputs(parsed),
                tokens=answer.tokens,
                authorized=self._auth_failure() is None,
                fault=fault,
                wait=answer.wait,
                fetched=tuple(loader.fetched) if loader is not None else (),
            )
        )
        self._send(answer, request_id, fault)

    def _answer(
        self, parsed: object, fault: Fault | None, request_id: str, loader: MediaLoader
    ) -> _Answer:
        if fault is not None and fault.drop:
            return _Answer(status=None)
        if fault is not None and fault.replaces_answer:
            status = fault.status if fault.status is not None else 200
            if fault.body is not None:
                return _Answer(status, fault.body, fault.content_type)
            return self._error(fault_error(status), request_id)
        try:
            return self._route(parsed, fault, loader)
        except ApiError as error:
            return self._error(error, request_id)
        except Exception as exc:  # an emulator bug: answer it rather than hang the client
            bug = ApiError(500, INTERNAL_ERROR, f"emulator error: {type(exc).__name__}")
            return self._error(bug, request_id)

    def _route(self, parsed: object, fault: Fault | None, loader: MediaLoader) -> _Answer:
        path = urlsplit(self.path).path
        if self.command == "GET" and path == "/health":
            return _Answer(200, _dump({"status": "ok"}))
        if self.command != "POST" or path not in (EMBEDDINGS_PATH, MULTI_VECTOR_PATH, RERANK_PATH):
            raise ApiError(404, RESOURCE_NOT_FOUND, "Not Found")
        failure = self._auth_failure()
        if failure is not None:
            raise failure
        if parsed is _INVALID:
            raise validation_error("body", "JSON decode error", "json_invalid")
        if path == RERANK_PATH:
            return self._rerank(parsed)
        request = parse_request(parsed, loader, path=path)
        # Rate limits come after auth and validation, so refused requests use no budget.
        admission = self._admit(request.tokens)
        alter = fault if fault is not None and fault.alters_data else None
        try:
            body = _dump(embeddings_payload(request, alter, self.server.emulator.float_style))
        except BaseException:
            if admission is not None:
                admission.release(refund=True)  # answered as an error: charged nothing
            raise
        if admission is None:
            return _Answer(200, body, tokens=request.tokens)
        return _Answer(
            200, body, tokens=request.tokens, headers=admission.headers, admission=admission
        )

    def _rerank(self, parsed: object) -> _Answer:
        """``POST /v1/rerank`` (:mod:`.rerank`), under the same rate limits."""
        request = parse_rerank(parsed)
        admission = self._admit(request.tokens)
        body = _dump(rerank_payload(request))
        if admission is None:
            return _Answer(200, body, tokens=request.tokens)
        return _Answer(
            200, body, tokens=request.tokens, headers=admission.headers, admission=admission
        )

    def _admit(self, tokens: int) -> Admission | None:
        """Take a rate-limit slot for an authorized request (``None`` without limits).

        :raises RateLimited: a 429, when a limit binds.
        """
        emulator = self.server.emulator
        limits = emulator.rate_limits  # read once: tests may swap it while serving
        if limits is None:
            return None
        return emulator._limiter.admit(self._bearer_token(), tokens, limits)

    def _bearer_token(self) -> str:
        """The token of the ``Authorization`` header (whatever its scheme)."""
        header = self.headers.get("Authorization", "").strip()
        return header.partition(" ")[2].strip()

    def _auth_failure(self) -> ApiError | None:
        header = self.headers.get("Authorization", "").strip()
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if not header or (scheme.lower() == "bearer" and not token):
            return ApiError(
                401,
                AUTH_MISSING_API_KEY,
                "Authentication required: send the header 'Authorization: Bearer <API key>'",
            )
        if scheme.lower() != "bearer":
            return ApiError(401, "AUTH_INVALID_FORMAT", "Invalid authorization format")
        expected = self.server.emulator._api_key
        if expected is not None and not hmac.compare_digest(
            token.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
        ):
            return ApiError(
                401,
                AUTH_INVALID_API_KEY,
                "Invalid API key. Please get a new one at https://jina.ai",
            )
        return None

    @staticmethod
    def _error(error: ApiError, request_id: str) -> _Answer:
        body = _dump(error_payload(error, request_id))
        if isinstance(error, RateLimited):
            return _Answer(error.status, body, headers=error.headers, wait=error.wait)
        return _Answer(error.status, body)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        size = int(length)
        if size < 0:
            raise _FramingError
        data = self.rfile.read(size)
        if len(data) < size:
            raise _FramingError
        return data

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            line = self.rfile.readline(_MAX_LINE)
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self.rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
                    pass  # trailers carry nothing the emulator needs
                return b"".join(chunks)
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise _FramingError
            chunks.append(chunk)
            self.rfile.readline(_MAX_LINE)

    def _send(self, answer: _Answer, request_id: str, fault: Fault | None) -> None:
        if answer.status is None:
            self.close_connection = True
            return
        body = answer.body
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-request-id", request_id)
            headers = dict(answer.headers)
            if fault is not None and fault.retry_after is not None:
                headers["Retry-After"] = fault.retry_after  # an injected one wins
            for name, value in headers.items():
                self.send_header(name, value)
            if fault is not None and fault.cut_body:
                body = body[: len(body) // 2]
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True  # the client went away (e.g. its read timeout)


def _parse_json(raw: bytes) -> object:
    if not raw:
        return _INVALID
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return _INVALID


def _dump(payload: object) -> bytes:
    # allow_nan: a bad_value fault must reach the wire as the bare tokens NaN / Infinity.
    return json.dumps(payload, separators=(",", ":"), allow_nan=True).encode("utf-8")
