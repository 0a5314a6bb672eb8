"""The shapes one cache entry takes, and which is which.

An entry is a vector (or a payload of another kind: a ragged float32 array, packed bits;
see :mod:`~embedcache.storage.payloads`) stored under a 16-byte key, with the tokens it
cost, when it was stored and the id of the request settings (the fingerprint) that produced
it. Each shape below holds what one kind of caller needs of it, so none carries what its
path never reads:

* :data:`KeyedVectors`, ``(key, vector, tokens)`` each: entries on their way *in*, as
  :meth:`Store.put_many <embedcache.storage.store.Store.put_many>` and the shared tier's
  ``put_many`` take them (the fingerprint is given once for all of them).
* :class:`Found`: a batch *read* for answering (the caching core, through
  :meth:`Store.read_many <embedcache.storage.store.Store.read_many>` and the shared tier):
  vectors gathered into one array, aligned with the keys asked for; no per-entry object.
* :class:`FoundPayloads`: a batch read of entries of any kind
  (:meth:`Store.read_payloads <embedcache.storage.store.Store.read_payloads>`), one array
  each, exactly as stored.
* :class:`Record`: one entry read *whole*, its vector checked (``get``,
  :meth:`Store.records <embedcache.storage.store.Store.records>` for ``verify``,
  ``export`` and ``sync``).
* :class:`Stored`: one entry's index row *without* its vector
  (:meth:`Store.listing <embedcache.storage.store.Store.listing>` for ``prune``): nothing
  read but the index, so a damaged vector is not noticed.

Above storage, :class:`embedcache.maintenance.inventory.Entry` is a listed entry in the
user's terms (model, task, upstream... from its fingerprint), what ``ls`` and ``export``
print; the caching core's ``Embedded`` is a call's answer, not an entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .payloads import array_kind

__all__ = ["Found", "FoundPayloads", "KeyedVectors", "Record", "Stored"]

#: New entries as the stores take them: ``(key, vector, tokens)`` each; a vector may be a
#: payload of another kind (:data:`~embedcache.storage.payloads.Payload`).
KeyedVectors = Sequence[tuple[bytes, NDArray[Any], float]]


@dataclass(frozen=True)
class Record:
    """One cached entry with its metadata.

    :ivar vector: float32 vector (read-only); for an entry of another kind, its payload as
        stored (a 2-D float32 array, a 1-D or 2-D int8/uint8 array: see :attr:`kind`).
    :ivar tokens: tokens attributed to this text when it was fetched (an estimate within a
        batch: the batch's usage apportioned by text length).
    :ivar created: when it was stored, Unix seconds.
    :ivar fingerprint_id: id of the request settings that produced it.
    """

    vector: NDArray[Any]
    tokens: float
    created: float
    fingerprint_id: int

    @property
    def kind(self) -> str:
        """``"vector"``, ``"ragged"`` or ``"bytes"`` (:mod:`~embedcache.storage.payloads`)."""
        return array_kind(self.vector)[0]

    @property
    def dimensions(self) -> int:
        """The dimensions it answers for (:func:`~embedcache.storage.payloads.dimensions`):
        a vector's length, a ragged entry's row width, 8 a byte of a bytes entry's row."""
        return array_kind(self.vector)[1]


@dataclass(frozen=True)
class Stored:
    """What the index records of one entry, without reading its vector (see
    :meth:`Store.listing <embedcache.storage.store.Store.listing>`): a damaged vector is not
    noticed here.

    :ivar dimensions: the vector's length (a payload's: as :attr:`Record.dimensions`).
    :ivar tokens: as :attr:`Record.tokens`.
    :ivar created: as :attr:`Record.created`.
    :ivar fingerprint_id: as :attr:`Record.fingerprint_id`.
    :ivar kind: as :attr:`Record.kind`.
    :ivar nbytes: the bytes it counts against a size limit
        (:func:`~embedcache.storage.formats.entry_bytes`); ``None``: a vector's, 4 a
        dimension.
    """

    dimensions: int
    tokens: float
    created: float
    fingerprint_id: int
    kind: str = "vector"
    nbytes: int | None = None

    @property
    def size(self) -> int:
        """Bytes it counts against a size limit."""
        return 4 * self.dimensions if self.nbytes is None else self.nbytes


@dataclass(frozen=True)
class Found:
    """The result of :meth:`Store.read_many <embedcache.storage.store.Store.read_many>`,
    aligned with the keys asked for.

    :ivar present: whether each key was found intact (and of the requested dimension).
    :ivar vectors: ``(len(keys), d)``; rows of absent keys are zero.
    :ivar tokens: tokens recorded for each key; 0 for absent keys.
    """

    present: NDArray[np.bool_]
    vectors: NDArray[np.float32]
    tokens: NDArray[np.float64]


@dataclass(frozen=True)
class FoundPayloads:
    """The result of :meth:`Store.read_payloads
    <embedcache.storage.store.Store.read_payloads>`, aligned with the keys asked for.

    :ivar payloads: each key's entry (a vector or a payload), ``None`` when absent.
    :ivar tokens: tokens recorded for each key; 0 for absent keys.
    """

    payloads: list[NDArray[Any] | None]
    tokens: NDArray[np.float64]

    @property
    def present(self) -> NDArray[np.bool_]:
        """Whether each key was found intact."""
        return np.array([p is not None for p in self.payloads], dtype=bool)
