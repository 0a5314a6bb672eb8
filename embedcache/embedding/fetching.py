"""Fetching one call's misses: packed into requests as slots free, sent, committed on arrival.

:class:`Fetcher` is the half of the caching core that spends tokens. It packs the misses
(:class:`~embedcache.embedding.batches.Packer`) a request at a time, claiming each chunk
just before it is packed (:mod:`embedcache.embedding.coalescing`), sends the requests
through the :class:`~embedcache.embedding.scheduler.BatchScheduler`, and writes each
answer through the :class:`~embedcache.storage.tiers.Tiers` before the next is waited for,
so an interrupted call keeps everything fetched so far. What other calls or processes were
fetching meanwhile is waited for and read from the store, then fetched if still missing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ..cache_keys import KeyFingerprints
from ..config import DEFAULT_MAX_BATCH_TOKENS
from ..errors import CacheError, CacheMissError, InvalidInputError
from ..inputs import estimate_input
from ..models import RequestOptions
from ..storage.tiers import Tiers
from ..upstream.protocol import Upstream, UpstreamResult
from .batches import Miss, Packer, check_lengths, plan_batches, validated, validated_payloads
from .coalescing import FetchClaims, Inflight
from .counters import Counters, Stats
from .scheduler import BatchScheduler

__all__ = ["Call", "Fetcher", "PayloadRows", "Rows", "refuse_unfetchable"]


class Rows:
    """The vectors of a call's distinct texts; sized on the first batch when the model's
    dimension is not known beforehand."""

    def __init__(self, matrix: NDArray[np.float32], tokens: NDArray[np.float64]) -> None:
        self.matrix = matrix
        self.tokens = tokens

    @property
    def dim(self) -> int | None:
        """The vectors' dimension, once known."""
        return self.matrix.shape[1] or None

    def put(
        self, slots: list[int], vectors: NDArray[np.float32], tokens: NDArray[np.float64]
    ) -> None:
        """Set the rows ``slots`` (positions among the call's distinct texts)."""
        if not self.matrix.shape[1]:
            self.matrix = np.zeros((len(self.matrix), vectors.shape[1]), dtype=np.float32)
        self.matrix[slots] = vectors
        self.tokens[slots] = tokens


class PayloadRows:
    """The entries of a call's distinct texts when they are payloads (multi-vector rows,
    packed bits: :attr:`~embedcache.models.RequestOptions.plain` is false), one array
    each; ``None`` until found or fetched."""

    def __init__(self, payloads: list[NDArray[Any] | None], tokens: NDArray[np.float64]) -> None:
        self.payloads = payloads
        self.tokens = tokens

    def put(
        self, slots: list[int], payloads: list[NDArray[Any]], tokens: NDArray[np.float64]
    ) -> None:
        """Set the entries ``slots`` (positions among the call's distinct texts)."""
        for slot, payload in zip(slots, payloads, strict=True):
            self.payloads[slot] = payload
        self.tokens[slots] = tokens


@dataclass
class Call:
    """The state of one embed or warm call, handed down its fetch loop.

    :ivar rows: where the call's vectors (or payloads) go; ``None`` for a warm call, which
        keeps none.
    """

    options: RequestOptions
    #: what each entry is stored under (one per key when texts and images are mixed)
    fp: KeyFingerprints
    upstream: Upstream
    rows: Rows | PayloadRows | None
    on_batch: Callable[[int, int], None] | None = None
    stats: Stats = field(default_factory=Stats)
    stop: threading.Event | None = None
    #: Called with a number of entries stored meanwhile by another call or process.
    on_found: Callable[[int], None] | None = None

    @property
    def stopped(self) -> bool:
        """Whether the caller has cancelled the call (``stop`` is set)."""
        return self.stop is not None and self.stop.is_set()


def refuse_unfetchable(offline: bool, tiers: Tiers, missing: int, asked: str) -> None:
    """Raise before anything is sent when ``missing`` of what a call ``asked`` (``"6
    distinct texts"``) could not be fetched and kept.

    :raises CacheMissError: offline.
    :raises CacheError: the cache is read-only: fetching would spend tokens on entries that
        could not be kept.
    """
    if offline:
        raise CacheMissError(f"offline: {missing} of {asked} are not cached", misses=missing)
    if tiers.read_only:
        raise CacheError(
            f"{missing} of {asked} are not cached, and the cache at {tiers.store.directory} "
            "is read-only"
        )


def _until_stopped(batches: Iterator[list[Miss]], call: Call) -> Iterator[list[Miss]]:
    """``batches``, each drawn (and so claimed) only while ``call`` is not stopped; once it
    is, drawing raises ``CancelledError``, which the scheduler raises after committing the
    batches already in flight: a cancelled call keeps what it paid for and sends no more."""
    while not call.stopped:
        batch = next(batches, None)
        if batch is None:
            return
        yield batch
    raise CancelledError("the call was cancelled; batches already sent were committed")


class Fetcher:
    """Fetches misses and commits them; shared by every call of one embedder.

    :param tiers: where answers are written, and looked up again under a claim.
    :param scheduler: sends the requests, a bounded number in flight.
    :param counters: the embedder's counters; requests, tokens and misses are counted as
        each answer arrives.
    :param inflight: coalesces concurrent fetches of the same entries; ``None``: no claims.
    :param offline: raise :class:`CacheMissError` instead of fetching.
    :param batch_size: most texts per request (capped by the model's limit).
    :param max_batch_tokens: most estimated tokens per request.
    """

    def __init__(
        self,
        tiers: Tiers,
        scheduler: BatchScheduler[list[Miss], UpstreamResult],
        counters: Counters,
        *,
        inflight: Inflight | None = None,
        offline: bool = False,
        batch_size: int | None = None,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
        self._tiers = tiers
        self._scheduler = scheduler
        self._counters = counters
        #: Coalesces concurrent fetches of the same entries; ``None``: no claims.
        self.inflight = inflight
        self.offline = offline
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens

    @property
    def waiting(self) -> int:
        """Calls blocked right now on another call's fetch of the same entries."""
        return self.inflight.waiting if self.inflight is not None else 0

    def close(self) -> None:
        """Stop the worker threads once their batches are done."""
        self._scheduler.close()

    def planned_requests(self, misses: list[Miss], options: RequestOptions) -> int:
        """How many requests ``misses`` would be sent in, if none were fetched elsewhere."""
        return sum(1 for _ in plan_batches(misses, options, self.batch_size, self.max_batch_tokens))

    def fill(self, misses: list[Miss], distinct: int, call: Call) -> None:
        """Fetch ``misses`` (of ``distinct`` entries the call asked for) and store them.

        :raises CacheMissError: offline.
        :raises CacheError: the cache is read-only.
        :raises InvalidInputError: a text over the model's limit, before any request.
        """
        refuse_unfetchable(self.offline, self._tiers, len(misses), f"{distinct} distinct texts")
        check_lengths(misses, call.options)
        # Misses are counted as their answers arrive (in send), not as planned: an
        # interrupted call, or entries another process stores meanwhile, must not leave
        # misses in the lifetime counters that were never fetched.
        while misses:
            claims = None
            if self.inflight is not None:
                claims = self.inflight.fetch(whole=call.options.late_chunking)
            self._fetch(misses, call, claims)
            if claims is None or not claims.left_to_others:
                break
            if call.stopped:
                # Cancelled: not waiting on other callers' fetches either.
                raise CancelledError("the call was cancelled; batches sent were committed")
            # Whatever the other calls' fetches did not store, this call fetches itself.
            misses = self.take_stored(claims.wait_for_others(), call, "coalesced")

    def take_stored(
        self, misses: list[Miss], call: Call, counted_as: Literal["hits", "coalesced"]
    ) -> list[Miss]:
        """Take from the cache what has been stored of ``misses`` since ``call`` looked (by
        another process, or by the fetch of another call), and return the rest."""
        if not misses:
            return misses
        keys = [miss.key for miss in misses]
        rows = call.rows
        found = payloads = None
        if rows is None:
            usable = self._present(call, keys)
        elif isinstance(rows, PayloadRows):
            payloads = self._tiers.read_payloads(call.fp, keys)
            usable = payloads.present
        else:
            found = self._tiers.read(call.fp, keys, rows.dim or call.options.expected_dim)
            usable = found.present.copy()
        if call.options.late_chunking and not usable.all():
            usable[:] = False  # a group is all or nothing: never send part of one
        done = int(usable.sum())
        if not done:
            return misses
        slots = [m.slot for m, ok in zip(misses, usable, strict=True) if ok]
        if isinstance(rows, Rows) and found is not None:
            rows.put(slots, found.vectors[usable], found.tokens[usable])
        elif isinstance(rows, PayloadRows) and payloads is not None:
            taken = [p for p in payloads.payloads if p is not None]
            rows.put(slots, taken, payloads.tokens[usable])
        self._counters.add(call.stats, **{counted_as: done})
        if call.on_found is not None:
            call.on_found(done)
        return [m for m, ok in zip(misses, usable, strict=True) if not ok]

    def _present(self, call: Call, keys: list[bytes]) -> NDArray[np.bool_]:
        """Whether each key is cached, without reading it (a warm call)."""
        if call.options.plain:
            return self._tiers.contains(call.fp, keys, call.options.expected_dim)
        return self._tiers.contains_payloads(call.fp, keys)

    def _fetch(self, misses: list[Miss], call: Call, claims: FetchClaims | None) -> None:
        """Send ``misses`` in batches, committing each as it arrives. Each batch is packed
        when a slot frees, from what is still missing then (claimed first, when
        ``claims``), so it is full however much other calls and processes have fetched
        meanwhile."""

        def take(chunk: list[Miss]) -> list[Miss]:
            def unstored(owned: list[Miss]) -> list[Miss]:
                return self.take_stored(owned, call, "hits")

            return unstored(chunk) if claims is None else claims.take(chunk, unstored)

        packer = Packer(misses, call.options, self.batch_size, self.max_batch_tokens)
        batches = _until_stopped(packer.batches(take), call)

        def send(batch: list[Miss]) -> UpstreamResult:
            if call.stopped:
                # Drawn before the cancel but still queued for a worker thread (behind other
                # calls' batches): not sent, so nothing is spent after the cancel.
                raise CancelledError("the call was cancelled before this batch was sent")
            result = call.upstream.embed([miss.text for miss in batch], call.options)
            self._counters.add(
                call.stats, requests=1, tokens_spent=result.total_tokens, misses=len(batch)
            )
            return result

        def commit(batch: list[Miss], result: UpstreamResult) -> None:
            try:
                self._commit(batch, result, call)
            finally:
                if claims is not None:
                    claims.sent(batch)
            if call.on_batch is not None:
                call.on_batch(len(batch), result.total_tokens)

        try:
            self._scheduler.run(batches, send, commit)
        finally:
            if claims is not None:
                claims.release()  # a failed or abandoned batch must not hold up waiters

    def _commit(self, batch: list[Miss], result: UpstreamResult, call: Call) -> None:
        rows = call.rows
        lengths = _weights(batch)
        share = lengths / lengths.sum() if lengths.sum() else np.full(len(batch), 1 / len(batch))
        tokens = share * result.total_tokens
        if not call.options.plain:
            payloads = validated_payloads(result, len(batch), call.options)
            keys = [miss.key for miss in batch]
            self._tiers.put_payloads(call.fp, keys, payloads, tokens.tolist())
            if isinstance(rows, PayloadRows):
                rows.put([miss.slot for miss in batch], payloads, tokens)
            return
        assert not isinstance(rows, PayloadRows)
        vectors = validated(result, len(batch), call.options, rows.dim if rows else None)
        self._tiers.put(
            call.fp, [(miss.key, vectors[i], float(tokens[i])) for i, miss in enumerate(batch)]
        )
        if rows is not None:
            rows.put([miss.slot for miss in batch], vectors, tokens)


def _weights(batch: list[Miss]) -> NDArray[np.float64]:
    """How a batch's usage is shared among its entries: by text length, or, with an image
    or PDF among them, by estimated tokens (one image alone gets exactly what it cost)."""
    texts = [miss.text for miss in batch if isinstance(miss.text, str)]
    if len(texts) == len(batch):
        return np.array([len(text) for text in texts], dtype=np.float64)
    return np.array([estimate_input(miss.text) for miss in batch], dtype=np.float64)
