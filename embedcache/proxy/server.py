"""Running the proxy: one process, or several each with its own listening socket on one
port, until SIGINT or SIGTERM.

The port is claimed first by a socket without ``SO_REUSEPORT``: a port in use (another
``embedcache serve`` on it, say) is an error at once, and no other server joins this one.
With one worker the process serves that socket itself. With several, each gets a socket of
one ``SO_REUSEPORT`` group made before forking (the kernel spreads connections evenly over
them), and a listener on the port that is not one of ours fails the start. Each worker runs
its own event loop (uvloop when installed) with its own
:class:`~embedcache.proxy.app.Proxy` on the shared cache directory, which several
processes may use at once; they share one :class:`~embedcache.proxy.metrics.Board` so that
any of them reports the whole server.

Each worker logs to stderr (:mod:`.accesslog`) and holds its connections to
:class:`~embedcache.proxy.http.ServerLimits`; its
:class:`~embedcache.proxy.http.Connections` keep the connection cap within the open-file
limit, so the logged cap is met before ``accept`` fails.

On SIGINT or SIGTERM a worker stops accepting, answers what it has read, closes idle
connections, gives the others up to ``drain_seconds`` and then closes them, closes the
proxy (fills already running finish and commit) and exits; the parent passes the signal
on, waits for every worker, and then ends by the same signal, so its exit status says how
it was stopped. A worker that dies on its own stops the server (exit status 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

from ..errors import InvalidInputError
from .accesslog import access_logger, install_handler, open_access_log
from .app import Proxy
from .http import Connections, Handlers, ServerLimits
from .metrics import Board

__all__ = ["MakeProxy", "serve_forever"]

#: How long a stopping server waits, by default, for requests still being read or
#: answered before closing their connections (``--drain-timeout``).
DRAIN_SECONDS = 30.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_BACKLOG = 2048
# Accept errors that mean "out of descriptors or memory": warned about once per worker.
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

log = logging.getLogger("embedcache")


#: Builds a worker's proxy: given the server's board and the worker's row on it.
MakeProxy = Callable[[Board, int], Proxy]


def serve_forever(
    make_proxy: MakeProxy,
    *,
    host: str,
    port: int,
    workers: int = 1,
    log_level: str = "warning",
    limits: ServerLimits | None = None,
    drain_seconds: float = DRAIN_SECONDS,
    access_log: str | None = None,
    on_bound: Callable[[int], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, then end the process by that signal.

    :param make_proxy: builds each worker's proxy, in the worker, once the socket is bound.
    :param port: 0 picks a free port; ``on_bound`` is told which one before serving.
    :param workers: processes serving the port; 1 serves in this process.
    :param log_level: the ``embedcache`` logger's level; at ``info``, one access line per
        request goes to stderr.
    :param limits: what each worker holds its clients to (default :class:`ServerLimits`).
    :param drain_seconds: on SIGINT or SIGTERM, how long connections still being read or
        answered are given before they are closed.
    :param access_log: a file to append access lines to, whatever ``log_level`` (``-``:
        stderr); ``None``: access lines only at ``info``, on stderr.
    :raises InvalidInputError: ``workers`` below 1, several on a platform without ``fork``,
        the address cannot be listened on (a port in use), or the access log cannot be opened.
    """
    if workers < 1:
        raise InvalidInputError(f"workers must be at least 1, got {workers}")
    if workers > 1 and not hasattr(os, "fork"):
        raise InvalidInputError("several workers need fork (Linux, BSD, macOS): use --workers 1")
    install_handler(log_level, None)
    # Here, not in each worker: the limit raised is inherited, and a warning is said once.
    limits = limits or ServerLimits()
    try:
        access_fd = open_access_log(access_log) if access_log is not None else None
    except OSError as exc:
        raise InvalidInputError(
            f"cannot open the access log {access_log}: {exc.strerror or exc}: "
            "choose another --access-log"
        ) from None
    sockets = _listen(host, port, workers)
    if on_bound is not None:
        on_bound(sockets[0].getsockname()[1])
    board = Board(workers)
    worker = _Worker(make_proxy, board, limits, drain_seconds, access_fd, log_level)
    if workers == 1:
        _end_by(worker.serve(0, sockets[0]))
        return
    _end_by(_supervise(worker, sockets))


def _listen(host: str, port: int, count: int) -> list[socket.socket]:
    """The server's listening sockets, one per worker; a port in use is an error now.

    One worker: one plain socket. Several: one socket each in one ``SO_REUSEPORT`` group,
    so the kernel spreads connections evenly over the workers (with one socket they all
    shared, the busiest of two took 61% of 32 connections on average, at times all of
    them: whichever woke first accepted them). ``SO_REUSEPORT`` alone
    would also let a second server join the port, so the port is first claimed by a socket
    without it (failing if anything listens there), and once the group listens, any
    listener on the port that is not one of ours (a server started at the same instant)
    fails the start as well.
    """
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    group = count > 1 and hasattr(socket, "SO_REUSEPORT")
    probe = _bound(host, port, reuse_port=False, shown=shown)
    if not group:
        probe.listen(_BACKLOG)
        probe.setblocking(False)
        return [probe]
    port = probe.getsockname()[1]
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    probe.close()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = _bound(host, port, reuse_port=True, shown=shown)
            sockets.append(sock)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        if _foreign_listeners(port, sockets):
            raise InvalidInputError(_in_use(shown))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bound(host: str, port: int, *, reuse_port: bool, shown: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR only lets a restart bind over connections of a previous run still in
        # TIME_WAIT; on a port another socket listens on, bind fails all the same.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise InvalidInputError(_in_use(shown)) from None
        raise InvalidInputError(
            f"cannot listen on {shown}: {exc.strerror or exc}: choose another --host or --port"
        ) from None
    return sock


def _in_use(shown: str) -> str:
    return f"{shown} is already in use (another embedcache serve?): choose another --port"


def _foreign_listeners(port: int, ours: list[socket.socket]) -> bool:
    """Whether anything but ``ours`` listens on TCP ``port`` (Linux's ``/proc/net``; where
    it cannot be read, the claim without ``SO_REUSEPORT`` is the only check)."""
    inodes = {str(os.fstat(sock.fileno()).st_ino) for sock in ours}
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as rows:
                next(rows, None)  # the header
                for row in rows:
                    fields = row.split()
                    # local_address ends with the port in hex; st 0A is LISTEN.
                    listening = fields[1].endswith(wanted) and fields[3] == "0A"
                    if listening and fields[9] not in inodes:
                        return True
        except OSError:
            continue
    return False


def _supervise(worker: _Worker, sockets: list[socket.socket]) -> int:
    """Fork the workers, each on its socket of ``sockets`` (or all on the one), and wait
    for them; returns the signal that stopped the server."""
    children: dict[int, int] = {}  # pid: worker
    for number in range(worker.board.workers):
        pid = os.fork()
        if pid == 0:  # the worker: serve, and never return into the caller's code
            status = 1
            try:
                mine = sockets[number % len(sockets)]
                for other in sockets:  # a socket no worker accepts on would queue for no one
                    if other is not mine:
                        other.close()
                worker.serve(number, mine)
                status = 0
            except BaseException:
                log.exception("embedcache proxy: worker %d failed", number)
            finally:
                os._exit(status)
        children[pid] = number
    # The workers hold the sockets now. Closed here, so that once every worker has stopped
    # accepting the port refuses connections instead of queueing them unanswered.
    for sock in sockets:
        sock.close()
    stopped_by = 0

    def pass_on(number: int, frame: object) -> None:
        nonlocal stopped_by
        stopped_by = stopped_by or number
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, number)

    for number in _SIGNALS:
        signal.signal(number, pass_on)
    failed = False
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        number = children.pop(pid, -1)
        if number >= 0 and not stopped_by:
            log.error("embedcache proxy: worker %d ended (status %d); stopping", number, status)
            failed = True
            pass_on(signal.SIGTERM, None)
    if failed or not stopped_by:
        raise SystemExit(1)
    return stopped_by


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # not on Windows: the serve extra leaves it out there
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _Worker:
    """What every worker is made of, given before forking; :meth:`serve` runs one."""

    def __init__(
        self,
        make_proxy: MakeProxy,
        board: Board,
        limits: ServerLimits,
        drain_seconds: float,
        access_fd: int | None,
        log_level: str,
    ) -> None:
        self.make_proxy = make_proxy
        self.board = board
        self.limits = limits
        self.drain_seconds = drain_seconds
        self.access_fd = access_fd
        self.log_level = log_level

    def serve(self, number: int, sock: socket.socket) -> int:
        """Run worker ``number`` on ``sock``; returns the signal that stopped it."""
        install_handler(self.log_level, number)
        limits = self.limits
        loop = _new_loop()
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(_LoopErrors().handle)
        proxy = self.make_proxy(self.board, number)
        try:
            handlers = Handlers(
                fast=proxy.answer_hit,
                app=proxy.app,
                admit=proxy.admit,
                log_access=access_logger(self.access_fd, number),
                max_body=limits.max_body,
            )
            return loop.run_until_complete(_run(proxy, sock, handlers, limits, self.drain_seconds))
        finally:
            proxy.close()  # fills already running finish and commit first
            loop.close()


class _LoopErrors:
    """The event loop's exception handler: what the loop reports (an ``accept`` failing for
    want of descriptors, a callback's error) goes to our log instead of nowhere, a resource
    shortage once per kind so a flood of failed accepts is one line."""

    def __init__(self) -> None:
        self._warned: set[int] = set()

    def handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = context.get("message", "event loop error")
        if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRORS:
            if exc.errno not in self._warned:
                self._warned.add(exc.errno)
                log.warning(
                    "embedcache proxy: %s: %s (new connections fail until descriptors "
                    "free up; raise the open-file limit, ulimit -n)",
                    message,
                    exc.strerror or exc,
                )
            return
        if isinstance(exc, BaseException):
            log.error("embedcache proxy: %s", message, exc_info=exc)
        else:
            log.error("embedcache proxy: %s", message)


async def _run(
    proxy: Proxy,
    sock: socket.socket,
    handlers: Handlers,
    limits: ServerLimits,
    drain_seconds: float,
) -> int:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[int] = loop.create_future()
    for number in _SIGNALS:
        loop.add_signal_handler(number, _settle, stop, int(number))
    connections = Connections(handlers, limits)
    server = await loop.create_server(connections, sock=sock, backlog=_BACKLOG)
    proxy.start()
    # Everything made so far (modules, the proxy, the store) lives as long as the process:
    # frozen, no collection walks it again. A request's objects die young by reference
    # counting, so collections are made rarer too (every 50,000 allocations, not 700): at
    # tens of thousands of hits a second the default spent about a tenth of the CPU on them
    # (measured: 22.8k against 28.4k hits/s on one worker), and any cyclic garbage waits a
    # little longer, bounded by that count.
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    stopped_by = await stop
    server.close()
    # This process's descriptor of its listening socket (server.close() has already let go of
    # it on uvloop and asyncio alike; said here because it matters): once every worker has
    # closed its own, the port refuses connections rather than queueing them for no one.
    sock.close()
    await connections.drain(drain_seconds)  # also stops the deadline sweep
    for number in _SIGNALS:
        loop.remove_signal_handler(number)
    return stopped_by


def _settle(stop: asyncio.Future[int], number: int) -> None:
    if not stop.done():
        stop.set_result(number)


def _end_by(number: int) -> None:
    """End this process by signal ``number``, as if its default action had run."""
    signal.signal(number, signal.SIG_DFL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(os.getpid(), number)
