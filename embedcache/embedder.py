"""The caching core: look up every text, send only the misses, commit each batch on arrival.

It knows nothing of HTTP or bytes on disk: it is given a :class:`~embedcache.store.Store`
and an :class:`~embedcache.upstream.Upstream`, so the library, the CLI and the proxy share
it, and tests drive it with faulty upstreams.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, replace

import numpy as np
from numpy.typing import NDArray

from .batches import Miss, check_lengths, plan_batches, validated
from .config import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_CONCURRENCY
from .errors import CacheError, CacheMissError, InvalidInputError
from .keys import Fingerprint, fingerprint, group_keys, text_keys
from .models import RequestOptions
from .store import Store
from .tokens import estimate_tokens
from .upstream import Upstream, UpstreamResult

__all__ = ["CachedEmbedder", "Stats", "WarmReport", "check_texts"]

log = logging.getLogger("embedcache")


@dataclass
class Stats:
    """Counters since the embedder was created. Hits and misses count distinct entries.

    :ivar tokens_saved: tokens recorded for the hit entries when they were fetched; an
        estimate, since a batch's usage is apportioned to its texts by length.
    """

    hits: int = 0
    misses: int = 0
    requests: int = 0
    tokens_spent: int = 0
    tokens_saved: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


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


class _Rows:
    """The vectors of a call's distinct texts; sized on the first batch when the model's
    dimension is not known beforehand."""

    def __init__(self, matrix: NDArray[np.float32]) -> None:
        self.matrix = matrix

    @property
    def dim(self) -> int | None:
        return self.matrix.shape[1] or None

    def put(self, slots: list[int], vectors: NDArray[np.float32]) -> None:
        if not self.matrix.shape[1]:
            self.matrix = np.zeros((len(self.matrix), vectors.shape[1]), dtype=np.float32)
        self.matrix[slots] = vectors


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
    """Serve embeddings from ``store``, fetching misses from ``upstream``.

    :param store: where vectors are cached.
    :param upstream: embeds one batch per call; only misses reach it.
    :param offline: raise :class:`CacheMissError` instead of fetching.
    :param batch_size: most texts per request (capped by the model's limit).
    :param max_batch_tokens: most estimated tokens per request.
    :param max_concurrency: most requests in flight at once.
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
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
        if max_concurrency < 1:
            raise InvalidInputError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.store = store
        self.upstream = upstream
        self.offline = offline
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_concurrency = max_concurrency
        self._stats = Stats()
        self._lock = threading.Lock()
        self._fingerprints: dict[RequestOptions, Fingerprint] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._flushed = asdict(self._stats)

    @property
    def stats(self) -> Stats:
        """A snapshot of the counters."""
        with self._lock:
            return Stats(**asdict(self._stats))

    def close(self) -> None:
        """Record this session's counters in the cache's lifetime totals and stop the worker
        threads (the store and upstream belong to the caller)."""
        self._flush_counters()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def embed(self, texts: Sequence[str], options: RequestOptions) -> NDArray[np.float32]:
        """Return a ``(len(texts), d)`` float32 array, row ``i`` for ``texts[i]``.

        Distinct texts are looked up once; misses are sent in batches (a late-chunking list
        as one request), and each batch is committed as soon as it arrives, so an
        interrupted call keeps everything fetched so far.

        :raises InvalidInputError: before any request, for bad texts or limits.
        :raises CacheMissError: in offline mode, when anything is missing.
        """
        fp, keys, position = self._index(texts, options)
        if not keys:
            return np.empty((0, options.expected_dim or 0), dtype=np.float32)
        unique = list(position)
        found = self.store.read_many(unique, options.expected_dim)
        misses = self._misses(texts, unique, position, ~found.present, options)
        hits = found.present.copy()
        hits[[miss.slot for miss in misses]] = False
        with self._lock:
            self._stats.hits += int(hits.sum())
            self._stats.tokens_saved += float(found.tokens[hits].sum())
        rows = _Rows(found.vectors)
        if misses:
            self._fill(misses, len(unique), options, fp, rows)
        if len(unique) == len(keys):
            return rows.matrix
        slot = {key: i for i, key in enumerate(unique)}
        return rows.matrix[np.fromiter((slot[key] for key in keys), np.intp, len(keys))]

    def warm(
        self,
        texts: Sequence[str],
        options: RequestOptions,
        *,
        dry_run: bool = False,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> WarmReport:
        """Make sure every text is cached, without reading or returning vectors.

        :param dry_run: only hash and check presence; send nothing.
        :param on_batch: called with ``(texts, tokens)`` after each batch is committed.
        :returns: counts known before fetching (``tokens_spent`` is filled in after).
        :raises InvalidInputError: before any request, for bad texts or limits.
        :raises CacheMissError: in offline mode, when anything is missing.
        """
        fp, _, position = self._index(texts, options)
        unique = list(position)
        absent = ~np.array(self.store.contains_many(unique), dtype=bool)
        misses = self._misses(texts, unique, position, absent, options)
        report = WarmReport(
            texts=len(texts),
            unique=len(unique),
            cached=len(unique) - len(misses),
            to_fetch=len(misses),
            estimated_tokens=sum(estimate_tokens(miss.text) for miss in misses),
        )
        if dry_run or not misses:
            return report
        before = self.stats.tokens_spent
        self._fill(misses, len(unique), options, fp, None, on_batch)
        return replace(report, tokens_spent=self.stats.tokens_spent - before)

    def _index(
        self, texts: Sequence[str], options: RequestOptions
    ) -> tuple[Fingerprint, list[bytes], dict[bytes, int]]:
        """Validate, key every text, and map each distinct key to a position of its text."""
        check_texts(texts)
        fp = self._fingerprint(options)
        if options.late_chunking:
            if len(texts) > options.max_items:
                raise InvalidInputError(
                    f"a late-chunking group is sent as one request, and {options.model} takes "
                    f"at most {options.max_items} inputs; got {len(texts)}"
                )
            keys = group_keys(fp, texts)
        else:
            keys = text_keys(fp, texts)
        # For repeated texts this keeps the last position: the same text either way.
        position = dict(zip(keys, range(len(keys)), strict=True))
        return fp, keys, position

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

    def _fill(
        self,
        misses: list[Miss],
        distinct: int,
        options: RequestOptions,
        fp: Fingerprint,
        rows: _Rows | None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        if self.offline:
            raise CacheMissError(
                f"offline: {len(misses)} of {distinct} distinct texts are not cached",
                misses=len(misses),
            )
        if self.store.read_only:
            # Fetching would spend tokens on vectors that could not be kept.
            raise CacheError(
                f"{len(misses)} of {distinct} distinct texts are not cached, and the cache at "
                f"{self.store.directory} is read-only"
            )
        check_lengths(misses, options)
        with self._lock:
            self._stats.misses += len(misses)
        try:
            self._fetch(misses, options, fp, rows, on_batch)
        finally:
            self._flush_counters()

    def _flush_counters(self) -> None:
        with self._lock:
            now = asdict(self._stats)
            deltas = {name: round(now[name]) - round(self._flushed[name]) for name in now}
            self._flushed = now
        try:
            self.store.add_counters(deltas)
        except CacheError as exc:
            # Counters are bookkeeping: a read-only cache must still serve its hits.
            log.warning("could not record lifetime counters: %s", exc)

    def _fingerprint(self, options: RequestOptions) -> Fingerprint:
        fp = self._fingerprints.get(options)
        if fp is None:
            fp = self._fingerprints[options] = fingerprint(options)
        return fp

    def _fetch(
        self,
        misses: list[Miss],
        options: RequestOptions,
        fp: Fingerprint,
        rows: _Rows | None,
        on_batch: Callable[[int, int], None] | None,
    ) -> None:
        batches = self._still_missing(
            plan_batches(misses, options, self.batch_size, self.max_batch_tokens),
            options,
            rows,
            on_batch,
        )

        def commit(batch: list[Miss], result: UpstreamResult) -> None:
            self._commit(batch, result, options, fp, rows)
            if on_batch is not None:
                on_batch(len(batch), result.total_tokens)

        if self.max_concurrency == 1:
            for batch in batches:
                commit(batch, self._send(batch, options))
            return
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, "embedcache")
            pool = self._pool
        pending: dict[Future[UpstreamResult], list[Miss]] = {}
        error: BaseException | None = None

        def top_up() -> None:
            while len(pending) < self.max_concurrency:
                queued = next(batches, None)
                if queued is None:
                    return
                pending[pool.submit(self._send, queued, options)] = queued

        try:
            top_up()
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                finished = [(pending.pop(future), future) for future in done]
                if error is None and all(f.exception() is None for _, f in finished):
                    # Refill the freed slots before writing to disk, so the next requests
                    # are already in flight while this batch is committed.
                    top_up()
                for sent, future in finished:
                    try:
                        commit(sent, future.result())
                    except Exception as exc:
                        # Keep committing what is already paid for; raise the first failure.
                        error = error or exc
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        if error is not None:
            raise error

    def _still_missing(
        self,
        batches: Iterator[list[Miss]],
        options: RequestOptions,
        rows: _Rows | None,
        on_batch: Callable[[int, int], None] | None,
    ) -> Iterator[list[Miss]]:
        """Just before each batch is sent, drop what another process has committed since
        this call looked: concurrent prewarms of overlapping corpora then rarely pay twice."""
        for batch in batches:
            keys = [miss.key for miss in batch]
            if rows is None:
                usable = np.array(self.store.contains_many(keys), dtype=bool)
            else:
                found = self.store.read_many(keys, rows.dim or options.expected_dim)
                usable = found.present
            if options.late_chunking and not usable.all():
                usable[:] = False  # a group is all or nothing: never send part of one
            if usable.any():
                if rows is not None:
                    rows.put([m.slot for m, ok in zip(batch, usable, strict=True) if ok],
                             found.vectors[usable])  # fmt: skip
                done = int(usable.sum())
                batch = [m for m, ok in zip(batch, usable, strict=True) if not ok]
                with self._lock:
                    self._stats.misses -= done
                    self._stats.hits += done
                if on_batch is not None and done:
                    on_batch(done, 0)
            if batch:
                yield batch

    def _send(self, batch: list[Miss], options: RequestOptions) -> UpstreamResult:
        result = self.upstream.embed([miss.text for miss in batch], options)
        with self._lock:
            self._stats.requests += 1
            self._stats.tokens_spent += result.total_tokens
        return result

    def _commit(
        self,
        batch: list[Miss],
        result: UpstreamResult,
        options: RequestOptions,
        fp: Fingerprint,
        rows: _Rows | None,
    ) -> None:
        vectors = validated(result, len(batch), options, rows.dim if rows else None)
        lengths = np.array([len(miss.text) for miss in batch], dtype=np.float64)
        share = lengths / lengths.sum() if lengths.sum() else np.full(len(batch), 1 / len(batch))
        tokens = share * result.total_tokens
        self.store.put_many(
            fp, [(miss.key, vectors[i], float(tokens[i])) for i, miss in enumerate(batch)]
        )
        if rows is not None:
            rows.put([miss.slot for miss in batch], vectors)
