"""Rerank scores, cached: look up every (query, document), send only what is missing, commit
each answer as it arrives.

Beside :class:`~embedcache.embedding.embedder.CachedEmbedder`, over the same tiers, claims
and lifetime counters; built by :func:`embedcache.assembly.build_reranker`.

* A pointwise model's score of a pair does not depend on the other documents, so each
  (query, document) is an entry of its own (:mod:`embedcache.rerank_keys`): a candidate
  list overlapping a cached one sends only its new documents, at most ``batch_size`` per
  request.
* A listwise model (jina-reranker-v3, or any model not known to be pointwise) scores the
  whole ordered list at once: its entries are per position of that list, all or none, and
  a miss sends the whole list (the same trap as late chunking).

A score is stored as the 8 bytes of the float64 the upstream wrote (a *bytes* payload,
:mod:`embedcache.storage.payloads`), so it comes back exactly; its tokens are its share of
the call's usage, by the estimated tokens of the query and the document.

Concurrent calls missing the same entries send one request for them, threads and
processes alike, through the same :class:`~embedcache.embedding.coalescing.Inflight` and
:class:`~embedcache.embedding.coalescing.FetchClaims` as embeddings (they are key-generic:
a claimed chunk here is one request's documents, a listwise list is claimed whole).
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from ..cache_keys import Fingerprint, KeyFingerprints
from ..config import DEFAULT_RERANK_BATCH_SIZE, DEFAULT_UPSTREAM_ID
from ..errors import CacheMissError, InvalidInputError, ResponseFormatError
from ..inputs import Media, estimate_input
from ..models import RERANK_IMAGE_MODELS, check_rerank_model, is_listwise
from ..rerank_keys import rerank_fingerprint, rerank_keys, stored_under
from ..storage.tiers import Tiers
from ..upstream.protocol import RerankInput, Reranks, UpstreamScores
from .batches import Miss
from .coalescing import FetchClaims, Inflight
from .counters import Autoflush, Recorder, Stats
from .fetching import refuse_unfetchable

__all__ = ["Reranked", "Reranker", "is_listwise", "ranked"]

#: A score as stored: the float64's 8 bytes, little-endian, as a uint8 payload.
_SCORE = np.dtype("<f8")


@dataclass(frozen=True)
class Reranked:
    """What :meth:`Reranker.rerank` returns.

    :ivar scores: one per document, in document order, exactly as the upstream wrote them.
    :ivar stats: this call's counters (``tokens_spent`` is what its requests were charged).
    :ivar tokens: the tokens recorded for each document's entry (its share of the request
        that fetched it: what a later hit on it saves).
    :ivar keys: each document's entry key, in document order (:meth:`Reranker.keys`).
    """

    scores: list[float]
    stats: Stats
    tokens: list[float]
    keys: list[bytes] = field(default_factory=list)


def ranked(scores: Sequence[float], top_n: int | None = None) -> list[int]:
    """Document indices by score, highest first, ties by index, cut to ``top_n`` (``None``:
    all), as the API orders its ``results``.

    >>> ranked([0.2, 0.9, 0.2], top_n=2)
    [1, 0]
    """
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return order if top_n is None else order[: max(top_n, 0)]


def check_rerank(model: str, query: object, documents: object) -> list[RerankInput]:
    """Refuse, before any request, what no reranker takes: an empty query, no documents, an
    item that is no text (or an image on a model other than jina-reranker-m0, or a PDF),
    a model that is no reranker. Returns the documents as a list.

    :raises InvalidInputError: one line naming the field (``query``, ``documents[i]``).
    """
    check_rerank_model(model)
    _check_item(query, "query", model)
    if isinstance(documents, (str, bytes)) or not isinstance(documents, (list, tuple)):
        raise InvalidInputError(f"documents must be a list of str, got {type(documents).__name__}")
    if not documents:
        raise InvalidInputError("documents is empty: there is nothing to rerank")
    for index, document in enumerate(documents):
        _check_item(document, f"documents[{index}]", model)
    return list(documents)


def _check_item(item: object, where: str, model: str) -> None:
    if isinstance(item, Media):
        if item.kind != "image":
            raise InvalidInputError(f"{where} is {item.noun}: rerankers take texts and images")
        if model not in RERANK_IMAGE_MODELS:
            only = ", ".join(sorted(RERANK_IMAGE_MODELS))
            raise InvalidInputError(f"{where} is an image, and only {only} reranks images")
    elif not isinstance(item, str):
        raise InvalidInputError(f"{where} must be a str, got {type(item).__name__}: {item!r:.60}")
    elif not item:
        raise InvalidInputError(f"{where} is an empty text")


class Reranker:
    """Serve rerank scores from the cache, fetching the missing ones from ``upstream``.

    Safe to share between threads. Build one with :func:`embedcache.assembly.build_reranker`.

    :param tiers: where scores are looked up and written: local disk, then a shared tier.
    :param recorder: this reranker's counters and how they reach the cache's lifetime
        counters (the same ones as embeddings'), flushed after each fetch and on close.
    :param upstream: scores one request per call; only missing scores reach it. ``None``:
        every call must pass its own (or find everything cached).
    :param inflight: coalesces concurrent fetches of the same entries; ``None``: no claims.
    :param offline: raise :class:`~embedcache.errors.CacheMissError` instead of fetching.
    :param batch_size: most documents per request of a pointwise model (a listwise list is
        sent whole).
    :param upstream_id: the upstream whose answers these are, part of every key.
    :param autoflush: also records the counters now and then and at exit while open.
    :raises InvalidInputError: ``batch_size`` below 1.
    """

    def __init__(
        self,
        tiers: Tiers,
        recorder: Recorder,
        upstream: Reranks | None,
        *,
        inflight: Inflight | None = None,
        offline: bool = False,
        batch_size: int = DEFAULT_RERANK_BATCH_SIZE,
        upstream_id: str = DEFAULT_UPSTREAM_ID,
        autoflush: Autoflush | None = None,
    ) -> None:
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
        self.upstream = upstream
        self.upstream_id = upstream_id
        self.offline = offline
        self.batch_size = batch_size
        self._tiers = tiers
        self._recorder = recorder
        self._counters = recorder.counters
        self._inflight = inflight
        self._fingerprints: dict[str, Fingerprint] = {}
        self._autoflush = autoflush
        if autoflush is not None:
            autoflush.add(recorder)
            self._finalizer = weakref.finalize(self, autoflush.orphan, recorder)
            self._finalizer.atexit = False

    @property
    def waiting(self) -> int:
        """Calls blocked right now on another call's fetch of the same scores."""
        return self._inflight.waiting if self._inflight is not None else 0

    @property
    def stats(self) -> Stats:
        """A snapshot of this reranker's counters since it was built."""
        return self._counters.snapshot()

    def close(self) -> None:
        """Record the counters in the cache's lifetime totals and finish copying what the
        shared tier served (the store and upstream belong to the caller)."""
        if self._autoflush is not None:
            self._finalizer.detach()
            self._autoflush.discard(self._recorder)
        self._recorder.flush()
        self._tiers.close()

    def count_hits(self, entries: int, tokens_saved: float) -> None:
        """Count hits a caller answered from its own copy of scores this reranker returned
        (the proxy's kept answers), so the counters cover every hit."""
        self._counters.add_hits(entries, tokens_saved)

    def fingerprint(self, model: str) -> Fingerprint:
        """The fingerprint ``model``'s scores are cached under."""
        fp = self._fingerprints.get(model)
        if fp is None:
            fp = self._fingerprints[model] = rerank_fingerprint(model, self.upstream_id)
        return fp

    def keys(self, query: RerankInput, documents: Sequence[RerankInput], model: str) -> list[bytes]:
        """The key of each document's score entry, in order (see :mod:`embedcache.rerank_keys`).

        :raises InvalidInputError: as :meth:`rerank`.
        """
        checked = check_rerank(model, query, documents)
        return rerank_keys(self.fingerprint(model), model, query, checked)

    def absent(self, query: RerankInput, documents: Sequence[RerankInput], model: str) -> list[int]:
        """The positions of the documents whose scores are not on local disk (a listwise
        model's: all of them unless the whole list is): what a call would send, unless the
        shared tier or another caller has them by then.

        :raises InvalidInputError: as :meth:`rerank`.
        """
        present = self._tiers.store.contains_many(self.keys(query, documents, model))
        if is_listwise(model) and not all(present):
            return list(range(len(documents)))
        return [i for i, here in enumerate(present) if not here]

    def rerank(
        self,
        query: RerankInput,
        documents: Sequence[RerankInput],
        model: str,
        *,
        upstream: Reranks | None = None,
        cached_only: bool = False,
        stop: threading.Event | None = None,
    ) -> Reranked | None:
        """Every document's score for ``query``, in document order.

        :param upstream: send this call's misses here instead of to the reranker's own.
        :param cached_only: return ``None``, counting and fetching nothing, unless every
            score is on local disk (the shared tier is not asked).
        :param stop: once set, send no new request: the one in flight is committed, then
            ``concurrent.futures.CancelledError`` is raised.
        :raises InvalidInputError: before any request (see :func:`check_rerank`).
        :raises CacheMissError: offline, when any score is missing.
        :raises ResponseFormatError: a malformed answer; nothing of it is cached.
        """
        keys = self.keys(query, documents, model)
        fp = stored_under(self.fingerprint(model), query, documents, keys, is_listwise(model))
        position = dict(zip(keys, range(len(keys)), strict=True))  # repeated pairs once
        unique = list(position)
        found = self._tiers.read_payloads(fp, unique, shared=not cached_only)
        scores: list[float | None] = [_score(payload) for payload in found.payloads]
        tokens = found.tokens.astype(np.float64)
        present = np.array([score is not None for score in scores], dtype=bool)
        listwise = is_listwise(model)
        if listwise and not present.all():
            present[:] = False  # a list is all or nothing: its scores only make sense together
        if cached_only and not present.all():
            return None
        stats = Stats()
        saved = float(tokens[present].sum())
        self._counters.add(stats, hits=int(present.sum()), tokens_saved=saved)
        if not present.all():
            misses = [
                Miss(key, documents[position[key]], position[key], slot)
                for slot, key in enumerate(unique)
                if not present[slot]
            ]
            call = _Call(fp, query, model, upstream or self.upstream, scores, tokens, stats, stop)
            try:
                self._fill(misses, call, listwise)
            finally:
                self._recorder.flush()
        by_key = {key: slot for slot, key in enumerate(unique)}
        order = [by_key[key] for key in keys]
        final = [scores[slot] for slot in order]
        assert all(score is not None for score in final)
        return Reranked(
            [float(score) for score in final if score is not None],
            stats,
            [float(tokens[slot]) for slot in order],
            keys,
        )

    # Fetching

    def _fill(self, misses: list[Miss], call: _Call, listwise: bool) -> None:
        asked = f"{len(call.scores)} rerank scores"
        refuse_unfetchable(self.offline, self._tiers, len(misses), asked)
        if call.upstream is None:
            raise CacheMissError(
                f"{len(misses)} rerank scores are not cached and there is no upstream to ask",
                misses=len(misses),
            )
        while misses:
            claims = self._inflight.fetch(whole=listwise) if self._inflight is not None else None
            try:
                self._fetch(misses, call, claims, listwise)
            finally:
                if claims is not None:
                    claims.release()  # a failed request must not hold up waiters
            if claims is None or not claims.left_to_others:
                return
            if call.stopped:
                raise CancelledError("the call was cancelled; answers received were committed")
            misses = self._take_stored(claims.wait_for_others(), call, "coalesced", listwise)

    def _fetch(
        self, misses: list[Miss], call: _Call, claims: FetchClaims | None, listwise: bool
    ) -> None:
        def unstored(owned: list[Miss]) -> list[Miss]:
            return self._take_stored(owned, call, "hits", listwise)

        for chunk in _chunks(misses, len(misses) if listwise else self.batch_size):
            if call.stopped:
                raise CancelledError("the call was cancelled; answers received were committed")
            sending = unstored(chunk) if claims is None else claims.take(chunk, unstored)
            if not sending:
                continue
            try:
                assert call.upstream is not None
                # Listwise: the whole list in its order (claimed and taken only whole).
                result = call.upstream.rerank(call.query, [m.text for m in sending], call.model)
                self._counters.add(
                    call.stats,
                    requests=1,
                    tokens_spent=result.total_tokens,
                    misses=len(sending),
                )
                self._commit(sending, result, call)
            finally:
                if claims is not None:
                    claims.sent(sending)

    def _commit(self, batch: list[Miss], result: UpstreamScores, call: _Call) -> None:
        """Check an answer and write it through the tiers before the next request."""
        scores = result.scores
        if len(scores) != len(batch) or not all(
            isinstance(s, float) and math.isfinite(s) for s in scores
        ):
            raise ResponseFormatError(
                f"sent {len(batch)} documents but the answer has {len(scores)} finite scores"
            )
        asked = estimate_input(call.query)  # the same query in every pair: estimated once
        weights = np.array([asked + estimate_input(miss.text) for miss in batch], np.float64)
        shares = weights / weights.sum() * result.total_tokens
        payloads = [np.frombuffer(_SCORE.type(s).tobytes(), np.uint8).copy() for s in scores]
        self._tiers.put_payloads(call.fp, [m.key for m in batch], payloads, shares.tolist())
        for miss, score, share in zip(batch, scores, shares.tolist(), strict=True):
            call.scores[miss.slot] = score
            call.tokens[miss.slot] = share

    def _take_stored(
        self,
        misses: list[Miss],
        call: _Call,
        counted_as: Literal["hits", "coalesced"],
        listwise: bool,
    ) -> list[Miss]:
        """Take what has been stored of ``misses`` since the call looked (by another call or
        process) and return the rest; a listwise list is taken only whole."""
        if not misses:
            return misses
        found = self._tiers.read_payloads(call.fp, [miss.key for miss in misses])
        scores = [_score(payload) for payload in found.payloads]
        usable = [score is not None for score in scores]
        if listwise and not all(usable):
            return misses
        left = []
        done = 0
        for miss, score, tokens in zip(misses, scores, found.tokens.tolist(), strict=True):
            if score is None:
                left.append(miss)
                continue
            call.scores[miss.slot] = score
            call.tokens[miss.slot] = tokens
            done += 1
        if done:
            saved = float(found.tokens[np.array(usable)].sum())
            if counted_as == "hits":
                self._counters.add(call.stats, hits=done, tokens_saved=saved)
            else:
                self._counters.add(call.stats, coalesced=done)
        return left


@dataclass
class _Call:
    """One rerank call's state, handed down its fetch."""

    #: what each score's entry is stored under (an image's: its own, rerank_keys.stored_under)
    fp: KeyFingerprints
    query: RerankInput
    model: str
    upstream: Reranks | None
    scores: list[float | None]  # per distinct entry
    tokens: NDArray[np.float64]
    stats: Stats
    stop: threading.Event | None

    @property
    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()


def _chunks(misses: list[Miss], size: int) -> Iterator[list[Miss]]:
    for start in range(0, len(misses), size):
        yield misses[start : start + size]


def _score(payload: NDArray[np.generic] | None) -> float | None:
    """A stored score, or ``None`` when absent or not a score's 8 bytes."""
    if payload is None or payload.dtype != np.uint8 or payload.shape != (_SCORE.itemsize,):
        return None
    return float(payload.view(_SCORE)[0])
