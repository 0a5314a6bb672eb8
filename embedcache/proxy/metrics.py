"""The proxy's counters and latency histogram, for the whole server, in Prometheus' text.

A server of several worker processes keeps every worker's figures in one block of shared
memory (:class:`Board`, made before the workers are forked): a worker writes only its own
row, and whichever worker answers ``/metrics`` adds up all the rows. Request counts and
latencies are written as they happen; the cache counters, which come from each worker's
embedder (:class:`~embedcache.embedding.counters.Stats`, so nothing is counted twice), are
copied into the row by :meth:`ProxyMetrics.publish`, a few times a second and before every
report, so another worker's figures may be a fraction of a second old.
"""

from __future__ import annotations

import bisect
import mmap
import os
import threading
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from ..embedding.counters import COUNTERS, Stats
from ..upstream.health import FAILURE_KINDS, LastFailure, UpstreamHealth
from ..upstream.limiter import Pacing
from .history import History

__all__ = ["Board", "ProxyMetrics"]

#: Upper bounds, in seconds, of the request latency histogram.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: What became of a request: answered from the cache alone, filled misses, forwarded
#: uncached, or failed.
OUTCOMES = ("cached", "fetched", "passthrough", "error")

# A row's columns, in order.
_OUTCOME = 0
_BUCKET = _OUTCOME + len(OUTCOMES)
_LATENCY_SUM = _BUCKET + len(LATENCY_BUCKETS) + 1
_IN_FLIGHT = _LATENCY_SUM + 1
_STATS = _IN_FLIGHT + 1
_WAITING = _STATS + len(COUNTERS)
_RENDERED_BYTES = _WAITING + 1
_RESIDENT_BYTES = _RENDERED_BYTES + 1
# The upstream's figures, as this worker's clients and rate limiter count them: summed over
# the workers (UPSTREAM_SUMMED, then PACING_SUMMED), or each worker's own (PACING_STATE,
# then the last failure's time and status).
_UPSTREAM = _RESIDENT_BYTES + 1
#: Upstream columns added up over the workers.
UPSTREAM_SUMMED = ("sent", "retries", *FAILURE_KINDS, "answered", "answer_seconds")
#: The rate limiters' columns added up over the workers (each worker paces on its own).
PACING_SUMMED = ("window_requests", "window_tokens", "in_flight", "rate_limited",
                 "waited_seconds")  # fmt: skip
#: The rate limiters' states, one per worker.
PACING_STATE = ("scale", "paused_seconds")
_PACING = _UPSTREAM + len(UPSTREAM_SUMMED)
_PACING_STATE = _PACING + len(PACING_SUMMED)
_FAILED_AT = _PACING_STATE + len(PACING_STATE)
_FAILED_STATUS = _FAILED_AT + 1  # -1: none yet; 0: no answer came
_COLUMNS = _FAILED_STATUS + 1
_MESSAGE_BYTES = 256  # each worker's last failure's one line, in a block of its own
_OUTCOME_COLUMN = {name: _OUTCOME + i for i, name in enumerate(OUTCOMES)}
_HITS, _TOKENS_SAVED = COUNTERS.index("hits"), COUNTERS.index("tokens_saved")
_CACHED = _OUTCOME_COLUMN["cached"]
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class Board:
    """One row of figures per worker process, in anonymous shared memory: made before the
    workers are forked, it is the same memory in all of them.

    :param workers: how many rows.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        # One cell at the end, for the whole server: the flushes asked (see ``flushes``).
        self._memory = mmap.mmap(-1, (workers * _COLUMNS + 1) * 8)
        cells: NDArray[np.float64] = np.frombuffer(self._memory, dtype=np.float64)
        self._rows = cells[: workers * _COLUMNS].reshape(workers, _COLUMNS)
        self._flushes = cells[workers * _COLUMNS :]
        # The same memory as plain doubles: one cell updates several times faster than
        # through numpy, and the hit path updates a few per request.
        self.cells = memoryview(self._memory).cast("d")
        #: The last minutes' activity, for the dashboard (shared the same way).
        self.history = History(workers)
        self._messages = mmap.mmap(-1, workers * _MESSAGE_BYTES)
        for worker in range(workers):
            self._rows[worker, _FAILED_STATUS] = -1

    def row_start(self, worker: int) -> int:
        """Where worker ``worker``'s row starts in :attr:`cells`, to write its figures."""
        return worker * _COLUMNS

    def total(self) -> NDArray[np.float64]:
        """Every worker's figures added up."""
        summed: NDArray[np.float64] = self._rows.sum(axis=0)
        return summed

    def column(self, name: str) -> list[float]:
        """One figure of each worker: ``rendered_bytes`` or ``resident_bytes``."""
        index = {"rendered_bytes": _RENDERED_BYTES, "resident_bytes": _RESIDENT_BYTES}[name]
        return [float(value) for value in self._rows[:, index]]

    def upstream(self) -> tuple[dict[str, float], dict[str, float], list[dict[str, float]]]:
        """The upstream's figures added up over the workers (:data:`UPSTREAM_SUMMED`), the
        rate limiters' (:data:`PACING_SUMMED`), and each worker's :data:`PACING_STATE`."""
        total = self.total()
        summed = {name: float(total[_UPSTREAM + i]) for i, name in enumerate(UPSTREAM_SUMMED)}
        pacing = {name: float(total[_PACING + i]) for i, name in enumerate(PACING_SUMMED)}
        states = [
            {name: float(row[_PACING_STATE + i]) for i, name in enumerate(PACING_STATE)}
            for row in self._rows
        ]
        return summed, pacing, states

    def last_failure(self) -> LastFailure | None:
        """The latest failed upstream attempt of any worker."""
        worker = int(np.argmax(self._rows[:, _FAILED_AT]))
        row = self._rows[worker]
        if row[_FAILED_STATUS] < 0:
            return None
        start = worker * _MESSAGE_BYTES
        length = int.from_bytes(self._messages[start : start + 2], "little")
        text = self._messages[start + 2 : start + 2 + length].decode("utf-8", "replace")
        status = int(row[_FAILED_STATUS])
        return LastFailure(status or None, float(row[_FAILED_AT]), text)

    def write_failure(self, worker: int, failure: LastFailure) -> None:
        """Put ``failure`` in worker ``worker``'s row (its message cut to fit)."""
        encoded = failure.message.encode()[: _MESSAGE_BYTES - 2]
        encoded = encoded.decode("utf-8", "ignore").encode()  # not cut inside a character
        start = worker * _MESSAGE_BYTES
        line = len(encoded).to_bytes(2, "little") + encoded
        self._messages[start : start + len(line)] = line
        self._rows[worker, _FAILED_STATUS] = failure.status or 0
        self._rows[worker, _FAILED_AT] = failure.at

    @property
    def flushes(self) -> int:
        """How many times any worker was asked to flush (each worker follows)."""
        return int(self._flushes[0])

    def count_flush(self) -> None:
        self._flushes[0] += 1


class ProxyMetrics:
    """One worker's requests by outcome, latency histogram and cache counters, in its row
    of ``board``; thread-safe.

    :param board: the server's board (default: a board of one, for a single process).
    :param worker: this worker's row.
    """

    def __init__(self, board: Board | None = None, worker: int = 0) -> None:
        self.board = board if board is not None else Board(1)
        self._worker = worker
        self._failure_shown: LastFailure | None = None
        self._cells = self.board.cells
        self._at = self.board.row_start(worker)
        self._lock = threading.Lock()

    def begin(self) -> None:
        """Count a request that has arrived and is not answered yet."""
        with self._lock:
            self._cells[self._at + _IN_FLIGHT] += 1

    def observe(self, outcome: str, seconds: float) -> None:
        """Count one finished request: ``cached``, ``fetched``, ``passthrough`` or ``error``."""
        cells, at = self._cells, self._at
        with self._lock:
            cells[at + _IN_FLIGHT] -= 1
            cells[at + _OUTCOME_COLUMN[outcome]] += 1
            cells[at + _BUCKET + bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            cells[at + _LATENCY_SUM] += seconds

    def observe_hits(self, entries: int, tokens_saved: float, seconds: float) -> None:
        """Count a request answered from memory the moment it arrived (never in flight),
        and its hits, which the embedder counts too: the row shows them at once, and the
        next :meth:`publish` writes the same totals."""
        cells, at = self._cells, self._at
        with self._lock:
            cells[at + _CACHED] += 1
            cells[at + _BUCKET + bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            cells[at + _LATENCY_SUM] += seconds
            cells[at + _STATS + _HITS] += entries
            cells[at + _STATS + _TOKENS_SAVED] += tokens_saved

    def publish(self, stats: Stats, waiting: int, rendered_bytes: int) -> None:
        """Copy this worker's cache counters and memory into its row."""
        cells, at = self._cells, self._at
        with self._lock:
            for i, name in enumerate(COUNTERS):
                cells[at + _STATS + i] = getattr(stats, name)
            cells[at + _WAITING] = waiting
            cells[at + _RENDERED_BYTES] = rendered_bytes
            cells[at + _RESIDENT_BYTES] = _resident_bytes()

    def publish_upstream(self, health: UpstreamHealth, pacing: Pacing | None) -> None:
        """Copy this worker's upstream counters and rate limiter state into its row."""
        cells, at = self._cells, self._at
        counts = (health.sent, health.retries, *(health.failures[kind] for kind in FAILURE_KINDS),
                  health.answered, health.answer_seconds)  # fmt: skip
        with self._lock:
            for i, value in enumerate(counts):
                cells[at + _UPSTREAM + i] = value
            if pacing is not None:
                for i, name in enumerate(PACING_SUMMED):
                    cells[at + _PACING + i] = getattr(pacing, name)
                for i, name in enumerate(PACING_STATE):
                    cells[at + _PACING_STATE + i] = getattr(pacing, name)
            failure = health.last_failure
            if failure is not None and failure is not self._failure_shown:
                self._failure_shown = failure
                self.board.write_failure(self._worker, failure)

    def own_totals(self) -> dict[str, float]:
        """This worker's requests answered and cache counters, as :meth:`publish` left them
        (what :class:`~embedcache.proxy.history.HistoryRecorder` records)."""
        row = np.array(self._cells[self._at : self._at + _COLUMNS], dtype=np.float64)
        totals = {name: float(row[_STATS + i]) for i, name in enumerate(COUNTERS)}
        totals["requests"] = float(sum(row[_OUTCOME_COLUMN[name]] for name in OUTCOMES))
        failures = {kind: row[_UPSTREAM + UPSTREAM_SUMMED.index(kind)] for kind in FAILURE_KINDS}
        # What makes the dashboard's upstream state red (the upstream is failing) or amber.
        totals["upstream_failures"] = float(failures["server_error"] + failures["transport"])
        totals["upstream_rate_limited"] = float(failures["rate_limited"])
        return totals

    def totals(self) -> tuple[Stats, int]:
        """The whole server's cache counters, and its calls waiting on others' fetches."""
        total = self.board.total()
        values = {name: float(total[_STATS + i]) for i, name in enumerate(COUNTERS)}
        return Stats.from_values(values), int(total[_WAITING])

    def _per_worker(self, name: str) -> list[tuple[str, float]]:
        return [(f'worker="{i}"', int(v)) for i, v in enumerate(self.board.column(name))]

    def render(self) -> str:
        """The exposition text of the whole server (publish this worker's figures first)."""
        total = self.board.total()
        stats, waiting = self.totals()
        out: list[str] = []
        outcomes = [(f'outcome="{name}"', int(total[_OUTCOME_COLUMN[name]])) for name in OUTCOMES]
        _family(out, "requests_total", "counter", "Embedding requests answered, by outcome.",
                outcomes)  # fmt: skip
        _family(out, "entries_total", "counter", "Distinct inputs looked up, by source.", [
            ('result="hit"', stats.hits),
            ('result="miss"', stats.misses),
            ('result="coalesced"', stats.coalesced),
        ])  # fmt: skip
        _family(out, "upstream_requests_total", "counter", "Batches sent upstream for misses.",
                [("", stats.requests)])  # fmt: skip
        _family(out, "tokens_spent_total", "counter", "Tokens the upstream charged for misses.",
                [("", stats.tokens_spent)])  # fmt: skip
        _family(out, "tokens_saved_total", "counter", "Tokens the hits cost when fetched (est.).",
                [("", round(stats.tokens_saved))])  # fmt: skip
        upstream, _, _ = self.board.upstream()
        _family(out, "upstream_retries_total", "counter", "Upstream attempts that were retries.",
                [("", int(upstream["retries"]))])  # fmt: skip
        _family(out, "upstream_failures_total", "counter", "Failed upstream attempts, by kind.",
                [(f'kind="{kind}"', int(upstream[kind])) for kind in FAILURE_KINDS])  # fmt: skip
        _family(out, "requests_in_flight", "gauge", "Requests being answered right now.",
                [("", int(total[_IN_FLIGHT]))])  # fmt: skip
        _family(out, "waiting_calls", "gauge", "Requests waiting for another's fetch.",
                [("", waiting)])  # fmt: skip
        _family(out, "workers", "gauge", "Worker processes serving.",
                [("", self.board.workers)])  # fmt: skip
        _family(out, "rendered_bytes", "gauge", "Memory holding served embeddings' text.",
                self._per_worker("rendered_bytes"))  # fmt: skip
        _family(out, "resident_bytes", "gauge", "Resident memory of each worker process.",
                self._per_worker("resident_bytes"))  # fmt: skip
        buckets = total[_BUCKET : _BUCKET + len(LATENCY_BUCKETS) + 1]
        cumulative = 0
        samples: list[tuple[str, float]] = []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
            cumulative += int(count)
            samples.append((f'le="{"+Inf" if bound == float("inf") else bound}"', cumulative))
        _family(out, "request_duration_seconds", "histogram", "Time to answer a request.", [])
        name = "embedcache_request_duration_seconds"
        out += [f"{name}_bucket{{{labels}}} {value}" for labels, value in samples]
        out += [f"{name}_sum {float(total[_LATENCY_SUM]):.6f}", f"{name}_count {cumulative}"]
        return "\n".join(out) + "\n"


def _resident_bytes() -> int:
    """This process's resident memory (Linux; 0 where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _family(
    out: list[str], name: str, kind: str, help_text: str, samples: Sequence[tuple[str, float]]
) -> None:
    full = f"embedcache_{name}"
    out += [f"# HELP {full} {help_text}", f"# TYPE {full} {kind}"]
    for labels, value in samples:
        out.append(f"{full}{{{labels}}} {value}" if labels else f"{full} {value}")
