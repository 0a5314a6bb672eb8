"""Running a :class:`~embedcache.proxy.app.Proxy` under uvicorn, on a socket bound here."""

from __future__ import annotations

import logging
from collections.abc import Callable

import uvicorn

from .app import Proxy

__all__ = ["serve_forever"]


def serve_forever(
    proxy: Proxy,
    *,
    host: str,
    port: int,
    log_level: str = "warning",
    on_bound: Callable[[int], None] | None = None,
) -> None:
    """Serve ``proxy`` until SIGINT or SIGTERM, then close it (also when the server never
    started, e.g. because the port is taken).

    :param port: 0 picks a free port; ``on_bound`` is told which one before serving.
    """
    config = uvicorn.Config(
        proxy.app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    logging.getLogger("embedcache").setLevel(log_level.upper())
    try:
        # Bound here rather than by uvicorn so the caller learns the real port (--port 0).
        sock = config.bind_socket()
        if on_bound is not None:
            on_bound(sock.getsockname()[1])
        server.run(sockets=[sock])
    finally:
        proxy.close()
