"""The proxy's recent activity, minute by minute, for the dashboard: requests, hits,
misses, tokens spent and saved in each of the last :data:`MINUTES` minutes.

Like the metrics board (:class:`~embedcache.proxy.metrics.Board`), it lives in anonymous
shared memory made before the workers fork, and a worker writes only its own rows: each
worker adds what its counters grew by since its last record to the slot of the current
minute (:meth:`HistoryRecorder.record`, called with every publish, a few times a second),
and whichever worker answers ``/admin/stats`` adds up every worker's slot of each minute.
The ring is bounded: a slot is reused ``MINUTES`` minutes later, its old minute dropped.
"""

from __future__ import annotations

import mmap
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["FIELDS", "MINUTES", "History", "HistoryRecorder"]

#: How many minutes are kept (three hours).
MINUTES = 180
#: What each minute counts: requests answered, hits, misses, tokens, and failed upstream
#: attempts (5xx or no answer; and 429s apart).
FIELDS = ("requests", "hits", "misses", "tokens_spent", "tokens_saved", "upstream_failures",
          "upstream_rate_limited")  # fmt: skip
# A slot's cells: the minute it holds (minutes since the epoch; 0: never written), then
# FIELDS.
_CELLS = 1 + len(FIELDS)


class History:
    """Every worker's ring of minutes.

    :param workers: how many workers write (one ring each).
    :param minutes: how many minutes each ring holds.
    """

    def __init__(self, workers: int, minutes: int = MINUTES) -> None:
        self.minutes = minutes
        self._memory = mmap.mmap(-1, workers * minutes * _CELLS * 8)
        cells: NDArray[np.float64] = np.frombuffer(self._memory, dtype=np.float64)
        self._slots = cells.reshape(workers, minutes, _CELLS)

    def recorder(self, worker: int) -> HistoryRecorder:
        """What worker ``worker`` records its activity with."""
        return HistoryRecorder(self._slots[worker])

    def report(self, now: float | None = None) -> list[dict[str, Any]]:
        """The last :attr:`minutes` minutes, oldest first, ending with the current one: each
        minute's start (seconds since the epoch) and the whole server's counts in it (0 for
        a quiet minute)."""
        current = _minute(time.time() if now is None else now)
        out: list[dict[str, Any]] = []
        for minute in range(current - self.minutes + 1, current + 1):
            slots = self._slots[:, minute % self.minutes, :]
            summed = slots[slots[:, 0] == minute, 1:].sum(axis=0)
            row: dict[str, Any] = {"start": minute * 60}
            for name, value in zip(FIELDS, summed, strict=True):
                # Counts are whole; the saved tokens are an estimate (see Stats.tokens_saved).
                row[name] = round(float(value), 3) if name == "tokens_saved" else int(value)
            out.append(row)
        return out


class HistoryRecorder:
    """One worker's ring: it turns the worker's running totals into per-minute counts.

    :param slots: the worker's rows of the shared memory.
    """

    def __init__(self, slots: NDArray[np.float64]) -> None:
        self._slots = slots
        self._last = np.zeros(len(FIELDS))

    def record(self, totals: dict[str, float], now: float | None = None) -> None:
        """Add what ``totals`` (this worker's running counts, one per :data:`FIELDS`; a
        missing one counts 0) grew by since the last record to the current minute."""
        current = np.array([totals.get(name, 0.0) for name in FIELDS], dtype=np.float64)
        grown = current - self._last
        if (grown < 0).any():
            # The totals started again from zero (counters reset): all of it is new.
            grown = current
        self._last = current
        if not grown.any():
            return
        minute = _minute(time.time() if now is None else now)
        slot = self._slots[minute % len(self._slots)]
        if slot[0] != minute:  # the slot still holds a minute MINUTES ago: start it afresh
            slot[1:] = 0
            slot[0] = minute
        slot[1:] += grown


def _minute(seconds: float) -> int:
    return int(seconds // 60)
