"""Copying what the shared tier served down to local disk, off the read path.

A read served from Redis returns as soon as its vectors are decoded; the values Redis sent
(immutable bytes, so the caller may change its result) are queued here, and one thread per
store writes them to the local store in bulk: the queued batches of one fingerprint and
dimension together (entries of other kinds, read by ``read_payloads``, together too),
sorted by key (SQLite inserts in key order cost half as much), up to
:data:`PUT_BYTES` per transaction (so other processes' writers wait a bounded time), and the
index's snapshot retaken once, when the queue is drained, not after every transaction that
makes one due (each rewrites every row: a copy into an empty cache wrote each row about nine
times over).

The thread gives way to reads: it starts a transaction only while no read from the shared
tier is under way (:meth:`WriteBack.reading`), or once it has waited
:data:`YIELD_SECONDS`, so on a machine of few cores a read runs at the speed of the network,
not shared with its own copy (Python runs one thread at a time, and SQLite's inserts hold it).

Bounded: the values queued count at most :data:`PENDING_BYTES`, or the size of the read
that queues them if that is larger, so a read never waits for its own copy; a read that
finds the queue fuller waits for room. A key already queued is not queued again. The copy
is finished by :meth:`WriteBack.flush` (``close``, and at interpreter exit for a process
that never closes): nothing Redis served is left uncopied, and a copy that fails (a full
disk) only logs, as a hit is still a hit without its local copy.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..cache_keys import Fingerprint
from .formats import check_entry, split_keys, value_records, value_size
from .payloads import PAYLOAD_VALUES
from .store import Store

__all__ = ["PENDING_BYTES", "PUT_BYTES", "PUT_ROWS", "YIELD_SECONDS", "WriteBack"]

#: Bytes of values queued at most (or a read's own size, if larger).
PENDING_BYTES = 64 << 20
#: Bytes of values, and entries, written per transaction at most.
PUT_BYTES = 32 << 20
PUT_ROWS = 32_768
#: Seconds the writer waits for reads under way to end before it writes anyway.
YIELD_SECONDS = 1.0
#: Seconds the writer thread waits for more work before it ends.
_IDLE_SECONDS = 2.0

log = logging.getLogger("embedcache")

_LIVE: weakref.WeakSet[WriteBack] = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    """At exit, finish every copy still queued (the writer threads are daemons)."""
    for writeback in list(_LIVE):
        writeback.flush()


@dataclass
class _Batch:
    fp: Fingerprint
    dim: int  # PAYLOAD_VALUES: values of entries of any kind
    keys: list[bytes]
    values: list[bytes | None]  # only intact values: None never

    @property
    def nbytes(self) -> int:
        if self.dim == PAYLOAD_VALUES:
            return sum(len(value or b"") for value in self.values)
        return len(self.keys) * value_size(self.dim)


class WriteBack:
    """The queue of served values to copy to ``store``, and the thread that writes them.

    :param store: the local store; closed only after :meth:`flush`.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._changed = threading.Condition()
        self._queue: deque[_Batch] = deque()
        self._queued = 0  # bytes of values queued or being written
        self._keys: set[bytes] = set()  # keys queued or being written
        self._writer: threading.Thread | None = None
        self._reads = 0  # reads from the shared tier under way
        self._scratch: NDArray[Any] | None = None  # the writer's, reused
        _LIVE.add(self)

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Around a read from the shared tier: the writer waits for it to end."""
        with self._changed:
            self._reads += 1
        try:
            yield
        finally:
            with self._changed:
                self._reads -= 1
                self._changed.notify_all()

    def offer(
        self,
        fp: Fingerprint,
        keys: Sequence[bytes],
        values: list[bytes | None],
        ok: NDArray[np.bool_],
        dim: int,
        *,
        read_entries: int,
    ) -> None:
        """Queue the ``ok`` values of ``keys`` (served by Redis) to be written locally.

        :param read_entries: entries of the whole read these come from: the queue may hold
            that many values' bytes even beyond :data:`PENDING_BYTES`.
        """
        rows = range(len(keys)) if ok.all() else np.flatnonzero(ok).tolist()
        with self._changed:
            if self._keys:
                rows = [i for i in rows if keys[i] not in self._keys]
            if not rows:
                return
            batch = _Batch(
                fp, dim,
                list(keys) if len(rows) == len(keys) else [keys[i] for i in rows],
                values if len(rows) == len(values) else [values[i] for i in rows],
            )  # fmt: skip
            allowed = max(PENDING_BYTES, read_entries * value_size(dim))
            if self._queued and self._queued + batch.nbytes > allowed:
                self._reads -= 1  # waiting for room, not reading: the writer may go on
                while self._queued and self._queued + batch.nbytes > allowed:
                    self._changed.wait()
                self._reads += 1
            self._queue.append(batch)
            self._queued += batch.nbytes
            self._keys.update(batch.keys)
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._run, name="embedcache-writeback", daemon=True
                )
                self._writer.start()
            self._changed.notify_all()

    def flush(self) -> None:
        """Wait until everything queued so far is written (or has failed, logged)."""
        with self._changed:
            while self._queued:
                self._changed.wait()

    def _run(self) -> None:
        while True:
            with self._changed:
                if not self._queue and not self._changed.wait_for(
                    lambda: bool(self._queue), _IDLE_SECONDS
                ):
                    self._writer = None
                    return
                self._changed.wait_for(lambda: not self._reads, YIELD_SECONDS)
                batches = self._take()
            try:
                self._write(batches)
                with self._changed:
                    drained = not self._queue
                if drained:  # one snapshot for the whole copy, before flush() returns
                    self._store.refresh_snapshot_if_due()
            except Exception as exc:  # a hit stays a hit without its copy
                log.warning("could not copy shared entries to local disk: %s", exc)
            finally:
                with self._changed:
                    for batch in batches:
                        self._queued -= batch.nbytes
                        self._keys.difference_update(batch.keys)
                    self._changed.notify_all()

    def _take(self) -> list[_Batch]:
        """The next queued batches of one fingerprint and dimension, up to a transaction."""
        first = self._queue.popleft()
        taken, size, rows = [first], first.nbytes, len(first.keys)
        while self._queue:
            batch = self._queue[0]
            if (batch.fp.id, batch.dim) != (first.fp.id, first.dim):
                break
            if size + batch.nbytes > PUT_BYTES or rows + len(batch.keys) > PUT_ROWS:
                break
            taken.append(self._queue.popleft())
            size, rows = size + batch.nbytes, rows + len(batch.keys)
        return taken

    def _write(self, batches: list[_Batch]) -> None:
        """One transaction for ``batches`` (same fingerprint and dimension), in key order."""
        fp, dim = batches[0].fp, batches[0].dim
        keys = [key for batch in batches for key in batch.keys]
        values = [value for batch in batches for value in batch.values]
        if dim == PAYLOAD_VALUES:  # entries of any kind, checked when read: all intact
            entries = [
                (key, check_entry(value or b"")) for key, value in zip(keys, values, strict=True)
            ]
            self._store.put_many(
                fp, [(key, e[0], e[1]) for key, e in entries if not isinstance(e, str)]
            )
            return
        scratch = self._scratch
        if scratch is None or scratch.dtype.itemsize != value_size(dim) or len(scratch) < len(keys):
            scratch = self._scratch = np.empty(len(keys), dtype=f"S{value_size(dim)}")
        records, _ = value_records(values, dim, scratch)  # checked when read: all intact
        order = np.argsort(split_keys(keys)[:, 0], kind="stable")
        self._store.put_matrix(
            fp,
            [keys[i] for i in order.tolist()],
            records["vector"][order],
            (records["millitokens"][order] / 1000.0).tolist(),
            defer_snapshot=True,
        )
