"""Client keys upstream: one :class:`JinaClient` per key for its own misses, and asking the
upstream whether it takes a key (``--verify-keys``), at a bounded rate.

A key is verified with the cheapest request the API answers (one embedding of a one-letter
text, about one token), so a key is never trusted on the proxy's word alone. How often is
bounded twice: :class:`~embedcache.proxy.access.Access` asks about a given key at most once
per interval, and :class:`VerifyBudget` bounds how many verifications one worker starts per
second, so a client inventing keys cannot make the proxy flood the upstream.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from ..config import DEFAULT_MODEL
from ..errors import APIError, EmbedcacheError
from ..models import resolve_options
from ..upstream.jina import JinaClient
from .access import KeyRefused, KeyUnverifiable, digest

__all__ = ["Upstreams", "VerifyBudget"]

#: Most per-key clients kept (the least recently used goes first).
MAX_CLIENTS = 1024
# The probe, and the statuses that mean "this key is refused" (missing/invalid key, no
# balance) rather than "ask again later".
_PROBE = resolve_options(DEFAULT_MODEL, None, None)
_REFUSING = frozenset({401, 402, 403})


class Upstreams:
    """One :class:`JinaClient` per client key, sharing the server client's connection pool
    and rate limiter; found by the key's hash so the map holds no key in the clear beyond
    the clients themselves.

    :param server: the server's own client (its key pays when a client sends none).
    """

    def __init__(self, server: JinaClient) -> None:
        self.server = server
        self._by_key: OrderedDict[bytes, JinaClient] = OrderedDict()

    def get(self, key: str | None) -> JinaClient:
        """The client that sends with ``key`` (``None``: the server's)."""
        if key is None:
            return self.server
        hashed = digest(key)
        client = self._by_key.get(hashed)
        if client is None:
            client = self._by_key[hashed] = self.server.for_key(key)
            if len(self._by_key) > MAX_CLIENTS:
                self._by_key.popitem(last=False)
        else:
            self._by_key.move_to_end(hashed)
        return client

    def verify(self, key: str) -> None:
        """Ask the upstream whether it takes ``key`` (blocking; two attempts, not a fill's
        six).

        :raises KeyRefused: the upstream refuses it (401, 402, 403).
        :raises KeyUnverifiable: the upstream could not say (unreachable, 429, 5xx).
        """
        try:
            self.server.for_key(key, max_attempts=2).embed(["a"], _PROBE)
        except APIError as exc:
            if exc.status in _REFUSING:
                raise KeyRefused(exc.detail or str(exc)) from None
            raise KeyUnverifiable(f"status {exc.status}") from None
        except EmbedcacheError as exc:
            raise KeyUnverifiable(type(exc).__name__) from None


class VerifyBudget:
    """A token bucket: at most ``rate`` verifications started per second, in bursts of at
    most ``max(1, rate)``. Used on the event loop only (no lock).

    :param rate: verifications a second; 0 or less: no bound.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._at = time.monotonic()

    def take(self) -> int:
        """Spend one verification: 0 when allowed, else the whole seconds to wait until
        one would be (for ``Retry-After``)."""
        if self.rate <= 0:
            return 0
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - self._tokens) / self.rate))
