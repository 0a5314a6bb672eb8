"""``GET /dashboard``: one self-contained page (inline CSS and JS, nothing fetched from
elsewhere: proxies run on machines without internet) that polls ``/admin/stats`` and shows
hit rate, tokens and dollars spent vs saved, the last minutes and hours, and the cache.

The admin token: the page holds no figure and no secret, so it is served to whoever asks
while admin endpoints are on (404 while they are off, as ``/admin/stats``); every figure
comes from ``/admin/stats``, which needs the token. The page asks the user for the token
once and keeps it in the tab's ``sessionStorage`` (gone when the tab closes), sending it as
``Authorization: Bearer``. A token in the URL (``/dashboard?token=``) is refused: it would
stay in browser history, proxies' and this server's access logs, and ``Referer`` headers.

This module also derives what the page shows beside the raw counters (hit rate, dollars),
so the page and any script reading ``/admin/stats`` see the same figures.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..embedding.counters import Stats
from .history import History
from .responses import json_response
from .wire import render_error

__all__ = ["DashboardRoute", "figures"]

# No script, style, image or connection from anywhere but the page itself and this server;
# never framed (clickjacking a page that holds the admin token in the tab).
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@cache
def _page() -> bytes:
    return resources.files(__package__).joinpath("static/dashboard.html").read_bytes()


class DashboardRoute:
    """The page's endpoint.

    :param enabled: whether admin endpoints are on (an admin token is set).
    """

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled

    async def page(self, request: Request) -> Response:
        """The dashboard's HTML."""
        if not self._enabled:
            message = "the dashboard is off: start the proxy with --admin-token"
            return json_response(404, render_error(message))
        if "token" in request.query_params:
            message = (
                "do not put the admin token in the URL (it stays in history and logs): "
                "open /dashboard and enter the token in the page"
            )
            return json_response(400, render_error(message))
        return Response(_page(), 200, headers=_HEADERS, media_type="text/html; charset=utf-8")


def figures(stats: Stats, history: History, price: float) -> dict[str, Any]:
    """What ``/admin/stats`` adds for the dashboard: the hit rate since start (``None``
    before any lookup), dollars spent and saved at ``price``, and the last minutes."""
    looked_up = stats.hits + stats.misses
    return {
        "hit_rate": round(stats.hits / looked_up, 4) if looked_up else None,
        "price_per_million_tokens": price,
        "usd_spent": _dollars(stats.tokens_spent, price),
        "usd_saved": _dollars(stats.tokens_saved, price),
        "history": {"minute_seconds": 60, "minutes": history.report()},
    }


def _dollars(tokens: float, price: float) -> float:
    # Rounded to a millionth of a dollar: a float's tail is noise on the page.
    return round(tokens * price / 1_000_000, 6)
