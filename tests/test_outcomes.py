"""Requests' records on their way from the event loop to the request log (and other
consumers): handed over in batches by a thread, bounded, and never lost on a clean stop."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import pytest

from embedcache.models import RequestOptions
from embedcache.proxy.outcomes import Outcomes
from embedcache.proxy.requestlog import RequestRecord, Served, caller_hash


def record(route: str = "/v1/embeddings") -> RequestRecord:
    return RequestRecord(route, "jina", status=200)


class Kept:
    def __init__(self) -> None:
        self.batches: list[list[RequestRecord | Served]] = []

    def __call__(self, batch: Sequence[RequestRecord | Served]) -> None:
        self.batches.append(list(batch))

    @property
    def entries(self) -> list[RequestRecord | Served]:
        return [r for batch in self.batches for r in batch]

    @property
    def records(self) -> list[RequestRecord]:
        return [r for r in self.entries if isinstance(r, RequestRecord)]


def test_requests_beyond_the_bound_are_dropped_and_counted_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kept = Kept()
    outcomes = Outcomes([kept], max_pending=3)
    for number in range(5):
        outcomes.add(record(f"/{number}"))
    assert outcomes.dropped == 2
    with caplog.at_level(logging.WARNING, logger="embedcache"):
        outcomes.close()
    assert [r.route for r in kept.records] == ["/0", "/1", "/2"]
    assert "2 request records dropped" in caplog.text


def test_what_came_in_before_a_stop_is_handed_over_in_order_with_its_time() -> None:
    kept = Kept()
    outcomes = Outcomes([kept], batch_seconds=3600)  # the thread never hands over itself
    outcomes.start()
    for number in range(100):
        outcomes.add(record(f"/{number}"))
    outcomes.close()
    assert [r.route for r in kept.records] == [f"/{n}" for n in range(100)]
    assert all(r.at > 0 for r in kept.records)
    stamps = [r.at for r in kept.records]
    assert stamps == sorted(stamps)


def test_hits_of_one_caller_on_one_body_share_one_record_with_the_key_hash_never_the_key() -> None:
    kept = Kept()
    outcomes = Outcomes([kept])
    options = RequestOptions("jina-embeddings-v3", task="retrieval.query", dimensions=64)
    body, other = object(), object()
    secret = b"Bearer the-secret"
    outcomes.add_hit(secret, body, "jina-embeddings-v3", "openai", options, 3, 2, 7.5, 0.002)
    outcomes.add_hit(secret, body, "jina-embeddings-v3", "openai", options, 3, 2, 7.5, 0.004)
    outcomes.add_hit(b"", other, "jina-embeddings-v3", "jina", options, 1, 1, 1.0, 0.001)
    outcomes.close()
    first, second, anonymous = kept.entries
    assert isinstance(first, Served)
    assert isinstance(second, Served)
    assert isinstance(anonymous, Served)
    assert second.record is first.record  # made once for both
    assert (first.ms, second.ms) == (2.0, 4.0)
    assert first.at <= second.at
    record = first.record
    assert record.key == caller_hash("the-secret")
    assert "the-secret" not in record.line().decode()
    assert (record.dialect, record.model, record.task, record.dimensions) == (
        "openai", "jina-embeddings-v3", "retrieval.query", 64,
    )  # fmt: skip
    assert (record.texts, record.hits, record.misses, record.tokens_saved) == (3, 2, 0, 7.5)
    assert (record.status, record.cache) == (200, "hit")
    # Each hit's line is the record's with its own time and milliseconds.
    line = json.loads(record.line_at(first.middle, second.at, second.ms))
    assert json.loads(record.line()) | {"time": line["time"], "ms": 4.0} == line
    assert anonymous.record.key is None


def test_a_consumer_that_fails_does_not_keep_the_batch_from_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(batch: Sequence[RequestRecord | Served]) -> None:
        raise OSError("disk on fire")

    kept = Kept()
    outcomes = Outcomes([broken, kept])
    outcomes.add(record())
    with caplog.at_level(logging.ERROR, logger="embedcache"):
        outcomes.close()
    assert len(kept.records) == 1
    assert "request records not kept" in caplog.text
