"""The caching core: look up every text, send only the misses, commit each batch on arrival.

It knows nothing of HTTP or bytes on disk: it reads and writes through
:class:`~embedcache.storage.tiers.Tiers` and sends through an
:class:`~embedcache.upstream.protocol.Upstream`, so the library, the CLI and the proxy share
it, and tests drive it with faulty upstreams. Sending is the
:class:`~embedcache.embedding.scheduler.BatchScheduler`'s job, counting the
:class:`~embedcache.embedding.counters.Counters`'.
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from ..cache_keys import Fingerprint, fingerprint, group_keys, text_keys
from ..config import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_CONCURRENCY, DEFAULT_UPSTREAM_ID
from ..errors import CacheError, CacheMissError, InvalidInputError
from ..models import RequestOptions
from ..storage.shared import RedisStore
from ..storage.store import Store
from ..storage.tiers import Tiers
from ..tokens import estimate_tokens
from ..upstream.protocol import Upstream, UpstreamResult
from .batches import Miss, Packer, check_lengths, plan_batches, validated
from .coalescing import Claim, Elsewhere, Inflight
from .counters import AUTOFLUSH, Counters, Recorder, Stats
from .distinct import DistinctKeys
from .scheduler import BatchScheduler

__all__ = ["CachedEmbedder", "Embedded", "Stats", "WarmReport", "check_texts"]

log = logging.getLogger("embedcache")


@dataclass(frozen=True)
class WarmReport:
    """What :meth:`CachedEmbedder.warm` found and did. Counts are of distinct entries except
    ``texts``; ``estimated_tokens`` uses the same estimate as batching."""

    texts: int
    unique: int
    cached: int
    to_fetch: int
    estimated_tokens: int
    tokens_spent: int = 0
    #: Requests the misses would be sent in (batching by count and estimated tokens); dry
    #: runs only: a real fill plans its batches as it sends them.
    estimated_requests: int = 0


@dataclass(frozen=True)
class Embedded:
    """What :meth:`CachedEmbedder.embed_detailed` returns: the vectors, the call's own
    counters (``tokens_spent`` is exactly what its requests were charged), and for each row
    its entry's key (see :meth:`CachedEmbedder.keys`) and the tokens recorded for it (what
    a later hit on it saves)."""

    vectors: NDArray[np.float32]
    stats: Stats
    tokens: NDArray[np.float64]
    keys: list[bytes]


class _Rows:
    """The vectors of a call's distinct texts; sized on the first batch when the model's
    dimension is not known beforehand."""

    def __init__(self, matrix: NDArray[np.float32], tokens: NDArray[np.float64]) -> None:
        self.matrix = matrix
        self.tokens = tokens

    @property
    def dim(self) -> int | None:
        return self.matrix.shape[1] or None

    def put(
        self, slots: list[int], vectors: NDArray[np.float32], tokens: NDArray[np.float64]
    ) -> None:
        if not self.matrix.shape[1]:
            self.matrix = np.zeros((len(self.matrix), vectors.shape[1]), dtype=np.float32)
        self.matrix[slots] = vectors
        self.tokens[slots] = tokens


#: Misses left to other calls' fetches, with what ends those fetches.
_Waiting = tuple[Elsewhere, list[Miss]]


class _Holds:
    """The claims of one fetch, each ended once every entry it holds that is still to be
    sent has been committed: a claimed chunk may be packed into two requests."""

    def __init__(self) -> None:
        self._owner: dict[bytes, Claim] = {}
        self._left: dict[Claim, int] = {}  # the claims not yet ended: entries to send

    def add(self, claim: Claim, sending: list[Miss]) -> None:
        """Keep ``claim`` until ``sending``, what it holds that is still missing, is sent
        (entries found stored stay claimed with the rest until then)."""
        if not sending:
            claim.release()
            return
        self._left[claim] = len(sending)
        for miss in sending:
            self._owner[miss.key] = claim

    def sent(self, batch: list[Miss]) -> None:
        """``batch`` is committed (or failed): end the claims nothing else waits on."""
        for miss in batch:
            claim = self._owner.pop(miss.key, None)
            if claim is not None:
                self._left[claim] -= 1
                if not self._left[claim]:
                    del self._left[claim]
                    claim.release()

    def release(self) -> None:
        """End every claim still held, whatever happened to its entries."""
        for claim in self._left:
            claim.release()
        self._left.clear()
        self._owner.clear()


@dataclass
class _Call:
    """The state of one embed or warm call, handed down its fetch loop."""

    options: RequestOptions
    fp: Fingerprint
    upstream: Upstream
    rows: _Rows | None
    on_batch: Callable[[int, int], None] | None = None
    stats: Stats = field(default_factory=Stats)
    stop: threading.Event | None = None
    #: Called with a number of entries stored meanwhile by another call or process.
    on_found: Callable[[int], None] | None = None

    @property
    def stopped(self) -> bool:
        """Whether the caller has cancelled the call (``stop`` is set)."""
        return self.stop is not None and self.stop.is_set()


def _until_stopped(batches: Iterator[list[Miss]], call: _Call) -> Iterator[list[Miss]]:
    """``batches``, each drawn (and so claimed) only while ``call`` is not stopped; once it
    is, drawing raises ``CancelledError``, which the scheduler raises after committing the
    batches already in flight: a cancelled call keeps what it paid for and sends no more."""
    while not call.stopped:
        batch = next(batches, None)
        if batch is None:
            return
        yield batch
    raise CancelledError("the call was cancelled; batches already sent were committed")


def check_texts(texts: object) -> Sequence[str]:
    """Return ``texts`` if it is a list or tuple of ``str``.

    :raises InvalidInputError: naming the first offending item and its type.
    """
    if isinstance(texts, (str, bytes)) or not isinstance(texts, (list, tuple)):
        raise InvalidInputError(f"texts must be a list of str, got {type(texts).__name__}")
    if set(map(type, texts)) <= {str}:
        return texts  # the common case, checked at C speed
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(
                f"texts[{index}] must be a str, got {type(text).__name__}: {text!r:.60}"
            )
    return texts


class CachedEmbedder:
    """Serve embeddings from the cache, fetching misses from ``upstream``.

    Safe to share between threads: concurrent calls that miss the same entries send one
    request for them, whether they are threads of this process or other processes using the
    same cache directory (see :mod:`embedcache.embedding.coalescing`), unless ``coalesce``
    is off.

    :param store: the local disk cache.
    :param upstream: embeds one batch per call; only misses reach it. A call may pass its
        own (the proxy forwards each client's credentials).
    :param offline: raise :class:`CacheMissError` instead of fetching.
    :param batch_size: most texts per request (capped by the model's limit).
    :param max_batch_tokens: most estimated tokens per request.
    :param max_concurrency: most upstream requests in flight at once, shared by all calls
        (concurrent calls queue for the same worker threads).
    :param coalesce: let concurrent calls, in this process and others, wait for each other's
        fetches of the same entries; off, no claims are taken at all.
    :param memory_bytes: keep up to this many bytes of recently read vectors in memory, so
        repeated small requests skip the store (see :mod:`embedcache.storage.memory`); 0: none.
    :param shared: a Redis tier shared with other machines, read after the local store and
        written with it (see :mod:`embedcache.storage.tiers`).
    :param upstream_id: the upstream ``upstream``'s answers are cached as, part of every key
        (:func:`~embedcache.config.resolve_upstream_id`; default: Jina's API).
    """

    def __init__(
        self,
        store: Store,
        upstream: Upstream,
        *,
        offline: bool = False,
        batch_size: int | None = None,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        coalesce: bool = True,
        memory_bytes: int = 0,
        shared: RedisStore | None = None,
        upstream_id: str = DEFAULT_UPSTREAM_ID,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
        self.upstream = upstream
        self.upstream_id = upstream_id
        self.offline = offline
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self._scheduler: BatchScheduler[list[Miss], UpstreamResult]
        self._scheduler = BatchScheduler(max_concurrency)
        self._inflight = Inflight(store.claims) if coalesce else None
        self._tiers = Tiers(store, shared, memory_bytes)
        self._counters = Counters()
        self._fingerprints: dict[RequestOptions, Fingerprint] = {}
        # Counters reach the lifetime totals without close(): now and then, and at exit.
        # The recorder holds the store, not the embedder, which can still be collected
        # unclosed (AUTOFLUSH's thread then gives it its last flush).
        self._recorder = Recorder(self._counters, store.add_counters)
        AUTOFLUSH.add(self._recorder)
        self._finalizer = weakref.finalize(self, AUTOFLUSH.orphan, self._recorder)
        self._finalizer.atexit = False  # AUTOFLUSH's own exit flush covers it

    @property
    def waiting(self) -> int:
        """Calls blocked right now on another call's fetch of the same entries."""
        return self._inflight.waiting if self._inflight is not None else 0

    @property
    def stats(self) -> Stats:
        """A snapshot of the counters."""
        return self._counters.snapshot()

    def close(self) -> None:
        """Record this session's counters in the cache's lifetime totals and stop the worker
        threads (the store and upstream belong to the caller). Not needed for the counters:
        they are also recorded now and then, and at exit."""
        self._finalizer.detach()
        AUTOFLUSH.discard(self._recorder)
        self.flush_counters()
        self._scheduler.close()
        self._tiers.close()  # copies of shared hits to local disk still queued

    def embed(self, texts: Sequence[str], options: RequestOptions) -> NDArray[np.float32]:
        """Return a ``(len(texts), d)`` float32 array, row ``i`` for ``texts[i]``.

        Distinct texts are looked up once; misses are sent in batches (a late-chunking list
        as one request), and each batch is committed as soon as it arrives, so an
        interrupted call keeps everything fetched so far.

        :raises InvalidInputError: before any request, for bad texts or limits.
        :raises CacheMissError: in offline mode, when anything is missing.
        """
        result = self.embed_detailed(texts, options)
        assert result is not None  # only cached_only calls come back empty-handed
        return result.vectors

    def embed_detailed(
        self,
        texts: Sequence[str],
        options: RequestOptions,
        *,
        upstream: Upstream | None = None,
        cached_only: bool = False,
        stop: threading.Event | None = None,
    ) -> Embedded | None:
        """:meth:`embed`, also returning what this call found and spent.

        :param upstream: send this call's misses here instead of to the embedder's upstream.
        :param cached_only: return ``None``, without counting or fetching anything, unless
            every text is in memory or on local disk (a cheap first try for callers that
            must not block: the shared tier is not asked).
        :param stop: once set (by another thread), send no new batch: the ones in flight
            are committed, then ``concurrent.futures.CancelledError`` is raised.
        """
        fp, keys, position = self._index(texts, options)
        if not keys:
            empty = np.empty((0, options.expected_dim or 0), np.float32)
            return Embedded(empty, Stats(), np.empty(0, np.float64), [])
        unique = list(position)
        found = self._tiers.read(fp, unique, options.expected_dim, shared=not cached_only)
        rows = _Rows(found.vectors, found.tokens)
        call = _Call(options, fp, upstream or self.upstream, rows, stop=stop)
        if found.present.all():  # the common case, kept short: nothing to fetch
            self._count(call, hits=len(unique), tokens_saved=float(found.tokens.sum()))
        elif cached_only:
            return None
        else:
            misses = self._misses(texts, unique, position, ~found.present, options)
            hits = found.present.copy()
            hits[[miss.slot for miss in misses]] = False
            self._count(call, hits=int(hits.sum()), tokens_saved=float(found.tokens[hits].sum()))
            self._fill(misses, len(unique), call)
        assert call.rows is not None
        matrix, tokens = call.rows.matrix, call.rows.tokens
        if len(unique) != len(keys):
            slot = {key: i for i, key in enumerate(unique)}
            order = np.fromiter((slot[key] for key in keys), np.intp, len(keys))
            matrix, tokens = matrix[order], tokens[order]
        return Embedded(matrix, call.stats, tokens, keys)

    def warm(
        self,
        texts: Sequence[str],
        options: RequestOptions,
        *,
        dry_run: bool = False,
        on_batch: Callable[[int, int], None] | None = None,
        seen: DistinctKeys | None = None,
        on_found: Callable[[int], None] | None = None,
    ) -> WarmReport:
        """Make sure every text is cached, without reading or returning vectors.

        A corpus too large to hold is warmed a window of texts at a time, one call each
        (``embedcache prewarm`` does so); ``seen`` then counts each entry once over them all.

        :param dry_run: only hash and check presence; send nothing.
        :param on_batch: called with ``(texts, tokens)`` after each batch this call sent
            is committed.
        :param on_found: called with a number of entries that were missing when this call
            looked but were then stored by another call or process (not sent here).
        :param seen: the entries counted by earlier calls: those are left out of every count
            but ``texts`` (and neither looked up nor fetched here), and this call's entries
            are added to it.
        :returns: counts known before fetching (``tokens_spent`` is filled in after).
        :raises InvalidInputError: before any request, for bad texts or limits.
        :raises CacheMissError: in offline mode, when anything is missing.
        """
        fp, _, position = self._index(texts, options)
        unique = list(position)
        if seen is not None:
            new = seen.add(unique)
            if not new.all():
                unique = list(itertools.compress(unique, new.tolist()))
        absent = ~self._tiers.contains(fp, unique, options.expected_dim)
        misses = self._misses(texts, unique, position, absent, options)
        report = WarmReport(
            texts=len(texts),
            unique=len(unique),
            cached=len(unique) - len(misses),
            to_fetch=len(misses),
            estimated_tokens=sum(estimate_tokens(miss.text) for miss in misses),
            estimated_requests=sum(
                1 for _ in plan_batches(misses, options, self.batch_size, self.max_batch_tokens)
            )
            if dry_run
            else 0,
        )
        if dry_run or not misses:
            return report
        call = _Call(options, fp, self.upstream, None, on_batch, on_found=on_found)
        self._fill(misses, len(unique), call)
        return replace(report, tokens_spent=call.stats.tokens_spent)

    def count_hits(self, entries: int, tokens_saved: float) -> None:
        """Count hits a caller answered from its own copy of what this embedder returned
        (the proxy's rendered answers), so the counters cover every hit."""
        self._counters.add_hits(entries, tokens_saved)

    def forget_memory(self) -> None:
        """Drop the recently read vectors held in memory (``memory_bytes``)."""
        self._tiers.forget_memory()

    def flush_counters(self) -> None:
        """Add what was counted since the last flush to the cache's lifetime counters.
        Done after every fill, on close, every
        :data:`~embedcache.config.COUNTER_FLUSH_SECONDS` when something was counted, and
        at exit. Never raises: a failure is logged, and its counts are tried again next
        time (counters are bookkeeping, and a read-only cache must still serve its hits)."""
        self._recorder.flush()

    def keys(self, texts: Sequence[str], options: RequestOptions) -> list[bytes]:
        """The cache key of each text's entry, in order (under late chunking, of each
        position of the group), as every read and write of this embedder uses them.

        :raises InvalidInputError: for bad texts, or a late-chunking group larger than one
            request takes.
        """
        check_texts(texts)
        fp = self._fingerprint(options)
        if not options.late_chunking:
            return text_keys(fp, texts)
        if len(texts) > options.max_items:
            raise InvalidInputError(
                f"a late-chunking group is sent as one request, and {options.model} takes "
                f"at most {options.max_items} inputs; got {len(texts)}"
            )
        return group_keys(fp, texts)

    def _index(
        self, texts: Sequence[str], options: RequestOptions
    ) -> tuple[Fingerprint, list[bytes], dict[bytes, int]]:
        """Validate, key every text, and map each distinct key to a position of its text."""
        keys = self.keys(texts, options)
        # For repeated texts this keeps the last position: the same text either way.
        position = dict(zip(keys, range(len(keys)), strict=True))
        return self._fingerprint(options), keys, position

    def _fingerprint(self, options: RequestOptions) -> Fingerprint:
        fp = self._fingerprints.get(options)
        if fp is None:
            fp = self._fingerprints[options] = fingerprint(options, self.upstream_id)
        return fp

    @staticmethod
    def _misses(
        texts: Sequence[str],
        unique: list[bytes],
        position: dict[bytes, int],
        absent: NDArray[np.bool_],
        options: RequestOptions,
    ) -> list[Miss]:
        slots = np.flatnonzero(absent)
        if len(slots) and options.late_chunking:
            # A group is all or nothing: its vectors only make sense together.
            slots = np.arange(len(unique))
        return [
            Miss(unique[j], texts[position[unique[j]]], position[unique[j]], j)
            for j in slots.tolist()
        ]

    def _count(self, call: _Call, **deltas: float) -> None:
        self._counters.add(call.stats, **deltas)

    def _fill(self, misses: list[Miss], distinct: int, call: _Call) -> None:
        if self.offline:
            raise CacheMissError(
                f"offline: {len(misses)} of {distinct} distinct texts are not cached",
                misses=len(misses),
            )
        if self._tiers.read_only:
            # Fetching would spend tokens on vectors that could not be kept.
            raise CacheError(
                f"{len(misses)} of {distinct} distinct texts are not cached, and the cache at "
                f"{self._tiers.store.directory} is read-only"
            )
        check_lengths(misses, call.options)
        # Misses are counted as their answers arrive (in send), not as planned: an
        # interrupted call, or entries another process stores meanwhile, must not leave
        # misses in the lifetime counters that were never fetched.
        try:
            while misses:
                waiting = self._fetch(misses, call)
                if not waiting:
                    break
                assert self._inflight is not None  # only claims leave misses to others
                if call.stopped:
                    # Cancelled: not waiting on other callers' fetches either.
                    raise CancelledError("the call was cancelled; batches sent were committed")
                # _fetch has released this call's claims: it never waits holding one.
                self._inflight.wait([held for held, _ in waiting])
                # Whatever the other calls' fetches did not store, this call fetches itself.
                left = [miss for _, group in waiting for miss in group]
                misses = self._take_stored(left, call, "coalesced")
        finally:
            self.flush_counters()

    def _fetch(self, misses: list[Miss], call: _Call) -> list[_Waiting]:
        """Send ``misses`` in batches, committing each as it arrives. Each batch is packed
        when a slot frees, from what is still missing then (see :meth:`_claimed`), so it is
        full however much other calls and processes have fetched meanwhile.

        :returns: the misses left to others' in-flight fetches, with what ends those.
        """
        waiting: list[_Waiting] = []
        holds = _Holds()
        packer = Packer(misses, call.options, self.batch_size, self.max_batch_tokens)
        batches = _until_stopped(
            packer.batches(lambda chunk: self._claimed(chunk, holds, waiting, call)), call
        )

        def send(batch: list[Miss]) -> UpstreamResult:
            if call.stopped:
                # Drawn before the cancel but still queued for a worker thread (behind other
                # calls' batches): not sent, so nothing is spent after the cancel.
                raise CancelledError("the call was cancelled before this batch was sent")
            result = call.upstream.embed([miss.text for miss in batch], call.options)
            self._count(call, requests=1, tokens_spent=result.total_tokens, misses=len(batch))
            return result

        def commit(batch: list[Miss], result: UpstreamResult) -> None:
            try:
                self._commit(batch, result, call)
            finally:
                holds.sent(batch)
            if call.on_batch is not None:
                call.on_batch(len(batch), result.total_tokens)

        try:
            self._scheduler.run(batches, send, commit)
        finally:
            holds.release()  # a failed or abandoned batch must not hold up waiters
        return waiting

    def _claimed(
        self, chunk: list[Miss], holds: _Holds, waiting: list[_Waiting], call: _Call
    ) -> list[Miss]:
        """What of ``chunk`` this call is to send, just before it is packed into a request:
        claim its entries, set aside those another call or process is already fetching,
        and drop what has been stored since this call looked (so concurrent prewarms of
        overlapping corpora do not pay twice)."""
        if self._inflight is None:
            return self._take_stored(chunk, call, "hits")
        claim, owned, elsewhere = self._inflight.claim([miss.key for miss in chunk])
        if len(owned) < len(chunk) and call.options.late_chunking:
            # Never send part of a late-chunking group; wait for whoever holds the rest.
            claim.release()
            owned = []
        if len(owned) < len(chunk):
            mine = set(owned)
            waiting.append((elsewhere, [m for i, m in enumerate(chunk) if i not in mine]))
            chunk = [chunk[i] for i in owned]
        try:
            # Looked at only now, under the claim: anything stored before it was taken is
            # found, and no other claiming caller fetches these entries while it is held.
            # (Looking first would leave a gap in which another process commits and
            # releases, and this call then claims and pays again.)
            chunk = self._take_stored(chunk, call, "hits")
        except BaseException:
            claim.release()  # not yet among the fetch's holds, which end on every path
            raise
        holds.add(claim, chunk)
        return chunk

    def _take_stored(
        self, misses: list[Miss], call: _Call, counted_as: Literal["hits", "coalesced"]
    ) -> list[Miss]:
        """Take from the cache what has been stored of ``misses`` since this call looked (by
        another process, or by the fetch of another call), and return the rest."""
        if not misses:
            return misses
        keys = [miss.key for miss in misses]
        rows = call.rows
        found = None
        if rows is None:
            usable = self._tiers.contains(call.fp, keys, call.options.expected_dim)
        else:
            found = self._tiers.read(call.fp, keys, rows.dim or call.options.expected_dim)
            usable = found.present.copy()
        if call.options.late_chunking and not usable.all():
            usable[:] = False  # a group is all or nothing: never send part of one
        done = int(usable.sum())
        if not done:
            return misses
        if rows is not None and found is not None:
            rows.put([m.slot for m, ok in zip(misses, usable, strict=True) if ok],
                     found.vectors[usable], found.tokens[usable])  # fmt: skip
        self._count(call, **{counted_as: done})
        if call.on_found is not None:
            call.on_found(done)
        return [m for m, ok in zip(misses, usable, strict=True) if not ok]

    def _commit(self, batch: list[Miss], result: UpstreamResult, call: _Call) -> None:
        rows = call.rows
        vectors = validated(result, len(batch), call.options, rows.dim if rows else None)
        lengths = np.array([len(miss.text) for miss in batch], dtype=np.float64)
        share = lengths / lengths.sum() if lengths.sum() else np.full(len(batch), 1 / len(batch))
        tokens = share * result.total_tokens
        self._tiers.put(
            call.fp, [(miss.key, vectors[i], float(tokens[i])) for i, miss in enumerate(batch)]
        )
        if rows is not None:
            rows.put([miss.slot for miss in batch], vectors, tokens)
