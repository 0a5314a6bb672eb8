"""Where the embedder looks for a vector, nearest first: local disk, then shared Redis.

Entries of any kind (:meth:`Tiers.read_payloads`, :meth:`Tiers.put_payloads`) go the
same way. A vector found in Redis is written back to local disk, so the next read is local: off the
read path, by :class:`~embedcache.storage.writeback.WriteBack`, finished by :meth:`Tiers.close`
(and at exit); a presence check (a prewarm) waits for its copy. A vector fetched from the API
goes to both. The shared tier is optional.

A call whose inputs are of more than one kind (texts with images) is told its keys'
fingerprints one by one (:class:`~embedcache.cache_keys.MixedFingerprints`): each entry is
written, here and when copied down from Redis, under its own, so an image's entry says it
is an image's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from ..cache_keys import Fingerprint, KeyFingerprints
from .entries import Found, FoundPayloads, KeyedVectors
from .payloads import Payload
from .shared import RedisStore
from .store import Store
from .writeback import WriteBack

__all__ = ["Tiers"]

_T = TypeVar("_T")


class Tiers:
    """The cache's tiers, read nearest first and written together.

    :param store: the local disk cache.
    :param shared: a Redis tier shared with other machines, if any.
    :param writeback: copies what ``shared`` serves to ``store``; ``None``: nothing is
        copied (no shared tier, or a read-only store).
    """

    def __init__(
        self,
        store: Store,
        shared: RedisStore | None = None,
        writeback: WriteBack | None = None,
    ) -> None:
        self.store = store
        self.shared = shared
        self._writeback = writeback

    def close(self) -> None:
        """Finish copying what the shared tier served to local disk (the tiers themselves
        belong to the caller)."""
        if self._writeback is not None:
            self._writeback.flush()

    @property
    def read_only(self) -> bool:
        """Whether fetched vectors could not be kept: the local cache is read-only."""
        return self.store.read_only

    def read(
        self, fp: KeyFingerprints, keys: list[bytes], dim: int | None, *, shared: bool = True
    ) -> Found:
        """Every key's vector from the nearest tier that has it.

        :param shared: also ask the shared tier (a network round trip) for what is not local.
        """
        found = self.store.read_many(keys, dim)
        if shared and self.shared is not None and not found.present.all():
            found = self._pull(fp, keys, found, dim)
        return found

    def contains(
        self, fp: KeyFingerprints, keys: list[bytes], dim: int | None
    ) -> NDArray[np.bool_]:
        """Whether each key is cached locally or in the shared tier (whose entries are
        copied down, so a prewarm on a new machine costs no tokens for them)."""
        present = np.array(self.store.contains_many(keys), dtype=bool)
        if self.shared is not None and not present.all():
            absent = np.flatnonzero(~present)
            pulled = self._pull_absent(fp, [keys[i] for i in absent.tolist()], dim, wait=True)
            present[absent[pulled.present]] = True
        return present

    def read_payloads(
        self, fp: KeyFingerprints, keys: list[bytes], *, shared: bool = True
    ) -> FoundPayloads:
        """Every key's entry, of whatever kind, from the nearest tier that has it
        (:meth:`Store.read_payloads`); what Redis serves is copied to local disk as a
        vector's is.

        :param shared: also ask the shared tier for what is not local.
        """
        found = self.store.read_payloads(keys)
        absent = [i for i, payload in enumerate(found.payloads) if payload is None]
        if not shared or self.shared is None or not absent:
            return found
        wanted = [keys[i] for i in absent]
        if self._writeback is None:
            pulled = self.shared.read_payloads(wanted)
        else:
            served = self._offer(fp, len(wanted))
            with self._writeback.reading():
                pulled = self.shared.read_payloads(wanted, served=served)
        for i, payload, tokens in zip(absent, pulled.payloads, pulled.tokens, strict=True):
            if payload is not None:
                found.payloads[i] = payload
                found.tokens[i] = tokens
        return found

    def contains_payloads(self, fp: KeyFingerprints, keys: list[bytes]) -> NDArray[np.bool_]:
        """Whether each key has an entry of any kind locally or in the shared tier (whose
        entries are copied down first, as :meth:`contains` does)."""
        present = np.array(self.store.contains_many(keys), dtype=bool)
        if self.shared is not None and not present.all():
            absent = np.flatnonzero(~present)
            pulled = self.read_payloads(fp, [keys[i] for i in absent.tolist()])
            if self._writeback is not None:
                self._writeback.flush()
            present[absent[pulled.present]] = True
        return present

    def put_payloads(
        self, fp: KeyFingerprints, keys: list[bytes], payloads: list[Payload], tokens: list[float]
    ) -> None:
        """Store fetched entries of any kind locally (errors propagate), then in the shared
        tier (:meth:`Store.put_payloads`)."""
        for one, rows in _groups(fp, keys):
            some = (keys, payloads, tokens)
            if rows is not None:
                some = (_pick(keys, rows), _pick(payloads, rows), _pick(tokens, rows))
            self.store.put_payloads(one, *some)
            if self.shared is not None:
                self.shared.put_many(one, list(zip(*some, strict=True)))

    def put(self, fp: KeyFingerprints, entries: KeyedVectors) -> None:
        """Store fetched vectors locally (errors propagate), then in the shared tier."""
        keys = [] if isinstance(fp, Fingerprint) else [key for key, _, _ in entries]
        for one, rows in _groups(fp, keys):
            some = entries if rows is None else _pick(entries, rows)
            self.store.put_many(one, some)
            if self.shared is not None:
                self.shared.put_many(one, some)

    def _pull(self, fp: KeyFingerprints, keys: list[bytes], found: Found, dim: int | None) -> Found:
        """``found`` completed with what the shared tier has for its absent keys."""
        if not found.present.any():  # nothing local (a new machine): no merging to do
            return self._pull_absent(fp, keys, dim)
        absent = np.flatnonzero(~found.present)
        pulled = self._pull_absent(fp, [keys[i] for i in absent.tolist()], found.vectors.shape[1])
        got = absent[pulled.present]
        if not len(got):
            return found
        found.vectors[got] = pulled.vectors[pulled.present]
        found.present[got] = True
        found.tokens[got] = pulled.tokens[pulled.present]
        return found

    def _pull_absent(
        self, fp: KeyFingerprints, keys: list[bytes], dim: int | None, *, wait: bool = False
    ) -> Found:
        """The shared tier's vectors for ``keys``, queued to be written to local disk.

        :param wait: return only once they are written (or their copy failed).
        """
        assert self.shared is not None
        if self._writeback is None:
            return self.shared.read_many(keys, dim)
        served = self._offer(fp, len(keys))
        with self._writeback.reading():
            pulled = self.shared.read_many(keys, dim, served=served)
        if wait:
            self._writeback.flush()
        return pulled

    def _offer(self, fp: KeyFingerprints, read_entries: int) -> Callable[..., None]:
        """What the shared tier calls with the values it served: queued for the copy to
        local disk, each under its entry's fingerprint."""
        assert self._writeback is not None
        offer = functools.partial(self._writeback.offer, read_entries=read_entries)
        if isinstance(fp, Fingerprint):
            return functools.partial(offer, fp)

        def each(
            keys: Sequence[bytes], values: list[bytes | None], ok: NDArray[np.bool_], dim: int
        ) -> None:
            for one, rows in fp.groups(keys):
                offer(one, _pick(keys, rows), _pick(values, rows), ok[rows], dim)

        return each


def _groups(
    fp: KeyFingerprints, keys: Sequence[bytes]
) -> list[tuple[Fingerprint, list[int] | None]]:
    """The fingerprints ``keys`` are stored under, each with its positions (``None``: all)."""
    if isinstance(fp, Fingerprint):
        return [(fp, None)]
    groups = fp.groups(keys)
    if len(groups) == 1:
        return [(groups[0][0], None)]
    return [(one, rows) for one, rows in groups]


def _pick(items: Sequence[_T], rows: list[int]) -> list[_T]:
    return [items[i] for i in rows]
