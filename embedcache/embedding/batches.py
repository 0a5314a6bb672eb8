"""Packing a call's misses into requests, and judging what comes back.

Kept apart from the orchestration in :mod:`embedcache.embedding.embedder` so each can be
read, and tested, on its own: what the packer is given to claim and look up is a plain
function of a chunk of misses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError, ResponseFormatError
from ..inputs import Input, estimate_input
from ..models import RequestOptions
from ..tokens import estimate_tokens
from ..upstream.protocol import UpstreamResult

__all__ = [
    "Miss",
    "Packer",
    "Take",
    "check_lengths",
    "plan_batches",
    "validated",
    "validated_payloads",
]


@dataclass(frozen=True)
class Miss:
    """A distinct text that has to be fetched."""

    key: bytes
    text: Input  # a text, or an image or PDF
    index: int  # a position of this text in the caller's list, for error messages
    slot: int  # row in the matrix of distinct texts


def check_lengths(misses: list[Miss], options: RequestOptions) -> None:
    """Refuse, before any request, a text the model's per-input limit cannot take.

    :raises InvalidInputError: naming the text's position and its estimated length.
    """
    for miss in misses:
        if type(miss.text) is str and (tokens := options.too_long(miss.text)) is not None:
            raise InvalidInputError(
                f"texts[{miss.index}] is about {tokens} tokens, over the {options.input_limit}"
                f"-token limit of {options.model}; shorten it or pass truncate=True"
            )


def plan_batches(
    misses: list[Miss], options: RequestOptions, batch_size: int | None, max_tokens: int
) -> Iterator[list[Miss]]:
    """Split misses into requests of at most ``batch_size`` texts (capped by the model's
    limit) and ``max_tokens`` estimated tokens; a late-chunking group is one request.

    The split :class:`Packer` makes when every miss it takes is still to be fetched (what a
    dry run estimates)."""
    return Packer(misses, options, batch_size, max_tokens).batches(lambda chunk: chunk)


#: Takes a chunk of misses, in queue order, and returns those this request may send, in
#: the same order (the others are being fetched elsewhere or were stored meanwhile).
Take = Callable[[list[Miss]], list[Miss]]


class Packer:
    """Fills each request, as it is drawn, from the misses still queued.

    :meth:`batches` asks ``take`` for a chunk of the queue at a time and packs what it
    returns in order; a request is closed when the next text would go over ``batch_size``
    texts (capped by the model's limit) or ``max_tokens`` estimated tokens, or the queue is
    empty. So the requests are the ones :func:`plan_batches` would make of everything
    ``take`` returned: full, whatever it set aside. A late-chunking group is taken whole,
    as one request.

    A chunk is sized for the room left in the request, scaled up by the share of texts
    ``take`` has been returning (so a request among many entries fetched elsewhere fills in
    a few calls, not one per text); what it returns beyond the room opens the next request.
    """

    #: Fewest texts asked of ``take`` at once (unless fewer are queued).
    MIN_CHUNK = 8
    #: Most a chunk is scaled up by a low share: it bounds what is taken ahead of sending.
    MAX_SCALE = 4

    def __init__(
        self, misses: list[Miss], options: RequestOptions, batch_size: int | None,
        max_tokens: int,
    ) -> None:  # fmt: skip
        self.whole = options.late_chunking
        self.size = min(batch_size or options.max_items, options.max_items)
        self.max_tokens = max_tokens
        self._queue = misses
        self._next = 0  # the queue's first miss not yet handed to take
        # Taken, not yet in a request, with their estimated tokens; from self._first on.
        self._ready: list[Miss] = []
        self._costs: list[int] = []
        self._first = 0
        self._asked = 0
        self._given = 0

    @property
    def queued(self) -> int:
        """Misses not yet handed to ``take``."""
        return len(self._queue) - self._next

    def batches(self, take: Take) -> Iterator[list[Miss]]:
        """Yield full requests of what ``take`` returns until the queue is empty; drawn
        lazily, so each chunk is taken just before its request is sent."""
        if self.whole:
            group = take(self._queue[self._next :]) if self.queued else []
            self._next = len(self._queue)
            if group:
                yield group
            return
        while True:
            batch = self._pack(take)
            if not batch:
                return
            yield batch

    def _pack(self, take: Take) -> list[Miss]:
        batch: list[Miss] = []
        tokens = 0
        while True:
            # What was taken goes in first, in order, as long as it fits.
            first, end, costs = self._first, len(self._ready), self._costs
            stop = first
            while stop < end:
                cost = costs[stop]
                if (batch or stop > first) and (
                    len(batch) + stop - first == self.size or tokens + cost > self.max_tokens
                ):
                    break
                tokens += cost
                stop += 1
            batch += self._ready[first:stop]
            self._first = stop
            if stop < end:
                return batch
            self._ready.clear()
            self._costs.clear()
            self._first = 0
            chunk, chunk_costs = self._chunk(len(batch), tokens)
            if not chunk:
                return batch  # the queue is empty, or its next text would not fit
            taken = take(chunk)
            self._asked += len(chunk)
            self._given += len(taken)
            if len(taken) == len(chunk):
                self._ready, self._costs = list(taken), chunk_costs
            else:  # an ordered part of the chunk: find each one's cost
                position = iter(range(len(chunk)))
                for miss in taken:
                    i = next(j for j in position if chunk[j] is miss)
                    self._ready.append(miss)
                    self._costs.append(chunk_costs[i])

    def _cost(self, miss: Miss) -> int:
        """A miss's estimated tokens; a PDF's over the budget, so it goes alone (the API
        takes one PDF per request, and nothing beside it)."""
        item = miss.text
        if isinstance(item, str):
            return estimate_tokens(item)
        return self.max_tokens + 1 if item.kind == "pdf" else estimate_input(item)

    def _chunk(self, count: int, tokens: int) -> tuple[list[Miss], list[int]]:
        """The next queued misses to take, with their estimated tokens: those that fit the
        room left, then more in proportion to the share ``take`` has been setting aside;
        the next one alone when it looks over the budget (``take`` may set it aside);
        none when the request is full or the queue is empty."""
        queue, start = self._queue, self._next
        costs: list[int] = []
        stop, end = start, min(len(queue), start + self.size - count)
        while stop < end:
            cost = self._cost(queue[stop])
            if (count or stop > start) and tokens + cost > self.max_tokens:
                break
            costs.append(cost)
            tokens += cost
            stop += 1
        fit = stop - start
        if not fit:
            if count >= self.size or start >= len(queue):
                return [], []  # the request is full, or nothing is left
            # The next text would go over the budget, but ``take`` may set it aside and
            # leave room for the ones after it: it is asked about, and if it is kept it
            # opens the next request.
            self._next = start + 1
            return queue[start : start + 1], [self._cost(queue[start])]
        share = max(self._given / self._asked, 1 / self.MAX_SCALE) if self._asked else 1.0
        want = max(math.ceil(fit / share), min(self.MIN_CHUNK, self.size))
        stop = min(len(queue), start + max(fit, want))
        costs += [self._cost(miss) for miss in queue[start + fit : stop]]
        self._next = stop
        return queue[start:stop], costs


def validated(
    result: UpstreamResult, count: int, options: RequestOptions, known_dim: int | None
) -> NDArray[np.float32]:
    """The vectors of a batch's result, if they can be trusted: one per text, of the
    expected dimension, all finite.

    :raises ResponseFormatError: otherwise; nothing of the batch may then be cached.
    """
    vectors = result.vectors
    where = f" (request id {result.request_id})" if result.request_id else ""
    if vectors.ndim != 2 or vectors.shape[0] != count:
        raise ResponseFormatError(
            f"sent {count} texts but received {vectors.shape[0]} embeddings{where}"
        )
    expected = options.expected_dim or known_dim
    if expected is not None and vectors.shape[1] != expected:
        raise ResponseFormatError(
            f"received {vectors.shape[1]}-dimensional embeddings, expected {expected}{where}"
        )
    if vectors.shape[1] == 0:
        raise ResponseFormatError(f"received empty embeddings{where}")
    if not np.isfinite(vectors).all():
        raise ResponseFormatError(f"received NaN or infinite values{where}")
    return vectors.astype(np.float32, copy=False)


def validated_payloads(
    result: UpstreamResult, count: int, options: RequestOptions
) -> list[NDArray[Any]]:
    """The payloads of a batch's result (options that are not
    :attr:`~embedcache.models.RequestOptions.plain`), if they can be trusted: one per
    text, of the output kind asked for (rows of float32 for a multi-vector answer, int8 or
    uint8 packed bits), every row of the expected width (``dimensions / 8`` values for
    packed bits), floats all finite.

    :raises ResponseFormatError: otherwise; nothing of the batch may then be cached.
    """
    payloads = result.payloads
    where = f" (request id {result.request_id})" if result.request_id else ""
    if payloads is None or len(payloads) != count:
        got = 0 if payloads is None else len(payloads)
        raise ResponseFormatError(f"sent {count} texts but received {got} embeddings{where}")
    bits = options.embedding_type != "base64"
    dtype = np.dtype({"binary": "i1", "ubinary": "u1"}.get(options.embedding_type, "<f4"))
    ndim = 2 if options.multivector else 1
    width = options.row_width
    if width is not None and bits:
        width = -(-width // 8)  # packed bits: one value per 8 dimensions, the last padded
    widths = {payload.shape[-1] for payload in payloads if payload.ndim}
    if width is None and len(widths) > 1:
        raise ResponseFormatError(f"embeddings of different widths in one response{where}")
    checked = []
    for index, payload in enumerate(payloads):
        if payload.ndim != ndim or payload.dtype != dtype or not payload.size:
            raise ResponseFormatError(
                f"embedding {index} is not what was asked for ({options.embedding_type}"
                f"{', multi-vector' if options.multivector else ''}){where}"
            )
        if width is not None and payload.shape[-1] != width:
            raise ResponseFormatError(
                f"received {payload.shape[-1]}-wide embeddings, expected {width}{where}"
            )
        if not bits and not np.isfinite(payload).all():
            raise ResponseFormatError(f"received NaN or infinite values{where}")
        checked.append(np.ascontiguousarray(payload))
    return checked
