"""A worker's open connections and the limits they are held to (re-exported by
:mod:`embedcache.proxy.http`): the protocol factory for ``loop.create_server``, the cap on
open connections, the sweep that closes connections past their deadlines, the count of
request body bytes in flight, and draining on shutdown.

Deadlines are judged by the sweep (every ``sweep_seconds``) on a coarse clock of its own,
from the progress it sees (:meth:`~embedcache.proxy.http.answers.Answers.overdue`): reading
and answering a request makes no time call and sets no deadline, and a timeout is
honoured to within one sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

from .connection import HttpConnection
from .messages import Handlers, ServerLimits, error_bytes

__all__ = ["Connections"]

log = logging.getLogger("embedcache")

#: Open files a worker keeps for itself beyond its connections (the store, upstream
#: sockets, logs): at least this many, or a quarter of the limit.
_FILES_KEPT = 64
_BUSY = error_bytes(503, b"the server has too many open connections; retry later")


class Connections:
    """A worker's open connections and the limits they are held to: the protocol factory
    for ``loop.create_server``, the sweep of their deadlines, and draining on shutdown.

    The sweep starts with the first connection (or run :meth:`watch` yourself); it stops
    at the end of :meth:`drain`. Figures for metrics: :attr:`open` (connections),
    :attr:`refused`, :attr:`evicted`, :attr:`timed_out`, :attr:`body_bytes`.

    :param handlers: what requests are answered with.
    :param limits: the bounds (:class:`ServerLimits`); without them, the defaults with
        ``handlers.max_body``.
    :param sweep_seconds: how often deadlines are checked (tests make it shorter).
    """

    def __init__(
        self,
        handlers: Handlers,
        limits: ServerLimits | None = None,
        *,
        sweep_seconds: float = 1.0,
    ) -> None:
        limits = limits or ServerLimits(max_body=handlers.max_body)
        self.limits = limits
        self.handlers = handlers
        self.sweep_seconds = sweep_seconds
        # Copied out of the limits: connections read them per request.
        self.idle_timeout = limits.idle_timeout
        self.header_timeout = limits.header_timeout
        self.body_timeout = limits.body_timeout
        self.send_timeout = limits.send_timeout
        self.max_body = limits.max_body
        self.max_body_memory = limits.max_body_memory
        #: The cap on open connections: ``limits.max_connections`` fitted to the
        #: process's limit on open files.
        self.max_connections = _fit_open_files(limits.max_connections)
        #: The coarse clock (``time.monotonic``) the sweep judges deadlines by.
        self.clock = time.monotonic()
        #: Request body bytes held by this worker's connections (read or queued).
        self.body_bytes = 0
        #: New connections answered 503 at the cap (no idle connection to close).
        self.refused = 0
        #: Idle connections closed to make room for new ones at the cap.
        self.evicted = 0
        #: Deadlines passed (each closed a connection, or aborted one that was closing).
        self.timed_out = 0
        #: Set by :meth:`drain`: new connections are closed at once.
        self.draining = False
        self._open: dict[HttpConnection, None] = {}  # oldest first
        self._cap_reached = False
        self._sweeping = False
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self) -> HttpConnection:
        """A new connection's protocol (``loop.create_server``'s factory)."""
        return HttpConnection(self)

    def __len__(self) -> int:
        return len(self._open)

    @property
    def open(self) -> int:
        """Connections open now (as ``len()``)."""
        return len(self._open)

    def __iter__(self) -> Iterator[HttpConnection]:
        """The open connections, oldest first (a copy: closing them is safe)."""
        return iter(list(self._open))

    # Called by the connections

    def opened(self, connection: HttpConnection, transport: asyncio.Transport) -> bool:
        """Count a new connection in; ``False`` when it was refused (and closed)."""
        if self.draining:
            transport.close()
            return False
        connections = self._open
        if len(connections) >= self.max_connections:
            if not self._cap_reached:
                self._cap_reached = True
                log.warning(
                    "embedcache proxy: %d open connections, the most this worker takes "
                    "(--max-connections); idle ones are closed to make room, else new "
                    "ones get a 503",
                    self.max_connections,
                )
            # The one idle the longest (oldest first among equals, as dicts keep order).
            victim = min(
                (each for each in connections if each.idle),
                key=lambda each: each.idle_since,
                default=None,
            )
            if victim is None:
                self.refused += 1
                transport.write(_BUSY)
                transport.close()
                return False
            del connections[victim]
            self.evicted += 1
            victim.evict()
        connections[connection] = None
        if not self._sweeping:
            self._sweeping = True  # at once: others may connect before the sweep starts
            self._sweeper = asyncio.get_running_loop().create_task(self.watch())
        return True

    def keep(self, task: asyncio.Task[None]) -> None:
        """Hold a connection's background task until it ends (the loop keeps only a weak
        reference to it)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def closed(self, connection: HttpConnection) -> None:
        """Count a connection out (idempotent)."""
        self._open.pop(connection, None)

    # Running

    def sweep(self) -> None:
        """Move the clock on and close the connections past their deadlines."""
        self.clock = now = time.monotonic()
        if not self._open:
            return
        for connection in [each for each in self._open if each.overdue(now)]:
            self.timed_out += 1
            connection.expire()

    async def watch(self) -> None:
        """Sweep every ``sweep_seconds`` until cancelled."""
        self._sweeping = True
        try:
            while True:
                await asyncio.sleep(self.sweep_seconds)
                self.sweep()
        finally:
            self._sweeping = False

    async def drain(self, seconds: float) -> None:
        """Stop: take no new request, close idle connections now, answer what has been
        read, and close every connection still open after ``seconds`` (also those still
        sending a head or a body); then stop the sweep."""
        self.draining = True
        for connection in list(self._open):
            connection.shut_down()
        deadline = time.monotonic() + seconds
        while self._open and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, self.sweep_seconds))
        for connection in list(self._open):
            connection.abort()
        await asyncio.sleep(0)  # their connection_lost runs
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper


def _fit_open_files(wanted: int) -> int:
    """``wanted`` connections, or fewer to leave room for the worker's other files: the
    soft limit on open files is raised towards the hard one first (as Go does)."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max(wanted + _FILES_KEPT, (wanted * 4 + 2) // 3)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft == resource.RLIM_INFINITY:
        return wanted
    room = max(soft - max(_FILES_KEPT, soft // 4), 1)
    if wanted <= room:
        return wanted
    log.warning(
        "embedcache proxy: at most %d connections per worker, not %d (--max-connections): "
        "the limit on open files is %d (ulimit -n)",
        room,
        wanted,
        soft,
    )
    return room
