"""The shapes one cache entry takes, and which is which.

An entry is a vector stored under a 16-byte key, with the tokens it cost, when it was stored
and the id of the request settings (the fingerprint) that produced it. Each shape below
holds what one kind of caller needs of it, so none carries what its path never reads:

* :data:`KeyedVectors`, ``(key, vector, tokens)`` each: entries on their way *in*, as
  :meth:`Store.put_many <embedcache.storage.store.Store.put_many>` and the shared tier's
  ``put_many`` take them (the fingerprint is given once for all of them).
* :class:`Found`: a batch *read* for answering (the caching core, through
  :meth:`Store.read_many <embedcache.storage.store.Store.read_many>` and the shared tier):
  vectors gathered into one array, aligned with the keys asked for; no per-entry object.
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

import numpy as np
from numpy.typing import NDArray

__all__ = ["Found", "KeyedVectors", "Record", "Stored"]

#: New entries as the stores take them: ``(key, vector, tokens)`` each.
KeyedVectors = Sequence[tuple[bytes, NDArray[np.float32], float]]


@dataclass(frozen=True)
class Record:
    """One cached vector with its metadata.

    :ivar vector: float32 vector (read-only).
    :ivar tokens: tokens attributed to this text when it was fetched (an estimate within a
        batch: the batch's usage apportioned by text length).
    :ivar created: when it was stored, Unix seconds.
    :ivar fingerprint_id: id of the request settings that produced it.
    """

    vector: NDArray[np.float32]
    tokens: float
    created: float
    fingerprint_id: int


@dataclass(frozen=True)
class Stored:
    """What the index records of one entry, without reading its vector (see
    :meth:`Store.listing <embedcache.storage.store.Store.listing>`): a damaged vector is not
    noticed here.

    :ivar dimensions: the vector's length.
    :ivar tokens: as :attr:`Record.tokens`.
    :ivar created: as :attr:`Record.created`.
    :ivar fingerprint_id: as :attr:`Record.fingerprint_id`.
    """

    dimensions: int
    tokens: float
    created: float
    fingerprint_id: int


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
