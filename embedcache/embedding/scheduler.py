"""Sending batches with a bounded number in flight, committing each as it arrives.

Knows nothing of texts, stores or HTTP: it is given the batches, a ``send`` and a
``commit``, so its ordering and failure rules can be tested with plain functions.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Generic, TypeVar

from ..errors import InvalidInputError

__all__ = ["BatchScheduler"]

B = TypeVar("B")
R = TypeVar("R")


class BatchScheduler(Generic[B, R]):
    """Runs ``send`` for up to ``max_concurrency`` batches at once, on worker threads shared
    by every call (so concurrent calls queue for the same slots), and ``commit`` for each
    result on the calling thread.

    :param max_concurrency: most batches in flight at once; 1 sends on the calling thread.
    """

    def __init__(self, max_concurrency: int) -> None:
        if max_concurrency < 1:
            raise InvalidInputError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.max_concurrency = max_concurrency
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        """Stop the worker threads once their batches are done (idempotent)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def run(
        self,
        batches: Iterable[B],
        send: Callable[[B], R],
        commit: Callable[[B, R], None],
    ) -> None:
        """Send every batch ``batches`` yields and commit each result as it arrives.

        ``batches`` is drawn from lazily, only when a slot is free, so it can look at what
        earlier commits stored. A failed send stops drawing new batches; results already
        arriving are still committed (they are paid for), then the first failure is raised;
        so is a failure of ``batches`` itself.
        """
        queue = iter(batches)
        if self.max_concurrency == 1:
            for batch in queue:
                commit(batch, send(batch))
            return
        pool = self._workers()
        pending: dict[Future[R], B] = {}
        error: BaseException | None = None

        def top_up() -> None:
            nonlocal error
            try:
                for batch in itertools.islice(queue, self.max_concurrency - len(pending)):
                    pending[pool.submit(send, batch)] = batch
            except Exception as exc:
                # Drawing a batch can fail (it looks at the store): the batches in flight are
                # paid for all the same, so they are still committed before this is raised.
                error = error or exc

        try:
            top_up()
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                finished = [(pending.pop(future), future) for future in done]
                if error is None and all(f.exception() is None for _, f in finished):
                    # Refill the freed slots before committing, so the next requests are
                    # already in flight while this batch is written.
                    top_up()
                for batch, future in finished:
                    try:
                        commit(batch, future.result())
                    except Exception as exc:
                        error = error or exc
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        if error is not None:
            raise error

    def _workers(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, "embedcache")
            return self._pool
