"""The proxy's counters and latency histogram, written in Prometheus' text format.

Small enough to keep by hand: the proxy runs in one process, and the cache counters come
from the embedder's own :class:`~embedcache.embedding.embedder.Stats`, so nothing is counted twice.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter

from ..embedding.embedder import Stats

__all__ = ["LATENCY_BUCKETS", "OUTCOMES", "ProxyMetrics"]

#: Upper bounds, in seconds, of the request latency histogram.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: What became of a request: answered from the cache alone, filled misses, forwarded
#: uncached, or failed.
OUTCOMES = ("cached", "fetched", "passthrough", "error")


class ProxyMetrics:
    """Requests by outcome and a latency histogram; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outcomes: Counter[str] = Counter()
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        self._in_flight = 0

    def begin(self) -> None:
        """Count a request that has arrived and is not answered yet."""
        with self._lock:
            self._in_flight += 1

    def observe(self, outcome: str, seconds: float) -> None:
        """Count one finished request: ``cached``, ``fetched``, ``passthrough`` or ``error``."""
        with self._lock:
            self._in_flight -= 1
            self._outcomes[outcome] += 1
            self._buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._latency_sum += seconds

    def observe_at_once(self, outcome: str, seconds: float) -> None:
        """Count a request answered the moment it arrived (never counted as in flight)."""
        with self._lock:
            self._outcomes[outcome] += 1
            self._buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._latency_sum += seconds

    def render(self, stats: Stats, waiting: int) -> str:
        """The exposition text, cache counters taken from ``stats``."""
        with self._lock:
            outcomes = dict(self._outcomes)
            buckets = list(self._buckets)
            total_seconds = self._latency_sum
            in_flight = self._in_flight
        out: list[str] = []
        _family(out, "requests_total", "counter", "Embedding requests answered, by outcome.",
                [(f'outcome="{name}"', outcomes.get(name, 0)) for name in OUTCOMES])  # fmt: skip
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
        _family(out, "requests_in_flight", "gauge", "Requests being answered right now.",
                [("", in_flight)])  # fmt: skip
        _family(out, "waiting_calls", "gauge", "Requests waiting for another's fetch.",
                [("", waiting)])  # fmt: skip
        cumulative = 0
        samples: list[tuple[str, float]] = []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
            cumulative += count
            samples.append((f'le="{"+Inf" if bound == float("inf") else bound}"', cumulative))
        _family(out, "request_duration_seconds", "histogram", "Time to answer a request.", [])
        name = "embedcache_request_duration_seconds"
        out += [f"{name}_bucket{{{labels}}} {value}" for labels, value in samples]
        out += [f"{name}_sum {total_seconds:.6f}", f"{name}_count {cumulative}"]
        return "\n".join(out) + "\n"


def _family(
    out: list[str], name: str, kind: str, help_text: str, samples: list[tuple[str, float]]
) -> None:
    full = f"embedcache_{name}"
    out += [f"# HELP {full} {help_text}", f"# TYPE {full} {kind}"]
    for labels, value in samples:
        out.append(f"{full}{{{labels}}} {value}" if labels else f"{full} {value}")
