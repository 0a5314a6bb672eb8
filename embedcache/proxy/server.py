"""Running the proxy: one process, or several sharing one port, until SIGINT or SIGTERM.

Each worker process serves :class:`~embedcache.proxy.http.HttpConnection`\\ s on its own
event loop (uvloop when installed) with its own :class:`~embedcache.proxy.app.Proxy` on the
shared cache directory, which several processes may use at once. With several workers the
parent reserves the port, forks the workers (each listens on the port with
``SO_REUSEPORT``, so the kernel spreads connections over them), and gives them one
:class:`~embedcache.proxy.metrics.Board` so that any of them reports the whole server.

On SIGINT or SIGTERM a worker stops accepting, answers what it has read (fills finish and
commit), closes idle connections, closes the proxy and exits; the parent passes the signal
on, waits for every worker, and then ends by the same signal, so its exit status says how
it was stopped. A worker that dies on its own stops the server (exit status 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable

from ..errors import InvalidInputError
from .app import Proxy
from .http import Connections, Handlers, ServerLimits
from .metrics import Board

__all__ = ["DRAIN_SECONDS", "MakeProxy", "serve_forever"]

#: How long a stopping server waits for in-flight requests before closing anyway.
DRAIN_SECONDS = 120.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_BACKLOG = 2048

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
    on_bound: Callable[[int], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, then end the process by that signal.

    :param make_proxy: builds each worker's proxy, in the worker, once its socket is bound.
    :param port: 0 picks a free port; ``on_bound`` is told which one before serving.
    :param workers: processes serving the port; 1 serves in this process.
    :raises InvalidInputError: ``workers`` below 1, or several on a platform without
        ``SO_REUSEPORT`` or ``fork``.
    """
    if workers < 1:
        raise InvalidInputError(f"workers must be at least 1, got {workers}")
    if workers > 1 and not (hasattr(socket, "SO_REUSEPORT") and hasattr(os, "fork")):
        raise InvalidInputError("several workers need SO_REUSEPORT and fork (Linux, BSD, macOS)")
    logging.getLogger("embedcache").setLevel(log_level.upper())
    board = Board(workers)
    if workers == 1:
        sock = _socket(host, port, reuse_port=False)
        sock.listen(_BACKLOG)
        if on_bound is not None:
            on_bound(sock.getsockname()[1])
        _end_by(_serve(make_proxy, board, 0, sock))
        return
    # Bound, never listening: it holds the port for the workers and is given no connections.
    reserved = _socket(host, port, reuse_port=True)
    port = reserved.getsockname()[1]
    if on_bound is not None:
        on_bound(port)
    _end_by(_supervise(make_proxy, board, host, port))


def _socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def _supervise(make_proxy: MakeProxy, board: Board, host: str, port: int) -> int:
    """Fork the workers and wait for them; returns the signal that stopped the server."""
    children: dict[int, int] = {}  # pid: worker
    for worker in range(board.workers):
        pid = os.fork()
        if pid == 0:  # the worker: serve, and never return into the caller's code
            status = 1
            try:
                sock = _socket(host, port, reuse_port=True)
                sock.listen(_BACKLOG)
                _serve(make_proxy, board, worker, sock)
                status = 0
            except BaseException:
                log.exception("embedcache proxy: worker %d failed", worker)
            finally:
                os._exit(status)
        children[pid] = worker
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
        worker = children.pop(pid, -1)
        if worker >= 0 and not stopped_by:
            log.error("embedcache proxy: worker %d ended (status %d); stopping", worker, status)
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


def _serve(make_proxy: MakeProxy, board: Board, worker: int, sock: socket.socket) -> int:
    """Run one worker on ``sock``; returns the signal that stopped it."""
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    proxy = make_proxy(board, worker)
    try:
        return loop.run_until_complete(_run(proxy, sock))
    finally:
        proxy.close()
        loop.close()


async def _run(proxy: Proxy, sock: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[int] = loop.create_future()
    for number in _SIGNALS:
        loop.add_signal_handler(number, _settle, stop, int(number))
    handlers = Handlers(fast=proxy.answer_hit, app=proxy.app, admit=proxy.admit)
    connections = Connections(handlers, ServerLimits())
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
    await connections.drain(DRAIN_SECONDS)
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
