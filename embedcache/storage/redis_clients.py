"""The redis-py client for a shared tier's URL: one server, or a Redis Cluster.

A cluster is named by its own scheme, so nothing has to be guessed from the server:
``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://`` for
TLS), the same query options as ``redis://``. Any one reachable node is enough to find the
rest; more make the first connection survive a node that is down. Keys are spread over the
cluster's slots by their whole name (no hash tag), so a batch of reads is split by slot:
one ``MGET`` per slot, the slots of each node in one pipeline (redis-py's
``mget_nonatomic``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["CLUSTER_SCHEMES", "Outage", "check_url", "connect", "is_cluster_url"]

#: A cluster URL's scheme, and the scheme of one of its nodes.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (its scheme is one of :data:`CLUSTER_SCHEMES`)."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def _node(address: str) -> tuple[str, int]:
    """``host[:port]`` (an IPv6 host in brackets) as ``(host, port)``, 6379 by default."""
    host, colon, port = address.rpartition(":")
    if not colon or host.endswith(":"):  # no port, or a bare IPv6 address
        host, port = address, "6379"
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ValueError("a node is not host:port")
    return host, int(port)


def _cluster_parts(url: str) -> tuple[str, list[tuple[str, int]], str]:
    """A cluster URL as (a node's URL up to its host, the nodes, the path and query).

    :raises ValueError: a malformed URL.
    """
    scheme, _, rest = url.partition("://")
    end = min((at for at in (rest.find("/"), rest.find("?")) if at >= 0), default=len(rest))
    userinfo, at, hosts = rest[:end].rpartition("@")
    nodes = [_node(address) for address in hosts.split(",") if address]
    if not nodes:
        raise ValueError("no host:port")
    return f"{CLUSTER_SCHEMES[scheme.lower()]}://{userinfo}{at}", nodes, rest[end:]


def check_url(url: str) -> None:
    """Check ``url`` as :func:`connect` reads it, without connecting.

    :raises ValueError: a malformed cluster URL (its text may hold the password).
    """
    if is_cluster_url(url):
        _cluster_parts(url)


def connect(url: str, timeout: float) -> Any:
    """A client for ``url`` whose calls wait at most ``timeout`` seconds and are never
    retried (the shared tier decides when to try again).

    A single server's client connects on its first command; a cluster's connects here, to
    learn the slots, so call this where a failure is handled.

    :raises ValueError: a malformed URL (its text may hold the password: do not show it).
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)
    from redis.cluster import ClusterNode, RedisCluster

    head, nodes, tail = _cluster_parts(url)
    (host, port), others = nodes[0], nodes[1:]
    shown = f"[{host}]" if ":" in host else host  # an IPv6 literal, bracketed again
    return RedisCluster(
        url=f"{head}{shown}:{port}{tail}",
        startup_nodes=[ClusterNode(host, port) for host, port in others],  # type: ignore[no-untyped-call]
        retry=Retry(NoBackoff(), 0),
        **options,
    )


class Outage:
    """Whether a Redis is taken as down: after a failure, for ``retry_after`` seconds calls
    skip it (no wait on a dead server per call); the first failure since the last success
    starts an outage, the next success ends it (one warning each, by the caller)."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._ongoing = False

    @property
    def available(self) -> bool:
        """Whether calls go to Redis right now (``False`` during the pause after a failure)."""
        return time.monotonic() >= self._down_until

    @property
    def ongoing(self) -> bool:
        """Whether the last call failed."""
        return self._ongoing

    def failed(self) -> bool:
        """Note a failure (the pause starts again); whether it starts an outage."""
        with self._lock:
            first = not self._ongoing
            self._ongoing = True
            self._down_until = time.monotonic() + self.retry_after
        return first

    def succeeded(self) -> bool:
        """Note a success; whether it ends an outage."""
        if not self._ongoing:  # the common case: no lock
            return False
        with self._lock:
            ended, self._ongoing = self._ongoing, False
        return ended
