"""A shared cache tier on Redis (or Valkey), behind the same read/write calls as the disk store.

A team, a CI fleet or several proxy replicas each keep their own disk cache and share this
tier, so a text fetched by one is a hit for all. Keys are the disk store's keys; a value is
a 32-byte header (magic, dimension, millitokens, fingerprint id, checksum) followed by the
vector as raw little-endian float32, the same bytes and checks as a disk entry. Batches are
read with pipelined ``MGET`` (one round trip per call, never one per text) and written with
one pipeline.

Redis is an optimisation, never a dependency of correctness: when it is down or slow, every
call returns "nothing found" or skips the write after a bounded timeout, one warning is
logged per outage, and calls try again after a pause. Vectors fetched meanwhile are on local
disk, and ``embedcache sync`` can copy them up later.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from .config import (
    DEFAULT_REDIS_PREFIX,
    DEFAULT_REDIS_TIMEOUT_SECONDS,
    KEY_VERSION,
    resolve_redis_url,
)
from .entries import unsigned, vector_checksum
from .errors import InvalidInputError
from .keys import Fingerprint
from .store import FORMAT_VERSION, Found

__all__ = ["RedisStore", "decode_entry", "encode_entry", "open_shared"]

_HEADER = struct.Struct("<4sIqQQ")  # magic, dim, millitokens, fingerprint id, checksum
_MAGIC = b"ECv1"
_MGET_CHUNK = 1000  # keys per MGET inside the pipeline: bounded replies, one round trip
_RETRY_SECONDS = 5.0  # after a failure, calls skip Redis this long before trying again
_T = TypeVar("_T")

log = logging.getLogger("embedcache")


def encode_entry(vector: NDArray[np.float32], tokens: float, fp_id: int) -> bytes:
    """The value stored for one vector."""
    data = np.ascontiguousarray(vector, dtype="<f4")
    checksum = unsigned(vector_checksum(data))
    header = _HEADER.pack(_MAGIC, len(data), round(tokens * 1000), fp_id, checksum)
    return header + data.tobytes()


def decode_entry(value: bytes | None, dim: int | None) -> tuple[NDArray[np.float32], float] | None:
    """The vector and tokens of a stored value, or ``None`` when it is absent, of another
    dimension, or damaged (bad header, length or checksum)."""
    if value is None or len(value) < _HEADER.size:
        return None
    magic, size, millitokens, _, checksum = _HEADER.unpack_from(value)
    if (
        magic != _MAGIC
        or (dim is not None and size != dim)
        or len(value) != _HEADER.size + 4 * size
    ):
        return None
    vector = np.frombuffer(value, dtype="<f4", offset=_HEADER.size)
    if unsigned(vector_checksum(vector)) != checksum:
        return None
    return vector.astype(np.float32, copy=False), millitokens / 1000.0


def _display(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RedisStore:
    """Cached vectors in Redis, under ``<prefix>:<key version>.<format version>:<key hex>``.

    :param url: ``redis://[:password@]host[:port][/db]`` (or ``rediss://``, ``unix://``).
    :param prefix: namespace, so one Redis can hold several teams' caches.
    :param ttl: seconds each entry lives after it is written; ``None``: until Redis evicts it.
    :param timeout: seconds to wait for Redis on every call (connect and reply).
    :param retry_after: after a failure, seconds during which calls skip Redis.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_REDIS_PREFIX,
        ttl: int | None = None,
        timeout: float = DEFAULT_REDIS_TIMEOUT_SECONDS,
        retry_after: float = _RETRY_SECONDS,
    ) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise InvalidInputError(
                "a Redis tier needs the redis extra: pip install 'embedcache[redis]'"
            ) from None
        self.location = _display(url)
        self.prefix = prefix
        self.ttl = ttl
        self.retry_after = retry_after
        try:
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),  # the outage logic below decides when to retry
            )
        except ValueError as exc:  # a malformed URL; its text may hold the password
            raise InvalidInputError(
                f"bad Redis URL {self.location!r}: {type(exc).__name__}"
            ) from None
        self._failures: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        self._namespace = f"{prefix}:{KEY_VERSION}.{FORMAT_VERSION}:".encode()
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._outage = False
        self._known_fingerprints: set[int] = set()

    def __repr__(self) -> str:
        return f"RedisStore({self.location!r}, prefix={self.prefix!r}, ttl={self.ttl!r})"

    @property
    def available(self) -> bool:
        """Whether calls go to Redis right now (``False`` during the pause after a failure)."""
        return time.monotonic() >= self._down_until

    def close(self) -> None:
        self._client.close()

    def _name(self, key: bytes) -> bytes:
        return self._namespace + key.hex().encode()

    def _call(self, action: str, work: Callable[[], _T], fallback: _T) -> _T:
        """Run ``work`` against Redis, or return ``fallback`` while it is down."""
        if not self.available:
            return fallback
        try:
            result = work()
        except self._failures as exc:
            with self._lock:
                first = not self._outage
                self._outage = True
                self._down_until = time.monotonic() + self.retry_after
            if first:
                log.warning(
                    "shared cache %s unavailable (%s while trying to %s): serving from local "
                    "disk and the API, retrying every %.0f s",
                    self.location, type(exc).__name__, action, self.retry_after,
                )  # fmt: skip
            return fallback
        if self._outage:
            with self._lock:
                self._outage = False
            log.warning("shared cache %s is back", self.location)
        return result

    def read_many(self, keys: Sequence[bytes], dim: int | None = None) -> Found:
        """Look up every key in one round trip; like :meth:`Store.read_many`."""
        names = [self._name(key) for key in keys]

        def fetch() -> list[bytes | None]:
            pipe = self._client.pipeline(transaction=False)
            for start in range(0, len(names), _MGET_CHUNK):
                pipe.mget(names[start : start + _MGET_CHUNK])
            return [value for chunk in pipe.execute() for value in chunk]

        nothing: list[bytes | None] = [None] * len(names)
        values = self._call("read", fetch, nothing) if names else nothing
        decoded = []
        for value in values:
            entry = decode_entry(value, dim)
            if entry is not None and dim is None:
                dim = len(entry[0])
            decoded.append(entry)
        vectors = np.zeros((len(keys), dim or 0), dtype=np.float32)
        present = np.zeros(len(keys), dtype=bool)
        tokens = np.zeros(len(keys), dtype=np.float64)
        for i, entry in enumerate(decoded):
            if entry is not None and len(entry[0]) == dim:
                vectors[i], tokens[i], present[i] = entry[0], entry[1], True
        return Found(present, vectors, tokens)

    def put_many(
        self, fp: Fingerprint, entries: Sequence[tuple[bytes, NDArray[np.float32], float]]
    ) -> None:
        """Write ``(key, vector, tokens)`` entries in one pipeline (skipped while down)."""
        if not entries:
            return

        def write() -> None:
            pipe = self._client.pipeline(transaction=False)
            if fp.id not in self._known_fingerprints:
                pipe.hsetnx(f"{self.prefix}:fingerprints", f"{fp.id:016x}", fp.canonical)
            for key, vector, tokens in entries:
                pipe.set(self._name(key), encode_entry(vector, tokens, fp.id), ex=self.ttl)
            pipe.execute()
            self._known_fingerprints.add(fp.id)

        self._call("write", write, None)


def open_shared(
    url: str | None, *, prefix: str = DEFAULT_REDIS_PREFIX, ttl: int | None = None
) -> RedisStore | None:
    """The shared tier at ``url`` (else ``EMBEDCACHE_REDIS_URL``), or ``None`` when neither
    is set. Nothing is sent until the first read or write."""
    resolved = resolve_redis_url(url)
    return RedisStore(resolved, prefix=prefix, ttl=ttl) if resolved else None
