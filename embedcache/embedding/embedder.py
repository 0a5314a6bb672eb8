"""The caching core: look up every text, send only the misses, commit each batch on arrival.

It knows nothing of HTTP or bytes on disk: it reads and writes through
:class:`~embedcache.storage.tiers.Tiers` and sends through an
:class:`~embedcache.upstream.protocol.Upstream`, so the library, the CLI and the proxy share
it, and tests drive it with faulty upstreams. This module keys texts, looks them up and
answers; fetching the misses is the :class:`~embedcache.embedding.fetching.Fetcher`'s job,
counting the :class:`~embedcache.embedding.counters.Counters`'. Its parts are built and
handed in by the composition root (:mod:`embedcache.assembly`).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from ..cache_keys import (
    Fingerprint,
    KeyFingerprints,
    call_fingerprints,
    fingerprint,
    group_keys,
    text_keys,
)
from ..config import DEFAULT_UPSTREAM_ID
from ..errors import InvalidInputError
from ..inputs import Input, Media, estimate_input
from ..models import RequestOptions
from ..storage.tiers import Tiers
from ..upstream.protocol import Upstream
from .batches import Miss
from .counters import Autoflush, Recorder, Stats
from .distinct import DistinctKeys
from .fetching import Call, Fetcher, PayloadRows, Rows

__all__ = [
    "CachedEmbedder",
    "Embedded",
    "EmbeddedPayloads",
    "Stats",
    "WarmReport",
    "check_texts",
]


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


@dataclass(frozen=True)
class EmbeddedPayloads:
    """What :meth:`CachedEmbedder.embed_payloads` returns: :class:`Embedded` with one array
    per text instead of one matrix (an input's rows vary in number)."""

    #: Entry ``i`` for ``texts[i]``: a ``(rows, width)`` float32 array (multi-vector), a
    #: 1-D int8/uint8 array (``binary``/``ubinary``), or a 2-D one (both).
    payloads: list[NDArray[Any]]
    stats: Stats
    tokens: NDArray[np.float64]
    keys: list[bytes]


def check_texts(texts: object, options: RequestOptions | None = None) -> Sequence[Input]:
    """Return ``texts`` if it is a list or tuple of ``str`` (or of images and PDFs,
    :class:`~embedcache.inputs.Media`, that ``options``' model takes).

    :raises InvalidInputError: naming the first offending item and its type.
    """
    if isinstance(texts, (str, bytes)) or not isinstance(texts, (list, tuple)):
        raise InvalidInputError(f"texts must be a list of str, got {type(texts).__name__}")
    kinds = set(map(type, texts))
    if kinds <= {str}:
        return texts  # the common case, checked at C speed
    for index, text in enumerate(texts):
        if isinstance(text, Media):
            if options is not None:
                options.check_media(text, f"texts[{index}]")
        elif not isinstance(text, str):
            raise InvalidInputError(
                f"texts[{index}] must be a str, got {type(text).__name__}: {text!r:.60}"
            )
    return texts


class CachedEmbedder:
    """Serve embeddings from the cache, fetching misses from ``upstream``.

    Safe to share between threads: concurrent calls that miss the same entries send one
    request for them, whether they are threads of this process or other processes using the
    same cache directory (see :mod:`embedcache.embedding.coalescing`), unless the fetcher
    was built without coalescing.

    Build one with :func:`embedcache.assembly.build_embedder` (or get one from an
    :class:`~embedcache.assembly.Assembly`), which makes the parts below.

    :param tiers: where vectors are looked up: local disk, then a shared tier, if any.
    :param fetcher: fetches and stores the misses; :meth:`close` closes it.
    :param recorder: the counters of every call, and how they reach the cache's lifetime
        counters (after each fill, on close, and through ``autoflush``).
    :param upstream: embeds one batch per call; only misses reach it. A call may pass its
        own (the proxy forwards each client's credentials).
    :param autoflush: also records the counters now and then and at exit, while this
        embedder is open (and once more if it is collected unclosed); ``None``: only after
        each fill and on close.
    :param upstream_id: the upstream ``upstream``'s answers are cached as, part of every key
        (:func:`~embedcache.config.resolve_upstream_id`; default: Jina's API).
    """

    def __init__(
        self,
        tiers: Tiers,
        fetcher: Fetcher,
        recorder: Recorder,
        upstream: Upstream,
        *,
        autoflush: Autoflush | None = None,
        upstream_id: str = DEFAULT_UPSTREAM_ID,
    ) -> None:
        self.upstream = upstream
        self.upstream_id = upstream_id
        self._tiers = tiers
        self._fetcher = fetcher
        self._recorder = recorder
        self._counters = recorder.counters
        self._fingerprints: dict[RequestOptions, Fingerprint] = {}
        self._autoflush = autoflush
        if autoflush is not None:
            # The recorder holds the store, not the embedder, which can still be collected
            # unclosed (the autoflush thread then gives it its last flush).
            autoflush.add(recorder)
            self._finalizer = weakref.finalize(self, autoflush.orphan, recorder)
            self._finalizer.atexit = False  # the autoflush's own exit flush covers it

    @property
    def offline(self) -> bool:
        """Whether a miss raises :class:`~embedcache.errors.CacheMissError` instead of
        being fetched."""
        return self._fetcher.offline

    @property
    def waiting(self) -> int:
        """Calls blocked right now on another call's fetch of the same entries."""
        return self._fetcher.waiting

    @property
    def stats(self) -> Stats:
        """A snapshot of the counters."""
        return self._counters.snapshot()

    def close(self) -> None:
        """Record this session's counters in the cache's lifetime totals and stop the worker
        threads (the store and upstream belong to the caller). Not needed for the counters:
        they are also recorded now and then, and at exit."""
        if self._autoflush is not None:
            self._finalizer.detach()
            self._autoflush.discard(self._recorder)
        self.flush_counters()
        self._fetcher.close()
        self._tiers.close()  # copies of shared hits to local disk still queued

    def embed(self, texts: Sequence[Input], options: RequestOptions) -> NDArray[np.float32]:
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
        texts: Sequence[Input],
        options: RequestOptions,
        *,
        upstream: Upstream | None = None,
        cached_only: bool = False,
        stop: threading.Event | None = None,
    ) -> Embedded | None:
        """:meth:`embed`, also returning what this call found and spent.

        :param upstream: send this call's misses here instead of to the embedder's upstream.
        :param cached_only: return ``None``, without counting or fetching anything, unless
            every text is on local disk (a cheap first try for callers that
            must not block: the shared tier is not asked).
        :param stop: once set (by another thread), send no new batch: the ones in flight
            are committed, then ``concurrent.futures.CancelledError`` is raised.
        """
        if not options.plain:
            # The library and the proxy ask embed_payloads; a caller that wants one float
            # vector per input (`embedcache get`, TEI) says so in the user's terms.
            kind = "a multi-vector" if options.multivector else f"{options.embedding_type} bits"
            raise InvalidInputError(
                f"{options.model} with these options answers each input with {kind}, "
                "not one float vector: this call returns float vectors only"
            )
        fp, keys, position = self._index(texts, options)
        if not keys:
            empty = np.empty((0, options.expected_dim or 0), np.float32)
            return Embedded(empty, Stats(), np.empty(0, np.float64), [])
        unique = list(position)
        found = self._tiers.read(fp, unique, options.expected_dim, shared=not cached_only)
        rows = Rows(found.vectors, found.tokens)
        call = Call(options, fp, upstream or self.upstream, rows, stop=stop)
        if not self._serve(texts, unique, position, found.present, call, cached_only):
            return None
        matrix, tokens = rows.matrix, rows.tokens
        if len(unique) != len(keys):
            order = _order(unique, keys)
            matrix, tokens = matrix[order], tokens[order]
        return Embedded(matrix, call.stats, tokens, keys)

    def embed_payloads(
        self,
        texts: Sequence[Input],
        options: RequestOptions,
        *,
        upstream: Upstream | None = None,
        cached_only: bool = False,
        stop: threading.Event | None = None,
    ) -> EmbeddedPayloads | None:
        """:meth:`embed_detailed` for every output kind: one array per text (see
        :class:`EmbeddedPayloads`), in order; the same lookups, coalescing, batching and
        commits, each entry stored exactly as the API answered it (its own key: the output
        kind, ``input_type`` and ``dimensions`` are in the fingerprint). Plain float
        options give each vector as a 1-D array.

        :raises ResponseFormatError: an answer of another shape, dtype or row width than
            asked for; nothing of its batch is cached.
        """
        if options.plain:
            detailed = self.embed_detailed(
                texts, options, upstream=upstream, cached_only=cached_only, stop=stop
            )
            if detailed is None:
                return None
            return EmbeddedPayloads(
                list(detailed.vectors), detailed.stats, detailed.tokens, detailed.keys
            )
        fp, keys, position = self._index(texts, options)
        unique = list(position)
        found = self._tiers.read_payloads(fp, unique, shared=not cached_only)
        rows = PayloadRows(found.payloads, found.tokens)
        call = Call(options, fp, upstream or self.upstream, rows, stop=stop)
        if unique and not self._serve(texts, unique, position, found.present, call, cached_only):
            return None
        slots = _order(unique, keys) if len(unique) != len(keys) else range(len(keys))
        payloads = [rows.payloads[i] for i in slots]
        assert all(payload is not None for payload in payloads)
        tokens = rows.tokens[np.asarray(slots, np.intp)] if len(keys) else rows.tokens
        return EmbeddedPayloads(cast("list[NDArray[Any]]", payloads), call.stats, tokens, keys)

    def _serve(
        self,
        texts: Sequence[Input],
        unique: list[bytes],
        position: dict[bytes, int],
        present: NDArray[np.bool_],
        call: Call,
        cached_only: bool,
    ) -> bool:
        """Count the hits and fill the misses of a call whose lookup found ``present``;
        ``False`` (nothing counted nor fetched) when ``cached_only`` and anything is
        missing."""
        assert call.rows is not None
        found_tokens = call.rows.tokens
        if present.all():  # the common case, kept short: nothing to fetch
            self._count(call, hits=len(unique), tokens_saved=float(found_tokens.sum()))
            return True
        if cached_only:
            return False
        misses = self._misses(texts, unique, position, ~present, call.options)
        hits = present.copy()
        hits[[miss.slot for miss in misses]] = False
        self._count(call, hits=int(hits.sum()), tokens_saved=float(found_tokens[hits].sum()))
        self._fill(misses, len(unique), call)
        return True

    def warm(
        self,
        texts: Sequence[Input],
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
        if options.plain:
            absent = ~self._tiers.contains(fp, unique, options.expected_dim)
        else:
            absent = ~self._tiers.contains_payloads(fp, unique)
        misses = self._misses(texts, unique, position, absent, options)
        report = WarmReport(
            texts=len(texts),
            unique=len(unique),
            cached=len(unique) - len(misses),
            to_fetch=len(misses),
            estimated_tokens=sum(estimate_input(miss.text) for miss in misses),
            estimated_requests=self._fetcher.planned_requests(misses, options) if dry_run else 0,
        )
        if dry_run or not misses:
            return report
        call = Call(options, fp, self.upstream, None, on_batch, on_found=on_found)
        self._fill(misses, len(unique), call)
        return replace(report, tokens_spent=call.stats.tokens_spent)

    def count_hits(self, entries: int, tokens_saved: float) -> None:
        """Count hits a caller answered from its own copy of what this embedder returned
        (the proxy's rendered answers), so the counters cover every hit."""
        self._counters.add_hits(entries, tokens_saved)

    def flush_counters(self) -> None:
        """Add what was counted since the last flush to the cache's lifetime counters.
        Done after every fill, on close, every
        :data:`~embedcache.config.COUNTER_FLUSH_SECONDS` when something was counted, and
        at exit. Never raises: a failure is logged, and its counts are tried again next
        time (counters are bookkeeping, and a read-only cache must still serve its hits)."""
        self._recorder.flush()

    def keys(self, texts: Sequence[Input], options: RequestOptions) -> list[bytes]:
        """The cache key of each text's entry, in order (under late chunking, of each
        position of the group), as every read and write of this embedder uses them.

        :raises InvalidInputError: for bad texts, or a late-chunking group larger than one
            request takes.
        """
        check_texts(texts, options)
        fp = self._fingerprint(options)
        if not options.late_chunking:
            return text_keys(fp, texts)
        if len(texts) > options.max_items:
            raise InvalidInputError(
                f"a late-chunking group is sent as one request, and {options.model} takes "
                f"at most {options.max_items} inputs; got {len(texts)}"
            )
        # check_texts refused any image or PDF: late chunking takes texts only.
        return group_keys(fp, cast("Sequence[str]", texts))

    def _index(
        self, texts: Sequence[Input], options: RequestOptions
    ) -> tuple[KeyFingerprints, list[bytes], dict[bytes, int]]:
        """Validate, key every text, map each distinct key to a position of its text, and
        say what each entry is stored under."""
        keys = self.keys(texts, options)
        # For repeated texts this keeps the last position: the same text either way.
        position = dict(zip(keys, range(len(keys)), strict=True))
        return call_fingerprints(self._fingerprint(options), texts, keys), keys, position

    def _fingerprint(self, options: RequestOptions) -> Fingerprint:
        fp = self._fingerprints.get(options)
        if fp is None:
            fp = self._fingerprints[options] = fingerprint(options, self.upstream_id)
        return fp

    @staticmethod
    def _misses(
        texts: Sequence[Input],
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

    def _count(self, call: Call, **deltas: float) -> None:
        self._counters.add(call.stats, **deltas)

    def _fill(self, misses: list[Miss], distinct: int, call: Call) -> None:
        try:
            self._fetcher.fill(misses, distinct, call)
        finally:
            self.flush_counters()


def _order(unique: list[bytes], keys: list[bytes]) -> NDArray[np.intp]:
    """The position among ``unique`` of each of ``keys`` (a call's repeated texts)."""
    slot = {key: i for i, key in enumerate(unique)}
    return np.fromiter((slot[key] for key in keys), np.intp, len(keys))
