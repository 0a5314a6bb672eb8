"""The sections of ``/admin/stats`` about the upstream and the cache's size, for scripts and
the dashboard: how the upstream answers and how the rate limiter paces it (``upstream``),
and what the cache holds (``cache``). The per-caller and per-model figures are
:mod:`.usage`'s; the request figures :mod:`.dashboard`'s.

Everything is read from the metrics board (every worker's counters, added up) and from the
store's own totals: no scan, so a report costs the same at 10M entries as at ten.
"""

from __future__ import annotations

import time
from typing import Any

from ..config import redact_url
from ..storage.shared import RedisStore
from ..storage.store import Store
from ..upstream.health import FAILURE_KINDS
from ..upstream.limiter import RateLimiter
from .metrics import Board

__all__ = ["FAILING_MINUTES", "cache_report", "upstream_report", "upstream_state"]

#: The upstream shows ``failing`` while the last this many minutes (the current one
#: included) had an attempt fail with a 5xx or no answer, and ``degraded`` for a 429 in
#: them, a failure in the last :data:`DEGRADED_MINUTES`, or a limiter still backed off.
FAILING_MINUTES = 2
DEGRADED_MINUTES = 15


def upstream_report(
    board: Board, limiter: RateLimiter | None, now: float | None = None
) -> dict[str, Any]:
    """The ``upstream`` section: attempts, retries, failures by kind, the last failure, the
    mean answer time, the pacing (``None`` when nothing is paced) and the :func:`upstream_state`."""
    summed, paced, states = board.upstream()
    now = time.time() if now is None else now
    failure = board.last_failure()
    pacing: dict[str, Any] | None = None
    if limiter is not None:
        limits = limiter.limits
        pacing = {
            "rpm": limits.rpm,
            "tpm": limits.tpm,
            "concurrent_requests": limits.concurrent_requests,
            "window_seconds": limits.window,
            # Each worker paces on its own: the lowest scale and the longest pause show.
            "scale": round(min(state["scale"] for state in states), 4),
            "paused_seconds": round(max(state["paused_seconds"] for state in states), 3),
            "window_requests": int(paced["window_requests"]),
            "window_tokens": round(paced["window_tokens"]),
            "in_flight": int(paced["in_flight"]),
            "rate_limited": int(paced["rate_limited"]),
            "waited_seconds": round(paced["waited_seconds"], 3),
        }
    answered = summed["answered"]
    return {
        "state": upstream_state(board.history.report(now), pacing),
        "sent": int(summed["sent"]),
        "retries": int(summed["retries"]),
        "failures": {kind: int(summed[kind]) for kind in FAILURE_KINDS},
        "mean_ms": round(summed["answer_seconds"] * 1000 / answered, 3) if answered else None,
        "last_failure": None
        if failure is None
        else {
            "status": failure.status,
            "at": round(failure.at, 3),
            "ago_seconds": round(max(0.0, now - failure.at), 1),
            "message": failure.message,
        },
        "pacing": pacing,
    }


def upstream_state(minutes: list[dict[str, Any]], pacing: dict[str, Any] | None) -> str:
    """``ok``, ``degraded`` or ``failing`` (see :data:`FAILING_MINUTES`), from the history's
    minutes (oldest first, the current one last) and the pacing."""
    recent = minutes[-FAILING_MINUTES:]
    if any(minute["upstream_failures"] for minute in recent):
        return "failing"
    if any(minute["upstream_rate_limited"] for minute in recent) or any(
        minute["upstream_failures"] for minute in minutes[-DEGRADED_MINUTES:]
    ):
        return "degraded"
    if pacing is not None and (pacing["scale"] < 1 or pacing["paused_seconds"] > 0):
        return "degraded"
    return "ok"


def cache_report(store: Store, shared: RedisStore | None) -> dict[str, Any]:
    """The ``cache`` section: entries and bytes on disk (the directory's files, a few dozen
    at 10M entries: vectors live in 1 GiB segment files), bytes of vectors, the size limit
    and the shared tier (its URL redacted)."""
    return {
        "entries": len(store),
        "bytes_on_disk": store.volume(),
        "vector_bytes": store.vector_bytes(),
        "size_limit": store.size_limit,
        "directory": str(store.directory),
        "shared": redact_url(shared.location) if shared else None,
    }
