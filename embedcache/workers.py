"""Running one object's sync calls in worker threads for its async methods
(:class:`Workers`): the library's async twins (``aencode_documents``, ...) run the one sync
core this way, so there is no second code path to keep in step."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["Workers"]

_T = TypeVar("_T")


class Workers:
    """Runs one object's sync calls in worker threads for its async methods.

    A cancelled await returns at once; its call is told to stop (``threading.Event``): it
    sends no new batch, and the batches already in flight are still committed, in the
    worker thread, as they arrive. :meth:`close` waits for those.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    async def run(self, call: Callable[[threading.Event], _T]) -> _T:
        """Await ``call(stop)`` run in a worker thread (with the caller's context vars)."""
        stop = threading.Event()
        work = functools.partial(contextvars.copy_context().run, call, stop)
        with self._lock:  # submitted under it: close() cannot shut the pool down in between
            if not self._closed and self._pool is None:
                self._pool = ThreadPoolExecutor(thread_name_prefix="embedcache-async")
            future = self._pool.submit(work) if self._pool is not None else None
        if future is None:
            # The object is closed: fail as its sync call does, without a new thread.
            return call(stop)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # A call not yet started never starts; a running one stops drawing batches.
            stop.set()
            raise

    def close(self) -> None:
        """Wait for the calls still running (cancelled ones committing what is in flight)."""
        with self._lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is not None:
            pool.shutdown(wait=True)
