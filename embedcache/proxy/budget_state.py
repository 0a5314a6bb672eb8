"""What the proxy shows of its budgets (:mod:`~embedcache.proxy.budgets`) without making
anyone wait: :class:`Refresher`, a thread that reads budgets' remaining tokens for the hit
path (which runs on the event loop and must never wait for a ledger, a Redis round trip
with a shared tier), and :func:`budget_report`, the ``budgets`` section of
``/admin/stats``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .budgets import Budget, BudgetPolicy

__all__ = ["Refresher", "budget_report"]

log = logging.getLogger("embedcache")

# How long close() waits for a read in flight (a Redis call is bounded by its timeout).
_JOIN_SECONDS = 2.0


class Refresher:
    """Calls ``read(budget)`` for each budget asked for, in a daemon thread of its own
    started on the first :meth:`ask` (so after a worker forks). A budget asked for again
    before it is read is read once.

    :param read: reads a budget's figure and keeps it where the hit path looks; it handles
        its own failures (an exception escaping it is dropped with the budget).
    """

    def __init__(self, read: Callable[[Budget], object]) -> None:
        self._read = read
        self._wake = threading.Condition()
        self._pending: dict[str, Budget] = {}
        self._thread: threading.Thread | None = None
        self._closed = False

    def ask(self, budget: Budget) -> None:
        """Have ``budget`` read soon (returns at once)."""
        with self._wake:
            if self._closed or budget.name in self._pending:
                return
            self._pending[budget.name] = budget
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="embedcache-budgets", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def close(self) -> None:
        """Stop the thread (a read in flight finishes first)."""
        with self._wake:
            self._closed = True
            self._pending.clear()
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join(_JOIN_SECONDS)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                batch = list(self._pending.values())
                self._pending.clear()
            for budget in batch:
                try:
                    self._read(budget)
                except Exception:  # a figure not refreshed: the next ask tries again
                    log.exception("budgets: %s's remaining tokens not read", budget.name)


def budget_report(
    policy: BudgetPolicy, spending: Callable[[], Iterable[tuple[Budget, float]]], limit: int
) -> dict[str, Any]:
    """``/admin/stats``' ``budgets``: the default budget, and the budgets that spent in
    their current window (``spending()``) or that the budgets file lists, most spent first,
    at most ``limit``."""
    default = policy.default
    listed: dict[str, tuple[Budget, float]] = {
        budget.name: (budget, 0.0) for budget in policy.by_name.values()
    }
    for budget, spent in spending():
        if spent > 0:
            listed[budget.name] = (budget, spent)
    now = time.time()
    callers: list[dict[str, Any]] = []
    for budget, spent in sorted(listed.values(), key=lambda item: (-item[1], item[0].name)):
        if len(callers) >= limit:
            break
        start = math.floor(now / budget.window) * budget.window
        callers.append({
            "name": budget.name,
            "tokens": budget.tokens,
            "window": _number(budget.window),
            "spent": _number(spent),
            "remaining": max(0, int(budget.tokens - spent)),
            "resets_in": max(0, math.ceil(start + budget.window - now)),
        })  # fmt: skip
    shown = None if default is None else {"tokens": default[0], "window": _number(default[1])}
    return {"default": shown, "callers": callers}


def _number(value: float) -> float:
    """A whole number as an integer (JSON ``3600``, not ``3600.0``)."""
    return int(value) if float(value).is_integer() else round(value, 3)
