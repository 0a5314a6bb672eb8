"""A shared cache tier on Redis (or Valkey), behind the same read/write calls as the disk store.

A team, a CI fleet or several proxy replicas each keep their own disk cache and share this
tier, so a text fetched by one is a hit for all. Keys are the disk store's keys; a value is
a 32-byte header (magic, dimension, millitokens, fingerprint id, checksum) followed by the
vector as raw little-endian float32, the same bytes and checks as a disk entry (a payload of
another kind, a 40-byte header and its bytes: :mod:`~embedcache.storage.formats`). Batches are
read with pipelined ``MGET`` (a round trip per few megabytes of values, never one per text)
and written with one pipeline. A Redis Cluster is named by its own URL scheme,
``redis+cluster://host:port[,host:port...]`` (:mod:`~embedcache.storage.redis_clients`):
keys spread over its slots, a batch's reads are split by slot, and everything else works
the same.

Redis is an optimisation, never a dependency of correctness: when it is down or slow, every
call returns "nothing found" or skips the write after a bounded timeout, one warning is
logged per outage, and calls try again after a pause. Vectors fetched meanwhile are on local
disk, and ``embedcache sync`` can copy them up later.

Maintenance (``embedcache sync``, ``stats``, ``verify``) opens the store with ``strict=True``
instead: there Redis is the point of the call, so a failure raises
:class:`~embedcache.errors.SharedCacheError`. Its calls walk the namespace with ``SCAN`` and
handle each page of names in one pipelined round trip (``MGET``, ``EXISTS``, ``STRLEN``,
``DEL``), never one round trip per key.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar, cast

import numpy as np
from numpy.typing import NDArray

from ..cache_keys import Fingerprint
from ..config import (
    DEFAULT_REDIS_PREFIX,
    DEFAULT_REDIS_TIMEOUT_SECONDS,
    KEY_VERSION,
    redact_url,
    resolve_redis_url,
    url_secrets,
    without_userinfo,
)
from ..errors import InvalidInputError, SharedCacheError
from ..extras import requires
from .entries import Found, FoundPayloads, KeyedVectors
from .formats import (
    check_entry,
    decode_into,
    encode_entry,
    fingerprint_record,
    first_dim,
    value_size,
)
from .payloads import PAYLOAD_VALUES, Payload
from .redis_clients import Outage, check_url, connect, is_cluster_url
from .store import FORMAT_VERSION

__all__ = ["RedisStore", "Usage", "open_shared"]

_MGET_CHUNK = 1000  # keys per MGET inside the pipeline: bounded replies
# Payloads per round trip of read_payloads: tens of MB of multi-vector values at most.
_PAYLOAD_TRIP_KEYS = 128
# Values per round trip: a few MB, decoded before the next is asked for, so memory stays
# bounded and the same memory is used again (fresh pages cost more than the copy on some
# VMs); between these bounds of keys, so small vectors still come in few round trips.
_ROUND_TRIP_BYTES = 16 << 20
_ROUND_TRIP_KEYS = (1000, 10_000)
_RETRY_SECONDS = 5.0  # after a failure, calls skip Redis this long before trying again
_SCAN_BATCH = 1000  # names per SCAN page in maintenance calls
_GLOB_SPECIAL = frozenset(b"*?[]\\")
_T = TypeVar("_T")

log = logging.getLogger("embedcache")


#: Told of each round trip's intact values (for copying them to local disk): its keys, the
#: values Redis sent, which of them are intact, and their dimension. A plain callable type,
#: so the public ``read_many`` names no type of the package's insides.
Served = Callable[[Sequence[bytes], list[bytes | None], NDArray[np.bool_], int], None]


def _trip_keys(dim: int | None) -> int:
    """Keys per round trip for values of ``dim`` dimensions (the fewest when unknown)."""
    low, high = _ROUND_TRIP_KEYS
    return low if dim is None else max(low, min(high, _ROUND_TRIP_BYTES // value_size(dim)))


class Usage(NamedTuple):
    """What a namespace holds: entries, and bytes of their values (keys and Redis's own
    overhead not included)."""

    entries: int
    bytes: int


def _glob_escape(text: bytes) -> bytes:
    """``text`` matched literally by a ``SCAN ... MATCH`` pattern."""
    return b"".join(b"\\" + bytes([c]) if c in _GLOB_SPECIAL else bytes([c]) for c in text)


class RedisStore:
    """Cached vectors in Redis, under ``<prefix>:<key version>.<format version>:<key hex>``.

    :param url: ``redis://[:password@]host[:port][/db]`` (or ``rediss://``, ``unix://``), or
        a Redis Cluster's ``redis+cluster://[:password@]host:port[,host:port...]`` (or
        ``rediss+cluster://``).
    :param prefix: namespace, so one Redis can hold several teams' caches.
    :param ttl: seconds each entry lives after it is written; ``None``: until Redis evicts it.
    :param timeout: seconds to wait for Redis on every call (connect and reply).
    :param retry_after: after a failure, seconds during which calls skip Redis.
    :param strict: raise :class:`~embedcache.errors.SharedCacheError` when Redis fails,
        instead of the fallback (for maintenance commands, where Redis is the point).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_REDIS_PREFIX,
        ttl: int | None = None,
        timeout: float = DEFAULT_REDIS_TIMEOUT_SECONDS,
        retry_after: float = _RETRY_SECONDS,
        strict: bool = False,
    ) -> None:
        with requires("redis"):
            import redis
        # Shown without its userinfo at all, as always: a Redis URL's userinfo is credentials.
        self.location = redact_url(without_userinfo(url))
        self.prefix = prefix
        self.ttl = ttl
        self.retry_after = retry_after
        self.strict = strict
        self._secrets = url_secrets(url)
        #: A Redis Cluster: reads split by slot, the namespace walked node by node.
        self.cluster = is_cluster_url(url)
        self._connect = functools.partial(connect, url, timeout)
        self._connected: Any = None
        try:
            check_url(url)
            if not self.cluster:  # a cluster client connects as it is made: on first use
                self._connected = self._connect()
        except ValueError as exc:  # a malformed URL; its text may hold the password
            raise InvalidInputError(
                f"bad Redis URL {self.location!r}: {type(exc).__name__}"
            ) from None
        # RedisClusterException: a cluster client's own (no node reachable, no slot map).
        self._failures: tuple[type[Exception], ...] = (
            redis.RedisError, redis.exceptions.RedisClusterException, OSError
        )  # fmt: skip
        # What a cluster node answers a client that is not a cluster client.
        self._cluster_replies: tuple[type[Exception], ...] = (
            () if self.cluster
            else (redis.exceptions.MovedError, redis.exceptions.ClusterCrossSlotError)
        )  # fmt: skip
        self._namespace = f"{prefix}:{KEY_VERSION}.{FORMAT_VERSION}:".encode()
        self._lock = threading.Lock()
        self._outage = Outage(retry_after)
        self._known_fingerprints: set[int] = set()
        # One hash of ``<fingerprint id hex>: canonical JSON`` for the whole prefix.
        self._fingerprints = f"{prefix}:fingerprints"

    def __repr__(self) -> str:
        return f"RedisStore({self.location!r}, prefix={self.prefix!r}, ttl={self.ttl!r})"

    @property
    def available(self) -> bool:
        """Whether calls go to Redis right now (``False`` during the pause after a failure)."""
        return self._outage.available

    def close(self) -> None:
        if self._connected is not None:
            self._connected.close()

    @property
    def _client(self) -> Any:
        """The redis-py client, made on first use (inside :meth:`_call`: a cluster's client
        connects as it is made, and may fail)."""
        if self._connected is None:
            with self._lock:
                if self._connected is None:
                    self._connected = self._connect()
        return self._connected

    def _name(self, key: bytes) -> bytes:
        return self._namespace + key.hex().encode()

    def _call(self, action: str, work: Callable[[], _T], fallback: _T) -> _T:
        """Run ``work`` against Redis, or return ``fallback`` while it is down."""
        if not self.available:
            return fallback
        try:
            result = work()
        except self._failures as exc:
            hint = ""
            if isinstance(exc, self._cluster_replies):
                hint = " (a Redis Cluster node: name the cluster as redis+cluster://host:port)"
            if self.strict:
                raise SharedCacheError(
                    f"shared cache {self.location} failed while trying to {action}: "
                    f"{type(exc).__name__}: {self._redact(str(exc))}{hint}"
                ) from None
            if self._outage.failed():
                log.warning(
                    "shared cache %s unavailable (%s while trying to %s%s): serving from "
                    "local disk and the API, retrying every %.0f s",
                    self.location, type(exc).__name__, action, hint, self.retry_after,
                )  # fmt: skip
            return fallback
        if self._outage.succeeded():
            log.warning("shared cache %s is back", self.location)
        return result

    def _redact(self, message: str) -> str:
        """The first line of an error ``message``, without the URL's password."""
        line = message.splitlines()[0] if message else ""
        for secret in self._secrets:
            line = line.replace(secret, "***")
        return line

    def read_many(
        self, keys: Sequence[bytes], dim: int | None = None, served: Served | None = None
    ) -> Found:
        """Look up every key; like :meth:`Store.read_many`. Each round trip carries a few MB
        of values (pipelined ``MGET``s; on a cluster, one per slot), decoded into the result
        as it arrives with no Python object per value, so memory stays bounded and an outage
        mid-read keeps what already came.

        :param served: told of each round trip's intact values, which it may keep (the
            values are immutable; the result's rows are the caller's).
        """
        names = [self._name(key) for key in keys]
        present = np.zeros(len(keys), dtype=bool)
        tokens = np.zeros(len(keys), dtype=np.float64)
        vectors: NDArray[np.float32] | None = None
        scratch: NDArray[Any] | None = None  # one buffer for every round trip's values
        start = 0
        while start < len(names):
            stop = start + _trip_keys(dim)
            values = self._call("read", functools.partial(self._mget, names[start:stop]), None)
            if values is None:
                break  # Redis went away: misses from here on
            dim = dim or first_dim(values)
            if dim is not None:
                if vectors is None:
                    vectors = np.zeros((len(keys), dim), dtype=np.float32)
                if scratch is None:
                    scratch = np.empty(_trip_keys(dim), dtype=f"S{value_size(dim)}")
                ok = decode_into(values, dim, start, (vectors, present, tokens), scratch)
                if served is not None and ok.any():
                    served(keys[start:stop], values, ok, dim)
            start = stop
        if vectors is None:
            vectors = np.zeros((len(keys), dim or 0), dtype=np.float32)
        return Found(present, vectors, tokens)

    def read_payloads(self, keys: Sequence[bytes], served: Served | None = None) -> FoundPayloads:
        """Each key's entry, of whatever kind; like :meth:`Store.read_payloads`. A round trip
        asks for :data:`_PAYLOAD_TRIP_KEYS` values (a multi-vector value runs to hundreds of
        KB); each value is checked whole (:func:`check_entry`).

        :param served: told of each round trip's intact values, with dimension
            :data:`~embedcache.storage.payloads.PAYLOAD_VALUES` (they are of many kinds and sizes).
        """
        names = [self._name(key) for key in keys]
        found: list[Payload | None] = [None] * len(keys)
        tokens = np.zeros(len(keys), dtype=np.float64)
        for start in range(0, len(names), _PAYLOAD_TRIP_KEYS):
            stop = start + _PAYLOAD_TRIP_KEYS
            values = self._call("read", functools.partial(self._mget, names[start:stop]), None)
            if values is None:
                break  # Redis went away: misses from here on
            ok = np.zeros(len(values), dtype=bool)
            for i, value in enumerate(values):
                entry = check_entry(value) if value is not None else None
                if entry is None or isinstance(entry, str):
                    continue
                ok[i] = True
                found[start + i] = entry[0].copy()  # the caller's own, as from disk
                tokens[start + i] = entry[1]
            damaged = len(values) - int(ok.sum()) - values.count(None)
            if damaged:
                log.warning("ignoring %d damaged shared cache entries", damaged)
            if served is not None and ok.any():
                served(keys[start:stop], values, ok, PAYLOAD_VALUES)
        return FoundPayloads(found, tokens)

    def _mget(self, names: list[bytes]) -> list[bytes | None]:
        if self.cluster:  # split by slot: one MGET per slot, a pipeline per node
            return cast("list[bytes | None]", self._client.mget_nonatomic(names))
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(names), _MGET_CHUNK):
            pipe.mget(names[start : start + _MGET_CHUNK])
        return [value for chunk in pipe.execute() for value in chunk]

    def put_many(self, fp: Fingerprint, entries: KeyedVectors) -> None:
        """Write ``(key, vector, tokens)`` entries in one pipeline (skipped while down); a
        "vector" may be a payload of another kind (:meth:`Store.put_payloads`)."""
        if not entries:
            return

        def write() -> None:
            pipe = self._client.pipeline(transaction=False)
            record = fp.id not in self._known_fingerprints
            if record:
                # Set only if absent and read back, in the same round trip: concurrent first
                # writers all end up with the one record, whoever wrote it.
                pipe.hsetnx(self._fingerprints, f"{fp.id:016x}", fp.canonical)
                pipe.hget(self._fingerprints, f"{fp.id:016x}")
            for key, vector, tokens in entries:
                pipe.set(self._name(key), encode_entry(vector, tokens, fp.id), ex=self.ttl)
            replies = pipe.execute()
            if record:
                self._settle_fingerprint(fp, replies[1])

        self._call("write", write, None)

    def _settle_fingerprint(self, fp: Fingerprint, stored: bytes | None) -> None:
        """Make sure the record of ``fp`` is the one Redis holds, given what it held just
        after the ``HSETNX``.

        A record is right when its JSON hashes to its field's id: then it is ``fp``'s (a
        64-bit collision aside). One that does not (damaged, or written by something else)
        would hide these entries' settings from ``sync`` for good, so it is replaced; every
        writer that replaces it writes the same bytes, so racing ones still agree.
        """
        if stored is None or fingerprint_record(fp.id, stored) is None:
            self._client.hset(self._fingerprints, f"{fp.id:016x}", fp.canonical)
        self._known_fingerprints.add(fp.id)

    # Maintenance: meant for strict stores (a lenient one sees an unreachable Redis as empty).

    def ping(self) -> bool:
        """Whether Redis answers (a strict store raises instead of returning ``False``)."""
        return self._call("ping", lambda: bool(self._client.ping()), False)

    def _pages(self, batch: int) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """The namespace as pages of ``(Redis names, keys)``, one ``SCAN`` round trip each.

        ``SCAN`` sees every entry present for the whole walk at least once; one written or
        deleted meanwhile may or may not show, and one may show twice if Redis resizes its
        table during the walk.
        """
        nodes: list[Any] = [None]  # the only node
        if self.cluster:  # every primary holds part of the namespace
            nodes = self._call("scan", lambda: list(self._client.get_primaries()), [])
        for node in nodes:
            yield from self._node_pages(batch, node)

    def _node_pages(self, batch: int, node: Any) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """:meth:`_pages` of one node (``None``: the only one)."""
        pattern = _glob_escape(self._namespace) + b"*"
        skip = len(self._namespace)
        where = {} if node is None else {"target_nodes": node}

        def scan_from(cursor: int) -> tuple[int, list[bytes]]:
            after, names = self._client.scan(cursor, match=pattern, count=batch, **where)
            if isinstance(after, dict):  # a cluster's: the cursor of each node asked
                after = next(iter(after.values()), 0)
            return int(after), cast("list[bytes]", names)  # bytes: no decode_responses

        cursor = 0
        while True:
            nothing: tuple[int, list[bytes]] = (0, [])
            cursor, names = self._call("scan", functools.partial(scan_from, cursor), nothing)
            mine: tuple[list[bytes], list[bytes]] = ([], [])
            for name in names:
                try:
                    key = bytes.fromhex(name[skip:].decode("ascii"))
                except (UnicodeDecodeError, ValueError):
                    continue  # not a name this store writes: left alone
                if len(key) == 16:
                    mine[0].append(name)
                    mine[1].append(key)
            if mine[0]:
                yield mine
            if cursor == 0:
                return

    def _pipelined(self, action: str, names: Sequence[bytes], command: str) -> list[Any]:
        """``command`` on every name in one pipeline: one round trip."""

        def run() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for name in names:
                getattr(pipe, command)(name)
            return list(pipe.execute())

        return self._call(action, run, [None] * len(names)) if names else []

    def raw_values(self, batch: int = _SCAN_BATCH) -> Iterator[tuple[bytes, bytes]]:
        """Every entry under the namespace as ``(key, stored value)``, undecoded and
        unchecked (see :func:`check_entry`; ``sync`` and ``verify`` judge them): one
        ``SCAN`` and one ``MGET`` round trip per page of ``batch`` names."""

        for names, keys in self._pages(batch):
            nothing: list[bytes | None] = [None] * len(names)
            values = self._call("read", functools.partial(self._mget, names), nothing)
            for key, value in zip(keys, values, strict=True):
                if value is not None:  # gone since the SCAN (deleted, expired)
                    yield key, value

    def count(self, batch: int = _SCAN_BATCH) -> int:
        """Entries under the namespace (one ``SCAN`` round trip per page of names)."""
        return sum(len(keys) for _, keys in self._pages(batch))

    def usage(self, batch: int = _SCAN_BATCH) -> Usage:
        """Entries under the namespace and bytes of their values, one ``SCAN`` and one
        pipelined ``STRLEN`` round trip per page: the values themselves are not sent."""
        entries = size = 0
        for names, _ in self._pages(batch):
            lengths = self._pipelined("measure", names, "strlen")
            entries += sum(1 for n in lengths if n)
            size += sum(int(n or 0) for n in lengths)
        return Usage(entries, size)

    def contains_many(self, keys: Sequence[bytes]) -> list[bool]:
        """Whether each key has an entry (not read or checked): one pipelined ``EXISTS``
        round trip."""
        return [bool(n) for n in self._pipelined("check", [self._name(k) for k in keys], "exists")]

    def delete_many(self, keys: Sequence[bytes]) -> int:
        """Delete entries in one pipelined round trip; returns how many existed."""
        names = [self._name(key) for key in keys]
        return sum(int(n or 0) for n in self._pipelined("delete", names, "delete"))

    def fingerprints(self) -> dict[int, Fingerprint]:
        """The request settings recorded with the entries, by fingerprint id (one
        ``HGETALL``); a record whose JSON does not hash to its id is left out."""

        def fetch() -> dict[bytes, bytes]:
            return cast("dict[bytes, bytes]", self._client.hgetall(self._fingerprints))

        nothing: dict[bytes, bytes] = {}
        raw = self._call("read", fetch, nothing)
        out: dict[int, Fingerprint] = {}
        for field, canonical in raw.items():
            try:
                fp_id = int(field, 16)
            except ValueError:
                continue
            fp = fingerprint_record(fp_id, canonical)
            if fp is not None:
                out[fp_id] = fp
        return out


def open_shared(
    url: str | None,
    *,
    prefix: str = DEFAULT_REDIS_PREFIX,
    ttl: int | None = None,
    timeout: float = DEFAULT_REDIS_TIMEOUT_SECONDS,
    strict: bool = False,
) -> RedisStore | None:
    """The shared tier at ``url`` (else ``EMBEDCACHE_REDIS_URL``), or ``None`` when neither
    is set. Nothing is sent until the first call. See :class:`RedisStore` for the rest."""
    resolved = resolve_redis_url(url)
    if not resolved:
        return None
    return RedisStore(resolved, prefix=prefix, ttl=ttl, timeout=timeout, strict=strict)
