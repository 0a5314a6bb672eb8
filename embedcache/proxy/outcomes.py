"""What became of each embedding request, handed over by the routes and the hit path on the
event loop at the cost of an append, and given in batches to the parts that keep it (the
request log, :mod:`.requestlog`; what each caller and model used) in a thread of its own.

Why a thread: a hit is answered in tens of microseconds, and writing its log line there (a
record, a hash of the caller's key, a JSON line, a ``write``) cost about as much again. Here
the event loop appends one tuple; every :data:`BATCH_SECONDS` the thread hands what came in
to each consumer, so the log gets one ``write`` per batch. A request the hit path answered
arrives as a :class:`~.requestlog.Served`: the record of every hit of one caller on one
request body, made once (the caller's key hashed once, its log line's middle written once),
and this hit's time; any other request as its own :class:`~.requestlog.RequestRecord`.

Bounded: at most :data:`MAX_PENDING` requests wait; beyond that (a consumer stuck on a full
or hung disk) new ones are dropped and counted, and a warning says how many, so memory never
grows with the traffic. A worker that stops hands over what is left before it exits; a
worker killed outright loses at most the last batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ..config import EMBEDDINGS_PATH
from ..models import RequestOptions
from .gate import bearer_value
from .requestlog import RequestRecord, Served, caller_hash

__all__ = ["BATCH_SECONDS", "MAX_PENDING", "Consumer", "Outcomes"]

log = logging.getLogger("embedcache")

#: How often the thread hands what came in to the consumers.
BATCH_SECONDS = 0.1
#: Requests waiting for the thread at most; more are dropped (and counted).
MAX_PENDING = 65_536
#: What takes each batch: called in the thread, never on the event loop.
Consumer = Callable[[Sequence[RequestRecord | Served]], None]

# Hits' shared records remembered (one per caller, request body and figures); cleared when
# full: callers and bodies are the clients' to vary.
_REMEMBERED_HITS = 10_000
_WARN_SECONDS = 60.0


class Outcomes:
    """Finished requests, on their way to ``consumers``.

    :param consumers: each gets every batch, in order (an error in one is logged, and the
        others still get the batch).
    :param batch_seconds: how often a batch is handed over.
    :param max_pending: requests waiting at most (more are dropped).
    """

    def __init__(
        self,
        consumers: Sequence[Consumer],
        *,
        batch_seconds: float = BATCH_SECONDS,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._consumers = list(consumers)
        self._batch_seconds = batch_seconds
        self._max_pending = max_pending
        # deque: the loop appends and the thread pops without a lock of ours.
        self._pending: deque[tuple[Any, ...]] = deque()
        self._served: dict[tuple[object, ...], tuple[object, RequestRecord, bytes]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hand_over = threading.Lock()  # one batch at a time, thread or close()
        #: Requests dropped because too many were waiting.
        self.dropped = 0
        self._warned_dropped = 0
        self._warned_at = 0.0

    def add(self, record: RequestRecord) -> None:
        """Hand over a finished request's record (its time is now)."""
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            return
        self._pending.append((time.time(), record))

    def add_hit(
        self,
        authorization: bytes,
        source: object,
        model: str,
        dialect: str,
        options: RequestOptions,
        texts: int,
        hits: int,
        saved: float,
        seconds: float,
    ) -> None:
        """Hand over a request the hit path answered, as plain values: its record is made
        in the thread, once for every hit of this caller on ``source`` (what the hit path
        read the body as: the same object for the same body) with these figures."""
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            return
        self._pending.append(
            (time.time(), authorization, source, model, dialect, options, texts, hits, saved,
             seconds)
        )  # fmt: skip

    def start(self) -> None:
        """Start handing batches over (in the process that serves: after a fork)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="embedcache-outcomes", daemon=True
            )
            self._thread.start()

    def flush(self) -> None:
        """Hand over what has come in so far, now, in the calling thread."""
        with self._hand_over:
            self._hand_over_pending()

    def close(self) -> None:
        """Stop the thread and hand over what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._batch_seconds):
            with self._hand_over:
                self._hand_over_pending()

    def _hand_over_pending(self) -> None:
        pending = self._pending
        batch: list[RequestRecord | Served] = []
        for _ in range(len(pending)):  # what is there now: more may arrive meanwhile
            item = pending.popleft()
            if len(item) == 2:
                item[1].at = item[0]
                batch.append(item[1])
            else:
                batch.append(self._hit(item))
        if self.dropped != self._warned_dropped:
            self._warn_dropped()
        if not batch:
            return
        for consumer in self._consumers:
            try:
                consumer(batch)
            except Exception:
                log.exception("embedcache proxy: request records not kept")

    def _hit(self, item: tuple[Any, ...]) -> Served:
        at, authorization, source, model, dialect, options, texts, hits, saved, seconds = item
        # The source's id names it while the value holds it (an id is reused only once
        # its object is gone).
        name = (authorization, id(source), hits, saved)
        found = self._served.get(name)
        if found is None:
            if len(self._served) >= _REMEMBERED_HITS:
                self._served.clear()
            record = RequestRecord(
                EMBEDDINGS_PATH,
                dialect,
                caller_hash(bearer_value(authorization)),
                model,
                options.task,
                options.dimensions,
                texts,
                hits,
                tokens_saved=saved,
                ms=seconds * 1000,
                status=200,
                cache="hit",
                at=at,
            )
            found = self._served[name] = (source, record, record.middle())
        return Served(found[1], found[2], at, seconds * 1000)

    def _warn_dropped(self) -> None:
        now = time.monotonic()
        if now - self._warned_at < _WARN_SECONDS:
            return
        log.warning(
            "embedcache proxy: %d request records dropped: the request log or the usage "
            "figures could not keep up (a slow or full disk?)",
            self.dropped - self._warned_dropped,
        )
        self._warned_dropped, self._warned_at = self.dropped, now
