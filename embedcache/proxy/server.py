"""Running the proxy: one process, or several sharing one port, until SIGINT or SIGTERM.

Each process serves :class:`~embedcache.proxy.http.HttpConnection`\\ s on its own event
loop (uvloop when installed) with its own :class:`~embedcache.proxy.app.Proxy` on the
shared cache directory. On SIGINT or SIGTERM a process stops accepting, answers what it has
read (fills finish and commit), closes idle connections, closes the proxy, and then ends
by the same signal, so its exit status says how it was stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

from .app import Proxy
from .http import Handlers, HttpConnection

__all__ = ["DRAIN_SECONDS", "serve_forever"]

#: How long a stopping server waits for in-flight requests before closing anyway.
DRAIN_SECONDS = 120.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)

log = logging.getLogger("embedcache")


def serve_forever(
    make_proxy: Callable[[], Proxy],
    *,
    host: str,
    port: int,
    log_level: str = "warning",
    on_bound: Callable[[int], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, then end the process by that signal.

    :param make_proxy: builds the proxy (after the socket is bound).
    :param port: 0 picks a free port; ``on_bound`` is told which one before serving.
    """
    logging.getLogger("embedcache").setLevel(log_level.upper())
    sock = _listen(host, port)
    if on_bound is not None:
        on_bound(sock.getsockname()[1])
    stopped_by = _serve(make_proxy, sock)
    _end_by(stopped_by)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # not on Windows: the serve extra leaves it out there
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _serve(make_proxy: Callable[[], Proxy], sock: socket.socket) -> int:
    """Run one server process on ``sock``; returns the signal that stopped it."""
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    proxy = make_proxy()
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
    connections: set[HttpConnection] = set()
    handlers = Handlers(fast=proxy.answer_hit, app=proxy.app)
    server = await loop.create_server(
        lambda: HttpConnection(handlers, connections), sock=sock, backlog=2048
    )
    proxy.start()
    stopped_by = await stop
    server.close()
    for connection in list(connections):
        connection.shut_down()
    deadline = time.monotonic() + DRAIN_SECONDS
    while connections and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
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
