"""What the application's routes share in answering: a JSON response, and the request's
figures for the server's access line."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["json_response", "note_access"]

_JSON = "application/json"


def json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    """A JSON response of ``body``, already serialized."""
    return Response(body, status, headers, _JSON)


def note_access(request: Request, texts: int, hits: int) -> None:
    """Give the server's access line the request's inputs and hits from the cache (when
    :mod:`.http` runs the application, its request is in the scope)."""
    raw = request.scope.get("embedcache.request")
    if raw is not None:
        raw.texts = texts
        raw.hits = hits
