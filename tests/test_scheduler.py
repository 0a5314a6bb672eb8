"""The batch scheduler alone: plain send and commit functions, no store, no HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from embedcache.embedding.scheduler import BatchScheduler
from embedcache.errors import InvalidInputError

DEADLINE = 10.0  # seconds any wait below may take before the test fails instead of hanging


def test_every_batch_is_sent_once_and_committed_with_its_own_result() -> None:
    committed: dict[int, int] = {}
    scheduler: BatchScheduler[int, int] = BatchScheduler(3)
    scheduler.run(range(10), lambda batch: batch * 10, committed.__setitem__)
    scheduler.close()
    assert committed == {batch: batch * 10 for batch in range(10)}


def test_up_to_max_concurrency_batches_are_in_flight_together() -> None:
    both_in_flight = threading.Barrier(2, timeout=DEADLINE)
    in_flight = peak = 0
    lock = threading.Lock()

    def send(batch: int) -> int:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        if batch < 2:
            both_in_flight.wait()  # breaks, failing the test, unless two sends overlap
        with lock:
            in_flight -= 1
        return batch

    scheduler: BatchScheduler[int, int] = BatchScheduler(2)
    scheduler.run(range(8), send, lambda batch, result: None)
    scheduler.close()
    assert peak == 2


def test_commits_run_on_the_calling_thread() -> None:
    threads: set[int] = set()
    scheduler: BatchScheduler[int, int] = BatchScheduler(4)
    scheduler.run(range(6), lambda b: b, lambda b, r: threads.add(threading.get_ident()))
    scheduler.close()
    assert threads == {threading.get_ident()}


def test_batches_are_drawn_only_when_a_slot_frees_so_they_see_earlier_commits() -> None:
    committed: list[int] = []
    seen_when_drawn: list[list[int]] = []

    def batches() -> Iterator[int]:
        for batch in range(4):
            seen_when_drawn.append(list(committed))
            yield batch

    scheduler: BatchScheduler[int, int] = BatchScheduler(1)
    scheduler.run(batches(), lambda b: b, lambda b, r: committed.append(b))
    assert seen_when_drawn == [[], [0], [0, 1], [0, 1, 2]]


def test_a_failed_send_stops_new_batches_keeps_finished_ones_and_raises_the_failure() -> None:
    both_in_flight = threading.Barrier(2, timeout=DEADLINE)
    drawn: list[int] = []
    committed: list[int] = []

    def batches() -> Iterator[int]:
        for batch in range(100):
            drawn.append(batch)
            yield batch

    def send(batch: int) -> int:
        if batch < 2:
            both_in_flight.wait()
        if batch != 1:
            raise RuntimeError("send failed")
        return batch

    scheduler: BatchScheduler[int, int] = BatchScheduler(2)
    with pytest.raises(RuntimeError, match="send failed"):
        scheduler.run(batches(), send, lambda batch, result: committed.append(batch))
    scheduler.close()
    # Batch 1 was in flight beside the failure: it is paid for, so it is committed. At most
    # the slot it freed is refilled (by a batch that fails too) before a failure is seen.
    assert committed == [1]
    assert len(drawn) <= 3


def test_a_failure_drawing_the_next_batch_still_commits_the_batches_in_flight() -> None:
    committed: list[int] = []

    def batches() -> Iterator[int]:
        yield 0
        raise OSError("the store could not be read")

    scheduler: BatchScheduler[int, int] = BatchScheduler(2)
    with pytest.raises(OSError, match="could not be read"):
        scheduler.run(batches(), lambda b: b, lambda b, r: committed.append(b))
    scheduler.close()
    assert committed == [0]


def test_max_concurrency_below_one_is_refused_before_anything_runs() -> None:
    with pytest.raises(InvalidInputError, match="max_concurrency must be at least 1"):
        BatchScheduler(0)
