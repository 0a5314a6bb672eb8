"""What a test can make the emulator do wrong, and what the emulator remembers of each request.

:class:`Fault` and :class:`RecordedRequest` are frozen dataclasses so tests can compare and
parametrize over them. Neither ever holds a header: the request log cannot leak an API key
because it never sees one. A :class:`Gate` holds requests until the test lets them go.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = ["Fault", "FaultQueue", "Fetched", "Gate", "RecordedRequest"]

_GATE_TIMEOUT = 10.0  # seconds Gate.arrived waits by default: a test's deadline, not a pace


class Gate:
    """Holds every request that takes a ``Fault(hold=gate)`` until :meth:`release`.

    A held request has been read, checked and admitted by the rate limits, so it counts as
    in flight (``concurrent_requests``); it is answered, and logged, only once released.
    That lets a test know, rather than hope, that requests are in flight at once::

        gate = emulator.hold(times=2)
        ...  # start two requests in threads
        assert gate.arrived(2)  # both are in flight now, whatever the machine's speed
        gate.release()

    (``embedcache.testing``'s docstring has the same as a running example.)

    Used as a context manager it is released on exit, so a failing test never leaves
    requests hanging; stopping the emulator lets held requests go too. A gate is safe to
    use from any thread, and opens once for good: later requests pass straight through.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._arrived = 0
        self._held = 0
        self._open = False

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return f"Gate({state}, arrived={self._arrived}, held={self._held})"

    @property
    def held(self) -> int:
        """Requests waiting at the gate right now."""
        with self._cond:
            return self._held

    def arrived(self, count: int = 1, timeout: float = _GATE_TIMEOUT) -> bool:
        """Wait until ``count`` requests in all have reached the gate (released ones
        included); ``False`` if they have not within ``timeout`` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: self._arrived >= count, timeout)

    def release(self) -> None:
        """Let every held request go on, and every later one through (idempotent)."""
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def __enter__(self) -> Gate:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def _pass(self, stopping: threading.Event) -> None:
        """Hold the calling request until the gate is released or ``stopping`` is set.
        The wait is on the gate's own condition: whoever sets ``stopping`` must then call
        :meth:`_wake` for it to be noticed."""
        with self._cond:
            self._arrived += 1
            self._held += 1
            self._cond.notify_all()
            try:
                while not self._open and not stopping.is_set():
                    self._cond.wait()
            finally:
                self._held -= 1

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


@dataclass(frozen=True)
class Fault:
    """One misbehaviour for the next request(s); every field is optional and they combine.

    Transport-level faults (``hold``, ``delay``, ``drop``, ``cut_body``), a replacement answer
    (``status`` and/or ``body``) and data-level faults on a successful embeddings response
    (the rest) can be mixed in one ``Fault``. Data-level faults do nothing to error answers.

    :param status: answer this status with a Jina-shaped error body instead of serving the
        request (no auth check, no validation).
    :param retry_after: ``Retry-After`` header value sent with whatever the answer is.
    :param hold: a :class:`Gate` to wait at, admitted and in flight, until it is released
        (see :meth:`JinaEmulator.hold <embedcache.testing.JinaEmulator.hold>`). The time
        held counts toward the emulator's ``latency``; ``delay`` comes after it.
    :param delay: seconds to sleep before answering (on top of the emulator's ``latency``).
    :param drop: read the request, then close the connection without answering.
    :param cut_body: send status and headers with the full ``Content-Length``, then half
        the body, then close.
    :param body: raw bytes to send instead of the real body, with status 200 or ``status``.
    :param content_type: ``Content-Type`` of ``body``.
    :param count_delta: drop (negative) or append (positive, copies of the last item with the
        next indexes) that many items of ``data``.
    :param dim_delta: make every vector that many components longer (padded with 0.01) or
        shorter.
    :param bad_value: write this value (e.g. ``nan``, ``inf``) into the first vector.
    :param duplicate_index: give ``data[1]`` the index of ``data[0]``.
    :param missing_index: set the last item's index to ``len(data)``.
    :param bad_base64: encode base64 payloads two bytes short.
    :param times: how many consecutive requests this fault applies to.
    """

    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    drop: bool = False
    cut_body: bool = False
    body: bytes | None = None
    content_type: str = "application/json"
    count_delta: int = 0
    dim_delta: int = 0
    bad_value: float | None = None
    duplicate_index: bool = False
    missing_index: bool = False
    bad_base64: bool = False
    times: int = 1
    hold: Gate | None = None  # last: the older fields keep their positions

    def __post_init__(self) -> None:
        if self.times < 1:
            raise ValueError(f"Fault.times must be at least 1, got {self.times}")
        if self.delay < 0:
            raise ValueError(f"Fault.delay must not be negative, got {self.delay}")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"Fault.status must be an HTTP status, got {self.status}")

    @property
    def replaces_answer(self) -> bool:
        """Whether the real request is not served at all (an injected status or raw body)."""
        return self.status is not None or self.body is not None

    @property
    def alters_data(self) -> bool:
        """Whether a successful embeddings response is mangled before it is encoded."""
        return bool(
            self.count_delta
            or self.dim_delta
            or self.bad_value is not None
            or self.duplicate_index
            or self.missing_index
            or self.bad_base64
        )


@dataclass(frozen=True)
class Fetched:
    """One URL the emulator fetched for an image or PDF item (see ``embedcache.testing.media``).

    :ivar url: the URL, with any user and password shown as ``***``.
    :ivar status: the HTTP status of the last answer, ``None`` when none came.
    :ivar size: bytes received (up to where the fetch stopped, for a failed one).
    :ivar sha256: hex digest of the bytes, for a fetch that succeeded.
    :ivar error: why the fetch failed (``"HTTP 404"``, ``"more than 8 MiB"``, ``"too slow"``,
        an httpx exception's name), ``None`` for one that succeeded.
    """

    url: str
    status: int | None
    size: int
    sha256: str | None
    error: str | None


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the emulator saw and answered it.

    :ivar method: HTTP method.
    :ivar path: request path, query string included.
    :ivar body: the parsed JSON object, or ``None`` when absent, unparseable or not an object.
    :ivar status: the status sent, or ``None`` when the connection was dropped unanswered.
    :ivar inputs: number of items in ``input`` (0 when unknown).
    :ivar tokens: usage tokens charged: the response's ``usage.total_tokens`` for a 2xx
        answer built from the real response, else 0 (failed requests are not charged).
    :ivar authorized: whether the bearer token would pass the emulator's auth check.
    :ivar fault: the fault applied to this request, if any.
    :ivar wait: for a 429 from the emulator's rate limits, the exact seconds until the
        request would have been admitted (what ``Retry-After`` rounds up to whole seconds);
        ``None`` for other answers, and when no wait is known (a concurrency refusal) or
        none helps (a request over ``tpm`` on its own).
    :ivar fetched: the URLs fetched for the request's image and PDF items, in order.
    """

    method: str
    path: str
    body: dict[str, Any] | None
    status: int | None
    inputs: int
    tokens: int
    authorized: bool
    fault: Fault | None
    wait: float | None = None
    fetched: tuple[Fetched, ...] = ()

    @property
    def texts(self) -> list[str]:
        """The text inputs of the body, in order: ``input`` as a string, or each string and
        ``{"text": ...}`` item of its list; images and malformed items are left out."""
        value = self.body.get("input") if self.body is not None else None
        items = value if isinstance(value, list) else [value]
        texts: list[str] = []
        for item in items:
            if isinstance(item, dict) and len(item) == 1:
                item = item.get("text")
            if isinstance(item, str):
                texts.append(item)
        return texts


class FaultQueue:
    """A thread-safe FIFO of faults; each request takes the head, ``times`` counts down."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[tuple[Fault, int]] = deque()  # (fault, remaining uses)

    def push(self, *faults: Fault) -> None:
        with self._lock:
            self._queue.extend((fault, fault.times) for fault in faults)

    def take(self) -> Fault | None:
        with self._lock:
            if not self._queue:
                return None
            fault, remaining = self._queue.popleft()
            if remaining > 1:
                self._queue.appendleft((fault, remaining - 1))
            return fault

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(remaining for _, remaining in self._queue)
