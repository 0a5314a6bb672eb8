"""The minimal ASGI bridge of the proxy's HTTP/1.1 server: one ``http.request`` message
carrying the whole body, the response buffered and written with its length."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote

from .messages import ASGIApp, Request, response_bytes

__all__ = ["call_app"]

log = logging.getLogger("embedcache")

_INTERNAL_ERROR = b'{"detail":"internal error in the embedcache proxy"}'
_JSON = b"application/json"


async def call_app(
    app: ASGIApp,
    request: Request,
    scope_base: dict[str, Any],
    lost: asyncio.Event,
) -> tuple[bytes, int]:
    """The whole response of ``app`` to ``request`` and its status (a 500 when the app
    fails). ``lost`` is set when the client goes (``http.disconnect``)."""
    path, _, query = request.target.partition(b"?")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method.decode("ascii", "replace"),
        "scheme": "http",
        "path": unquote(path.decode("latin-1")),
        "raw_path": path,
        "query_string": query,
        "root_path": "",
        "headers": request.headers,
        "embedcache.request": request,
        **scope_base,
    }
    body = request.body
    delivered = False
    status = 500
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal delivered, body
        if not delivered:
            delivered = True
            message = {"type": "http.request", "body": body, "more_body": False}
            body = b""  # the app holds the only other reference: no copy kept here
            return message
        await lost.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))

    head_only = request.method == b"HEAD"
    try:
        await app(scope, receive, send)
    except Exception:
        log.exception("embedcache proxy: unexpected error in the application")
        data = response_bytes(
            500,
            [(b"content-type", _JSON)],
            _INTERNAL_ERROR,
            keep_alive=request.keep_alive,
            head_only=head_only,
        )
        return data, 500
    data = response_bytes(
        status, headers, b"".join(chunks), keep_alive=request.keep_alive, head_only=head_only
    )
    return data, status
