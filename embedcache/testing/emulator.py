"""The public face of the emulator: lifecycle, request log, fault queue, expected vectors."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from types import TracebackType

import numpy as np
from numpy.typing import NDArray

from ..config import EMBEDDINGS_PATH
from .faults import Fault, FaultQueue, Gate, RecordedRequest
from .limits import LimitEnforcer, RateLimits
from .multivector import MULTI_VECTOR_PATH
from .pdfs import PDF_MAGIC
from .protocol import ApiError
from .rerank import parse_rerank, rerank_scores
from .response import request_multivectors, request_vectors
from .server import EmulatorServer
from .validation import EmbeddingRequest, parse_request
from .vectors import FLOAT_STYLES

__all__ = ["JinaEmulator"]

_JOIN_SECONDS = 5.0  # bound on waiting for threads in stop(); they normally end at once


class JinaEmulator:
    """A local stand-in for ``POST https://api.jina.ai/v1/embeddings``, over real HTTP.

    Vectors are deterministic (the same request gives the same float32 values in every
    process), requests are validated per model as the API documents, and tests can queue
    :class:`Fault` objects to make the next requests fail in chosen ways, or :meth:`hold`
    requests in flight until they release them, to synchronise on events instead of on
    latency. Every request is logged (:attr:`requests`, :meth:`received_texts`).

    >>> with JinaEmulator(api_key="jina_test") as emu:  # doctest: +SKIP
    ...     url = emu.url + "/v1/embeddings"
    ...     with emu.hold() as gate:  # the next request waits, in flight
    ...         ...  # send it from another thread
    ...         assert gate.arrived(1)
    ...         ...  # look at the client (or proxy) while its request is upstream
    ...     # leaving the block released it

    :param api_key: the only bearer token accepted; with ``None`` any non-empty one is.
    :param host: interface to bind.
    :param port: port to bind; 0 picks a free one.
    :param latency: the least time every request takes, computing the answer included
        (benchmarks); settable later.
    :param rate_limits: per-key request and token budgets and a concurrency cap, answered
        with 429s as the API does (see :class:`RateLimits`); ``None`` for none. Settable
        later.
    :param float_style: how ``float`` embeddings are written (reference §12): ``"float64"``,
        each float32 value with float64 round-trip digits (``0.09806419909000397``, the
        style the Milvus page's output shows), or ``"float32"``, its shortest digits
        (``0.0980642``, the docs playground's). Settable later.
    :param clock: monotonic seconds the rate limits' windows are measured by; a test that
        moves a clock of its own steps past a window instead of sleeping through it.
    :param fetch_remote_images: fetch image and PDF URLs on every host; by default only
        loopback ones are fetched and others are left opaque (seeded by the URL text, one
        tile), since tests have no network (``embedcache.testing.media``). Settable later.
    :param fetch_timeout: seconds one URL fetch may take in all. Settable later.
    :raises ValueError: an unknown ``float_style``.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        rate_limits: RateLimits | None = None,
        float_style: str = "float64",
        clock: Callable[[], float] = time.monotonic,
        fetch_remote_images: bool = False,
        fetch_timeout: float = 10.0,
    ) -> None:
        self._api_key = api_key
        #: Whether image and PDF URLs on non-loopback hosts are fetched (next request on).
        self.fetch_remote_images = fetch_remote_images
        #: Seconds one URL fetch may take in all (next request on).
        self.fetch_timeout = fetch_timeout
        self.float_style = float_style
        self._host = host
        self._port = port
        #: Seconds added to every request; may be changed while running.
        self.latency = latency
        #: Rate limits applied from the next request on; may be changed while running. The
        #: history (charges in the window, requests in flight) is kept across changes, but
        #: nothing is tracked while this is ``None``.
        self.rate_limits = rate_limits
        self._limiter = LimitEnforcer(clock)
        self._faults = FaultQueue()
        self._log: list[RecordedRequest] = []
        self._log_lock = threading.Lock()
        self._lifecycle_lock = threading.Lock()
        self._server: EmulatorServer | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    def __repr__(self) -> str:
        key = "'***'" if self._api_key is not None else "None"
        return f"JinaEmulator(url={self._url!r}, api_key={key})"

    @property
    def float_style(self) -> str:
        """How ``float`` embeddings are written from the next request on: ``"float64"`` or
        ``"float32"``.

        :raises ValueError: when set to anything else.
        """
        return self._float_style

    @float_style.setter
    def float_style(self, style: str) -> None:
        if style not in FLOAT_STYLES:
            raise ValueError(f"float_style must be one of {FLOAT_STYLES}, got {style!r}")
        self._float_style = style

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43121``; POST to ``url + "/v1/embeddings"``.

        Still answers after :meth:`stop` (the address is then closed), which lets tests
        point a client at a port that refuses connections.

        :raises RuntimeError: before the first :meth:`start`.
        """
        if self._url is None:
            raise RuntimeError("the emulator has not been started")
        return self._url

    def start(self) -> JinaEmulator:
        """Bind and serve in a daemon thread; returns ``self``.

        :raises RuntimeError: if it is already running.
        """
        with self._lifecycle_lock:
            if self._server is not None:
                raise RuntimeError("the emulator is already running")
            server = EmulatorServer((self._host, self._port), self)
            thread = threading.Thread(target=server.serve, name="jina-emulator", daemon=True)
            thread.start()
            host, port = server.socket.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            self._url = f"http://{shown}:{port}"
            self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving, end open connections and close the socket. Safe to call twice."""
        with self._lifecycle_lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None or thread is None:
            return
        server.stop_serving()
        thread.join(_JOIN_SECONDS)
        server.close_connections(_JOIN_SECONDS)
        server.server_close()

    def __enter__(self) -> JinaEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the request log, oldest first (dropped connections included)."""
        with self._log_lock:
            return list(self._log)

    def received_texts(self) -> list[str]:
        """Every text input the logged requests carried, oldest request first, each
        request's in order (see :attr:`RecordedRequest.texts`). Failed and dropped requests
        count: they were received, and a client that retries sends their texts again."""
        return [text for entry in self.requests for text in entry.texts]

    def inject(self, *faults: Fault) -> None:
        """Queue faults: each arriving request (any path) takes the next one, FIFO; a
        fault with ``times=n`` applies to ``n`` consecutive requests."""
        self._faults.push(*faults)

    def hold(self, times: int = 1) -> Gate:
        """Hold the next ``times`` requests in flight until the returned :class:`Gate` is
        released: ``inject(Fault(hold=gate, times=times))`` with a new gate (queued after
        any faults already waiting; build the ``Fault`` yourself to combine a hold with
        another fault). :meth:`Gate.arrived` waits for them to get there."""
        gate = Gate()
        self.inject(Fault(hold=gate, times=times))
        return gate

    def reset(self) -> None:
        """Clear the request log, every queued fault and the rate-limit budgets used so far
        (requests in flight still count against ``concurrency`` until answered)."""
        self._faults.clear()
        self._limiter.clear()
        with self._log_lock:
            self._log.clear()

    def expected_embedding(
        self,
        text: str | bytes,
        *,
        model: str = "jina-embeddings-v3",
        task: str | None = None,
        dimensions: int | None = None,
        normalized: bool = True,
    ) -> NDArray[np.float32]:
        """The float32 vector a non-late-chunking request returns for ``text``.

        ``text`` may also be the bytes of an image, or of a PDF (bytes starting with
        ``%PDF-``, jina-embeddings-v4 only): the vector any form of that image or PDF gets
        (base64, legacy ``{"bytes"}``, a fetched URL), since it is seeded by the bytes.

        It goes through the same validation and vector code as a request, so ``task``,
        ``dimensions`` and ``normalized`` are ignored for models without those fields, just
        as the server ignores them. A text over the model's token limit gives the vector a
        ``truncate: true`` request returns (without it the request fails).

        :raises ValueError: for an unknown model, task or out-of-range ``dimensions``, bytes
            that are no image or PDF, or media for a model that takes none.
        """
        body: dict[str, object] = {
            "task": task,
            "dimensions": dimensions,
            "normalized": normalized,
            "truncate": True,
        }
        return request_vectors(_expected_request(text, model, body))[0]

    def expected_multivector(
        self,
        content: str | bytes,
        *,
        model: str = "jina-embeddings-v4",
        task: str | None = None,
        input_type: str | None = None,
        dimensions: int | None = None,
    ) -> NDArray[np.float32]:
        """The ``(rows, dimensions)`` float32 array a multi-vector answer has for
        ``content`` (a text, or an image's or PDF's bytes as for
        :meth:`expected_embedding`): v4 with ``return_multivector``, or a ColBERT model
        (``input_type``, ``dimensions``) at ``/v1/multi-vector``.

        :raises ValueError: what the request would be refused for.
        """
        if model == "jina-embeddings-v4":
            body: dict[str, object] = {"task": task, "return_multivector": True}
            if dimensions is not None:
                body["dimensions"] = dimensions  # refused, as the server refuses it
        else:
            body = {"input_type": input_type, "dimensions": dimensions}
        body["truncate"] = True
        return request_multivectors(_expected_request(content, model, body))[0]

    def expected_scores(
        self,
        query: str,
        documents: list[str],
        *,
        model: str = "jina-reranker-v2-base-multilingual",
    ) -> list[float]:
        """Each document's ``relevance_score`` for ``query``, in document order, as
        ``POST /v1/rerank`` gives it (:mod:`.rerank`).

        :raises ValueError: what the request would be refused for.
        """
        try:
            request = parse_rerank({"model": model, "query": query, "documents": documents})
        except ApiError as error:
            raise ValueError(error.detail) from None
        return rerank_scores(request)

    def _record(self, entry: RecordedRequest) -> None:
        with self._log_lock:
            self._log.append(entry)


def _expected_request(
    content: str | bytes, model: str, fields: dict[str, object]
) -> EmbeddingRequest:
    """``content`` as a one-item request to ``model`` with ``fields``, validated."""
    item: object = content
    if isinstance(content, bytes):
        key = "pdf" if content.startswith(PDF_MAGIC) else "image"
        encoded = base64.b64encode(content).decode("ascii")
        item = {key: encoded} if key == "pdf" else [{key: encoded}]
    else:
        item = [content]
    path = MULTI_VECTOR_PATH if "input_type" in fields else EMBEDDINGS_PATH
    try:
        return parse_request({"model": model, "input": item, **fields}, path=path)
    except ApiError as error:
        raise ValueError(error.detail) from None
