"""What an embedder counts: hits, misses, requests and tokens, per call and since it started,
and how that count reaches the cache's lifetime counters without a write per hit.

An embedder's :class:`Recorder` adds what is not yet recorded to the lifetime counters when
asked (after each fill, on close), and :data:`AUTOFLUSH` does it for every open embedder of
the process: every :data:`~embedcache.config.COUNTER_FLUSH_SECONDS` when something is not
yet recorded, and at exit (a multiprocessing child's exit too). So a process that never
calls ``close()`` (pymilvus's class has none) still leaves its hits in ``embedcache stats``.
A forked child records only what it counts itself: what its parent counted is the parent's
to record.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields

from ..config import COUNTER_FLUSH_SECONDS

__all__ = ["AUTOFLUSH", "COUNTERS", "Counters", "Recorder", "Stats"]

log = logging.getLogger("embedcache")

#: How long the exit waits for a flush the thread is in the middle of.
_JOIN_SECONDS = 10.0

#: What takes a flush's whole-number deltas: a store's ``add_counters``.
RecordCounters = Callable[[dict[str, int]], None]


@dataclass
class Stats:
    """Counters since the embedder was created (or of one call). Hits, misses and coalesced
    count distinct entries.

    :ivar hits: entries found in the cache.
    :ivar misses: entries this embedder fetched from the upstream, counted as each answer
        arrives: entries planned but never sent (an interrupted call) or stored meanwhile by
        another process (counted as hits or coalesced) are not misses.
    :ivar requests: upstream requests sent (retries not counted).
    :ivar tokens_spent: tokens the upstream charged for them.
    :ivar tokens_saved: tokens recorded for the hit entries when they were fetched; an
        estimate, since a batch's usage is apportioned to its texts by length.
    :ivar coalesced: entries that another call was already fetching, taken from its result.
    """

    hits: int = 0
    misses: int = 0
    requests: int = 0
    tokens_spent: int = 0
    tokens_saved: float = 0.0
    coalesced: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_values(cls, values: Mapping[str, float]) -> Stats:
        """Stats from one number per counter (a missing one is 0): the counts whole, the
        token estimate as it is."""
        whole = {name: round(values.get(name, 0)) for name in COUNTERS if name != "tokens_saved"}
        stats = cls(**whole)
        stats.tokens_saved = values.get("tokens_saved", 0.0)
        return stats


#: The counters' names, written once (:class:`Stats`' fields): the metrics board's columns
#: and the proxy's reports follow them, and so must the cache's lifetime counters.
COUNTERS: tuple[str, ...] = tuple(field.name for field in fields(Stats))


class Counters:
    """An embedder's running totals; thread-safe. Every change is made to the totals and
    to the :class:`Stats` of the call it belongs to, under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = Stats()
        #: The whole numbers already handed to the lifetime counters, by field.
        self._recorded = dict.fromkeys(asdict(self._total), 0)

    def snapshot(self) -> Stats:
        """A copy of the totals."""
        with self._lock:
            return Stats(**asdict(self._total))

    def add(self, call: Stats, **deltas: float) -> None:
        """Add ``deltas`` (field name to amount) to the totals and to ``call``."""
        with self._lock:
            for counters in (self._total, call):
                for name, delta in deltas.items():
                    setattr(counters, name, getattr(counters, name) + delta)

    def add_hits(self, entries: int, tokens_saved: float) -> None:
        """Count hits answered outside any call (:meth:`add`'s fast twin for the proxy's
        hit path, where a call's own :class:`Stats` would be thrown away)."""
        with self._lock:
            self._total.hits += entries
            self._total.tokens_saved += tokens_saved

    def take_unflushed(self) -> dict[str, int]:
        """What was counted since the last call, as whole numbers, for the lifetime
        counters; rounding is of the running totals, so fractions are never lost."""
        with self._lock:
            now = {name: round(value) for name, value in asdict(self._total).items()}
            deltas = {name: now[name] - self._recorded[name] for name in now}
            self._recorded = now
        return deltas

    def give_back(self, deltas: dict[str, int]) -> None:
        """Undo a :meth:`take_unflushed` whose deltas could not be recorded, so the next
        flush tries them again."""
        with self._lock:
            for name, delta in deltas.items():
                self._recorded[name] -= delta

    @property
    def unflushed(self) -> bool:
        """Whether a flush now would record anything."""
        with self._lock:
            total = self._total
            return any(
                round(getattr(total, name)) != recorded for name, recorded in self._recorded.items()
            )

    def after_fork_in_child(self) -> None:
        """In a forked child: a new lock (the parent's may have been held by a thread the
        child does not have), and everything counted so far taken as recorded, since the
        parent records it."""
        self._lock = threading.Lock()
        self._recorded = {name: round(value) for name, value in asdict(self._total).items()}


class Recorder:
    """Adds an embedder's :class:`Counters` to the lifetime counters through ``record``
    (its store's ``add_counters``), one flush at a time. It holds no reference to the
    embedder, so :data:`AUTOFLUSH` can keep it without keeping the embedder alive.

    A flush that fails gives its counts back, so the next one tries them again; it logs a
    warning (once, until a flush succeeds again) instead of raising: counters are
    bookkeeping, and a read-only or closed cache must still serve its hits.
    """

    def __init__(self, counters: Counters, record: RecordCounters) -> None:
        self.counters = counters
        self._record = record
        self._lock = threading.Lock()
        self._failing = False
        #: The embedder is gone without closing: flush once more, then forget it.
        self.orphaned = False

    def flush(self) -> None:
        """Record what is not yet recorded; never raises for the store's sake."""
        with self._lock:
            deltas = self.counters.take_unflushed()
            if not any(deltas.values()):
                return
            try:
                self._record(deltas)
            except Exception as exc:  # any store failure, even a closed one at exit
                self.counters.give_back(deltas)
                if not self._failing:
                    log.warning("could not record lifetime counters: %s", exc)
                self._failing = True
            else:
                self._failing = False

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self.counters.after_fork_in_child()


class Autoflush:
    """Flushes every registered :class:`Recorder`: from a daemon thread every
    :attr:`interval` seconds (only those with something to record), and at exit.

    The thread runs while anything is registered, and is started again in a forked child
    that inherits registered recorders (a thread does not survive ``fork``). At exit the
    thread is stopped before the last flush, so a flush is never cut off halfway. A
    recorder whose embedder was collected unclosed (:meth:`orphan`) gets its last flush
    from the thread at once, which then lets go of it and its store.
    """

    def __init__(self, interval: float = COUNTER_FLUSH_SECONDS) -> None:
        self._interval = interval
        self._recorders: set[Recorder] = set()
        # Reentrant: orphan() runs from a garbage collection, which may come in any thread
        # at any allocation, even one made while this lock is held.
        self._wake = threading.Condition(threading.RLock())
        self._thread: threading.Thread | None = None
        self._due = 0.0  # when the thread next flushes (time.monotonic)
        self._orphans = False  # the thread has orphans to let go of
        self._stopped = False
        self._hooked = False

    @property
    def interval(self) -> float:
        """Seconds between the thread's flushes; setting it restarts the wait."""
        return self._interval

    @interval.setter
    def interval(self, seconds: float) -> None:
        with self._wake:
            self._interval = seconds
            self._due = time.monotonic() + seconds
            self._wake.notify_all()

    def add(self, recorder: Recorder) -> None:
        """Flush ``recorder`` now and then, and at exit, until :meth:`discard`."""
        with self._wake:
            if not self._hooked:
                self._hooked = True
                atexit.register(self.at_exit)
                # A multiprocessing child ends with os._exit, after its own exit hooks but
                # not atexit's: it is given the exit flush there too.
                multiprocessing.util.register_after_fork(self, Autoflush._in_multiprocessing)
                if multiprocessing.parent_process() is not None:
                    # Already such a child (its parent had no embedder to hook it): now.
                    self._in_multiprocessing()
            self._recorders.add(recorder)
            self._start()

    def discard(self, recorder: Recorder) -> None:
        """Stop flushing ``recorder`` (its embedder closed, after its own last flush)."""
        with self._wake:
            self._recorders.discard(recorder)

    def orphan(self, recorder: Recorder) -> None:
        """``recorder``'s embedder was collected without close(): have the thread flush it
        one last time and let it go. Never waits for a lock: a collection can run in any
        thread at any allocation, even in a thread being started while the lock is held;
        if the lock is busy, the thread finds the orphan at its next flush."""
        recorder.orphaned = True
        self._orphans = True
        if self._wake.acquire(blocking=False):
            try:
                self._wake.notify_all()
            finally:
                self._wake.release()

    def flush_all(self) -> None:
        """Flush every registered recorder that has something to record (what the thread
        does every :attr:`interval`), and let go of the orphaned ones."""
        with self._wake:
            recorders = list(self._recorders)
        self._flush(recorders)

    def at_exit(self) -> None:
        """Stop the thread, then flush everything (registered with :mod:`atexit`)."""
        with self._wake:
            self._stopped = True
            thread, self._thread = self._thread, None
            self._wake.notify_all()
        if thread is not None:
            thread.join(timeout=_JOIN_SECONDS)
        self.flush_all()

    def after_fork_in_child(self) -> None:
        """In a forked child: new locks, the parent's counts left to the parent, and a
        thread of the child's own if anything is registered."""
        self._wake = threading.Condition(threading.RLock())
        self._thread = None
        for recorder in self._recorders:
            recorder.after_fork_in_child()
        with self._wake:
            self._start()

    def _flush(self, recorders: list[Recorder]) -> None:
        for recorder in recorders:
            orphaned = recorder.orphaned  # read first: an orphan counts nothing more
            if recorder.counters.unflushed:
                recorder.flush()
            if orphaned:
                self.discard(recorder)

    def _in_multiprocessing(self) -> None:
        multiprocessing.util.Finalize(None, self.at_exit, exitpriority=0)

    def _start(self) -> None:
        # Called holding the condition's lock.
        if self._thread is None and self._recorders and not self._stopped:
            self._due = time.monotonic() + self._interval
            self._thread = threading.Thread(
                target=self._run, name="embedcache-counters", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._wake:
                # Woken early only to stop, for orphans, or for a new interval: a steady
                # stream of orphans does not put the next flush off.
                while self._thread is me and not self._orphans:
                    left = self._due - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
                if self._thread is not me:
                    return  # stopped at exit, or replaced
                if not self._recorders:
                    self._thread = None  # add() starts another
                    return
                due = time.monotonic() >= self._due
                if due:
                    self._due = time.monotonic() + self._interval
                self._orphans = False
                chosen = [r for r in self._recorders if due or r.orphaned]
            self._flush(chosen)
            del chosen  # not held through the next wait: an orphan's store goes now


#: The process's one :class:`Autoflush`, which every :class:`CachedEmbedder` joins.
AUTOFLUSH = Autoflush()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=AUTOFLUSH.after_fork_in_child)
