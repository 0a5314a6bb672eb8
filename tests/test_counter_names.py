"""The six counters are named once (``Stats``' fields): the metrics board, the proxy's reports
and the cache's lifetime counters follow that one list."""

from __future__ import annotations

from dataclasses import fields

from embedcache.embedding.counters import COUNTERS, Stats
from embedcache.proxy.metrics import ProxyMetrics
from embedcache.storage.store import COUNTERS as LIFETIME_COUNTERS


def test_the_counters_are_the_fields_of_stats_and_the_lifetime_counters() -> None:
    assert tuple(field.name for field in fields(Stats)) == COUNTERS
    assert len(COUNTERS) == 6
    assert set(LIFETIME_COUNTERS) == set(COUNTERS)


def test_stats_from_values_keeps_counts_whole_and_the_token_estimate_as_it_is() -> None:
    stats = Stats.from_values({"hits": 3.0, "tokens_spent": 7.0, "tokens_saved": 2.5})
    assert stats == Stats(hits=3, tokens_spent=7, tokens_saved=2.5)
    assert isinstance(stats.hits, int)


def test_every_counter_published_on_the_board_comes_back_in_the_totals() -> None:
    metrics = ProxyMetrics()
    published = Stats(**{name: index + 1 for index, name in enumerate(COUNTERS)})
    published.tokens_saved = 0.5
    metrics.publish(published, waiting=2, rendered_bytes=0)
    assert metrics.totals() == (published, 2)
