"""The load generator of ``bench/proxy_load.py``: a minimal asyncio HTTP/1.1 client.

Why not httpx: a load test's client shares the machine with the server under test, so its
own cost is part of what is measured. httpx's AsyncClient was measured at ~210 requests/s
against the floor on this machine with 50 connections, 20x less than this client, so it
would have measured itself. This one keeps one keep-alive connection per client (on uvloop
when installed), speaks just enough HTTP/1.1 for the servers tested here (every response
has a Content-Length), and parses and checks every response.

It also holds what every request of the benchmark looks like (key, model, task, dimension,
texts per request), which the servers and the workload share.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import orjson
from numpy.typing import NDArray

KEY = "jina_bench_key_for_the_bundled_emulator_only"
MODEL, TASK, DIM = "jina-embeddings-v3", "retrieval.passage", 1024
HOST = "127.0.0.1"
MAX_TEXTS = 8  # texts per request: 1..MAX_TEXTS
CACHED_HEADER = b"x-embedcache-cached"
GRACE_SECONDS = 30.0  # after --time-limit, in-flight requests get this long to finish
T = TypeVar("T")


def body_of(texts: Sequence[str]) -> bytes:
    return orjson.dumps({"model": MODEL, "task": TASK, "input": list(texts)})


# A minimal HTTP/1.1 client


class ProtocolError(Exception):
    """A response this client cannot delimit (no Content-Length)."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def parse_head(raw: bytes) -> tuple[int, dict[bytes, bytes]]:
    status_line, *lines = raw.rstrip(b"\r\n").split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(b" ", 2)[1]), headers


class Connection:
    """One keep-alive connection; just enough HTTP/1.1 for the servers tested here (every
    response has a Content-Length). Reconnects after an error or ``Connection: close``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    def head(self, method: str, path: str, length: int) -> bytes:
        return (
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()

    async def connect(self) -> None:
        if self._streams is None:
            self._streams = await asyncio.open_connection(HOST, self.port)

    async def request(self, head: bytes, body: bytes = b"") -> Reply:
        await self.connect()
        assert self._streams is not None
        reader, writer = self._streams
        try:
            writer.write(head + body)
            status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
            if b"content-length" not in headers:
                raise ProtocolError("a response without Content-Length")
            payload = await reader.readexactly(int(headers[b"content-length"]))
        except BaseException:
            self.close()
            raise
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return Reply(status, headers, payload)

    async def get(self, path: str) -> Reply:
        return await self.request(self.head("GET", path, 0))

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when installed (the client's cost matters here)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(work)
    return uvloop.run(work)


# Driving load


@dataclass
class LoadResult:
    """What one pass of requests did, seen from the clients."""

    seconds: float
    latency_ms: NDArray[np.float64]  # per request, in issue order; NaN if it did not succeed
    errors: Counter[str] = field(default_factory=Counter)
    tokens: int = 0  # usage.total_tokens summed over responses
    cached_inputs: int = 0  # the X-Embedcache-Cached header summed over responses
    unsent: int = 0  # requests not issued before the time limit

    @property
    def ok(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.latency_ms)))

    @property
    def rps(self) -> float:
        return self.ok / self.seconds

    def percentiles(self, where: NDArray[np.bool_] | None = None) -> tuple[float, float]:
        values = self.latency_ms if where is None else self.latency_ms[where]
        values = values[~np.isnan(values)]
        if not len(values):
            return float("nan"), float("nan")
        p50, p99 = np.percentile(values, [50, 99])
        return float(p50), float(p99)


class BadReply(Exception):
    """A response that is not a good embeddings answer."""


def tokens_of(reply: Reply, texts: int) -> int:
    """``usage.total_tokens`` of an embeddings answer with ``texts`` vectors of ``DIM``.

    :raises BadReply: for anything else.
    """
    if reply.status != 200:
        raise BadReply(f"HTTP {reply.status}")
    try:
        answer = orjson.loads(reply.body)
        data, tokens = answer["data"], int(answer["usage"]["total_tokens"])
        shape_ok = len(data) == texts and len(data[0]["embedding"]) == DIM
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
        raise BadReply("unreadable body") from None
    if not shape_ok:
        raise BadReply("wrong shape")
    return tokens


async def drive(
    port: int, bodies: Sequence[bytes], sizes: Sequence[int], clients: int, time_limit: float
) -> LoadResult:
    """Send ``bodies`` from ``clients`` connections, each taking the next unsent body; stop
    issuing after ``time_limit`` seconds, and abandon what is still in flight
    ``GRACE_SECONDS`` later (counted as errors).

    The connections are opened one at a time before the clock starts: the emulator listens
    with Python's default backlog of 5, and 50 simultaneous connects overflow it (dropped
    SYNs are retried after 1, 3, 7... s), which would measure TCP retries, not the server.
    """
    result = LoadResult(0.0, np.full(len(bodies), np.nan))
    queue = iter(range(len(bodies)))
    connections = [Connection(port) for _ in range(clients)]
    for connection in connections:
        with contextlib.suppress(OSError):  # counted when its first request fails
            await connection.connect()
    deadline = time.perf_counter() + time_limit

    async def client(connection: Connection) -> None:
        try:
            for i in queue:
                if time.perf_counter() > deadline:
                    result.unsent += 1
                    continue
                head = connection.head("POST", "/v1/embeddings", len(bodies[i]))
                start = time.perf_counter()
                try:
                    reply = await connection.request(head, bodies[i])
                    elapsed = time.perf_counter() - start
                    result.tokens += tokens_of(reply, sizes[i])
                except (
                    OSError,
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                    ProtocolError,
                ) as exc:
                    result.errors[type(exc).__name__] += 1
                    continue
                except BadReply as exc:
                    result.errors[str(exc)] += 1
                    continue
                result.latency_ms[i] = elapsed * 1000
                result.cached_inputs += int(reply.headers.get(CACHED_HEADER, b"0"))
        finally:
            connection.close()

    started = time.perf_counter()
    tasks = [asyncio.create_task(client(connection)) for connection in connections]
    _, pending = await asyncio.wait(tasks, timeout=time_limit + GRACE_SECONDS)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    result.seconds = time.perf_counter() - started
    if pending:  # each was waiting for one answer
        result.errors["abandoned after the time limit"] += len(pending)
    result.unsent += sum(1 for _ in queue)
    return result


def load(
    port: int, bodies: Sequence[bytes], sizes: Sequence[int], clients: int, time_limit: float
) -> LoadResult:
    return run_async(drive(port, bodies, sizes, clients, time_limit))


def fetch(port: int, path: str) -> Reply:
    async def once() -> Reply:
        connection = Connection(port)
        try:
            return await connection.get(path)
        finally:
            connection.close()

    return asyncio.run(once())
