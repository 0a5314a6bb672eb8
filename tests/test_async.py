"""The async API: the one sync core run in worker threads, and what a cancelled await keeps.

A cancelled await returns at once; its call sends no new batch, and the batches already in
flight are committed as they arrive (``JinaEmbeddingFunction.close`` waits for them).
Requests are held at the emulator's gate, so "in flight" is known, not hoped for.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np
import pytest

from embedcache import (
    CacheError,
    CacheMissError,
    InvalidInputError,
    JinaEmbeddingFunction,
    resolve_options,
)
from embedcache.assembly import Assembly, CacheSettings
from embedcache.storage.claims import CLAIMS_DB
from embedcache.testing import JinaEmulator

from .conftest import API_KEY

MakeEF = Callable[..., JinaEmbeddingFunction]
TEXTS = ["first text", "second text", "third text", "fourth text"]


def test_async_methods_return_exactly_what_the_sync_ones_do(make_ef: MakeEF) -> None:
    ef = make_ef(dimensions=128)

    async def run() -> list[np.ndarray]:
        docs, queries, called, passage = await asyncio.gather(
            ef.aencode_documents(TEXTS),
            ef.aencode_queries(TEXTS[:2]),
            ef.aembed(TEXTS[1:]),
            ef.aembed(TEXTS[:1], task="text-matching"),
        )
        return [np.stack(docs), np.stack(queries), called, passage]

    got = asyncio.run(run())
    expected = [
        ef.embed_documents(TEXTS),
        ef.embed_queries(TEXTS[:2]),
        ef.embed(TEXTS[1:]),
        ef.embed(TEXTS[:1], task="text-matching"),
    ]
    assert [a.tobytes() for a in got] == [e.tobytes() for e in expected]
    assert got[0].dtype == np.float32


def test_async_second_pass_sends_nothing(make_ef: MakeEF, emulator: JinaEmulator) -> None:
    asyncio.run(make_ef().aencode_documents(TEXTS))
    sent = len(emulator.requests)
    asyncio.run(make_ef().aencode_documents(TEXTS))
    assert sent == 1
    assert len(emulator.requests) == sent


def test_async_bad_input_raises_the_same_error_before_any_request(
    make_ef: MakeEF, emulator: JinaEmulator
) -> None:
    ef = make_ef()
    with pytest.raises(InvalidInputError, match=r"texts\[1\]"):
        asyncio.run(ef.aembed(["fine", 3]))  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="task"):
        asyncio.run(ef.aembed(["fine"], task="no-such-task"))
    assert emulator.requests == []


def _cancel_while_held(ef: JinaEmbeddingFunction, emulator: JinaEmulator, held: int) -> None:
    """Start ``ef.aencode_documents(TEXTS)``, cancel it once ``held`` requests are in flight,
    check the await returned while they still were, then let them be answered."""
    gate = emulator.hold(times=held)

    async def run() -> None:
        task = asyncio.ensure_future(ef.aencode_documents(TEXTS))
        # The gate waits on a thread condition: off the loop, so the call can start.
        assert await asyncio.to_thread(gate.arrived, held)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Cancelling did not wait for the paid-for requests: they are still held.
        assert gate.held == held

    with gate:
        asyncio.run(run())
    ef.close()  # waits for the cancelled call to commit what was in flight


def _cached(emulator: JinaEmulator, cache_dir: Path, texts: list[str]) -> bool:
    ef = JinaEmbeddingFunction(base_url=emulator.url, cache_dir=cache_dir, offline=True)
    try:
        ef.encode_documents(texts)
    except CacheMissError:
        return False
    finally:
        ef.close()
    return True


def test_a_cancelled_call_commits_its_batch_in_flight_and_sends_no_new_one(
    make_ef: MakeEF, emulator: JinaEmulator, cache_dir: Path
) -> None:
    # One text per batch, one at a time: the next batch would be drawn after this one.
    _cancel_while_held(make_ef(batch_size=1, max_concurrency=1), emulator, held=1)
    assert [r.texts for r in emulator.requests] == [TEXTS[:1]]
    assert _cached(emulator, cache_dir, TEXTS[:1])  # paid for, so kept
    assert not _cached(emulator, cache_dir, TEXTS[1:2])
    emulator.reset()
    make_ef().encode_documents(TEXTS)  # a re-run sends only what is still missing
    assert [r.texts for r in emulator.requests] == [TEXTS[1:]]


def test_a_cancelled_call_commits_every_batch_in_flight_at_once(
    make_ef: MakeEF, emulator: JinaEmulator, cache_dir: Path
) -> None:
    _cancel_while_held(make_ef(batch_size=1, max_concurrency=2), emulator, held=2)
    assert sorted(t for r in emulator.requests for t in r.texts) == sorted(TEXTS[:2])
    assert _cached(emulator, cache_dir, TEXTS[:2])
    assert not _cached(emulator, cache_dir, TEXTS[2:3])


def _claimed(cache_dir: Path) -> int:
    """Entries claimed in the cache directory (a claim is taken as its batch is drawn)."""
    with contextlib.closing(sqlite3.connect(cache_dir / CLAIMS_DB)) as db:
        return int(db.execute("SELECT COUNT(*) FROM claims").fetchone()[0])


def test_a_cancelled_call_does_not_send_batches_still_queued_behind_other_calls(
    make_ef: MakeEF, emulator: JinaEmulator, cache_dir: Path
) -> None:
    ef = make_ef(batch_size=1, max_concurrency=2)
    gate = emulator.hold(times=2)
    with gate:
        # Another caller's two requests take both worker threads and are held there.
        other = threading.Thread(target=ef.encode_documents, args=(["x1", "x2"],))
        other.start()
        assert gate.arrived(2)

        async def cancel_queued() -> None:
            task = asyncio.ensure_future(ef.aencode_documents(TEXTS[:2]))
            # Its two batches are drawn (claimed) and queue for a worker thread.
            deadline = asyncio.get_running_loop().time() + 10
            while _claimed(cache_dir) < 4:
                assert asyncio.get_running_loop().time() < deadline, "never drawn"
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(cancel_queued())
    other.join(30)
    assert not other.is_alive()
    ef.close()
    assert sorted(t for r in emulator.requests for t in r.texts) == ["x1", "x2"]


def test_the_core_stops_drawing_batches_once_told_to(
    emulator: JinaEmulator, cache_dir: Path
) -> None:
    settings = CacheSettings(
        cache_dir=cache_dir, api_key=API_KEY, base_url=emulator.url, batch_size=1,
        max_concurrency=1,
    )  # fmt: skip
    options = resolve_options("jina-embeddings-v3", "retrieval.passage")
    stop = threading.Event()
    with Assembly(settings) as parts:
        stop.set()
        with pytest.raises(CancelledError):
            parts.embedder.embed_detailed(TEXTS, options, stop=stop)
        assert emulator.requests == []
        stop.clear()
        assert parts.embedder.embed_detailed(TEXTS, options, stop=stop) is not None
    assert len(emulator.requests) == len(TEXTS)


def test_an_async_call_after_close_fails_as_the_sync_one_does(make_ef: MakeEF) -> None:
    ef = make_ef()
    asyncio.run(ef.aembed(TEXTS[:1]))
    ef.close()
    with pytest.raises(CacheError, match="closed"):
        ef.embed(TEXTS[:1])
    with pytest.raises(CacheError, match="closed"):
        asyncio.run(ef.aembed(TEXTS[:1]))
    assert not [t for t in threading.enumerate() if t.name.startswith("embedcache-async")]
