"""Defaults as named constants, and every environment variable embedcache reads.

:data:`ENVIRONMENT` lists those variables, and each has its name's constant here: code
elsewhere reads them through these constants. Most are read here (``resolve_*``); the rate
limits by :func:`~embedcache.upstream.limiter.resolve_limits`, and the price and the proxy's
tokens by the command line (as click defaults).

Precedence everywhere is: explicit argument, then environment variable, then default.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.parse
from pathlib import Path

from .errors import AuthenticationError, InvalidInputError

VERSION = "0.1.0"

DEFAULT_BASE_URL = "https://api.jina.ai"
EMBEDDINGS_PATH = "/v1/embeddings"
RERANK_PATH = "/v1/rerank"
#: Where the proxy also reranks: TEI's and vLLM's path (told apart by the body), and Cohere's.
TEI_RERANK_PATH = "/rerank"
COHERE_RERANK_PATH = "/v2/rerank"
#: Every path the proxy reranks at: a request-log line with one of these routes is a rerank.
RERANK_ROUTES = frozenset({RERANK_PATH, TEI_RERANK_PATH, COHERE_RERANK_PATH})
DEFAULT_MODEL = "jina-embeddings-v3"
DEFAULT_RERANK_MODEL = "jina-reranker-v2-base-multilingual"
#: Most documents per rerank request of a pointwise model (only the uncached documents are
#: sent, in requests of at most this many). Jina's own per-request limit is UNCONFIRMED:
#: this is a choice that keeps requests small enough to commit often.
DEFAULT_RERANK_BATCH_SIZE = 64
DEFAULT_TASK = "retrieval.passage"

#: Estimated tokens per upstream request. Jina documents no per-request total, so this
#: keeps requests small enough to commit often and to stay far under per-minute limits.
DEFAULT_MAX_BATCH_TOKENS = 64_000
DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_CONNECT_TIMEOUT_SECONDS = 10.0
#: Seconds between flushes of an embedder's counters to the cache's lifetime counters, when
#: it has counted something since the last one (also flushed after each fill, on close and
#: at exit): what a killed process can lose of them, without a write per hit.
COUNTER_FLUSH_SECONDS = 30.0
#: Attempts per batch, the first one included.
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_BACKOFF_BASE_SECONDS = 0.5
DEFAULT_BACKOFF_CAP_SECONDS = 30.0
#: Upper bound on how long one honoured ``Retry-After`` may make us wait.
MAX_RETRY_AFTER_SECONDS = 120.0

#: Dollars per million tokens for cost estimates. Jina publishes no price list in our
#: reference; $0.05/1M is the one figure in its API spec (an example for v3), so every
#: figure derived from it is labelled an estimate.
DEFAULT_PRICE_PER_MILLION_TOKENS = 0.05

#: Bumped whenever the way request fields or texts map to cache keys changes.
KEY_VERSION = 1

#: The shared Redis tier: its key namespace and per-call timeout.
DEFAULT_REDIS_PREFIX = "embedcache"
DEFAULT_REDIS_TIMEOUT_SECONDS = 0.5
#: Per-call timeout of the maintenance commands (sync, stats, verify), which move whole
#: pages of entries per call and wait for Redis rather than fall back.
REDIS_MAINTENANCE_TIMEOUT_SECONDS = 30.0

# The environment. Names only: a token's variable is not a secret.
API_KEY_ENV_VARS = ("JINAAI_API_KEY", "JINA_API_KEY")
CACHE_DIR_ENV = "EMBEDCACHE_DIR"
BASE_URL_ENV = "EMBEDCACHE_BASE_URL"
OFFLINE_ENV = "EMBEDCACHE_OFFLINE"
REDIS_URL_ENV = "EMBEDCACHE_REDIS_URL"
PRICE_ENV = "EMBEDCACHE_PRICE_PER_MILLION_TOKENS"
TIER_ENV = "EMBEDCACHE_TIER"
RPM_ENV = "EMBEDCACHE_RPM"
TPM_ENV = "EMBEDCACHE_TPM"
CONCURRENT_REQUESTS_ENV = "EMBEDCACHE_CONCURRENT_REQUESTS"
#: The old name of :data:`CONCURRENT_REQUESTS_ENV`, still read (with a warning): it was
#: mistaken for ``--max-concurrency``.
OLD_CONCURRENT_REQUESTS_ENV = "EMBEDCACHE_MAX_CONCURRENCY"
PROXY_TOKEN_ENV = "EMBEDCACHE_PROXY_TOKEN"  # noqa: S105
ADMIN_TOKEN_ENV = "EMBEDCACHE_ADMIN_TOKEN"  # noqa: S105
UPSTREAM_AS_ENV = "EMBEDCACHE_UPSTREAM_AS"

#: Every variable of embedcache's own, and what it sets: the one list the tests scrub, and
#: the README's configuration table.
ENVIRONMENT: dict[str, str] = {
    API_KEY_ENV_VARS[0]: "Jina API key (first choice)",
    API_KEY_ENV_VARS[1]: "Jina API key (when JINAAI_API_KEY is unset)",
    CACHE_DIR_ENV: "cache directory",
    BASE_URL_ENV: "API root",
    OFFLINE_ENV: "hits only, misses fail (1, true, yes or on)",
    REDIS_URL_ENV: "shared Redis tier",
    PRICE_ENV: "dollars per million tokens, for cost estimates",
    TIER_ENV: "pace requests to this Jina account tier's limits",
    RPM_ENV: "requests per minute to stay under",
    TPM_ENV: "tokens per minute to stay under",
    CONCURRENT_REQUESTS_ENV: "requests in flight at once, per account",
    OLD_CONCURRENT_REQUESTS_ENV: f"old name of {CONCURRENT_REQUESTS_ENV} (read, with a warning)",
    PROXY_TOKEN_ENV: "embedcache serve: the bearer token clients must send",
    ADMIN_TOKEN_ENV: "embedcache serve: the bearer token of /metrics and /admin",
    UPSTREAM_AS_ENV: "cache as if answered by this upstream (a gateway in front of it)",
}
#: Platform conventions read only for the default cache directory; tests point them at a
#: temporary directory rather than scrub them.
PLATFORM_ENVIRONMENT = ("XDG_CACHE_HOME", "LOCALAPPDATA")

_TRUE = {"1", "true", "yes", "on"}


def resolve_api_key(explicit: str | None) -> str:
    """Return the API key: the argument, else ``JINAAI_API_KEY``, else ``JINA_API_KEY``.

    :raises AuthenticationError: when none of them is set.
    """
    if explicit:
        return explicit
    for name in API_KEY_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    # The library's words (a Python caller can pass api_key=); the CLI and the proxy word
    # it for their users from `variables`.
    raise AuthenticationError(
        "no Jina API key: pass api_key= or set " + " or ".join(API_KEY_ENV_VARS),
        variables=API_KEY_ENV_VARS,
    )


def resolve_base_url(explicit: str | None) -> str:
    """Return the API base URL (argument, ``EMBEDCACHE_BASE_URL``, default), without a
    trailing slash."""
    url = explicit or os.environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL
    return url.rstrip("/")


# What the URL functions below take apart, as RFC 3986 does: the authority starts after
# "scheme://" (or "//", or at once without a scheme) and ends at the first "/", "?" or "#";
# its userinfo is everything before its last "@". An "@" in a path or query is no userinfo.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: Query parameters whose values are credentials (redis-py reads ``?password=``, for one).
_SECRET_PARAMS = re.compile(
    r"(?i)([?&;](?:password|passwd|pass|pwd|secret|token|access_token|api_key|apikey|key)=)"
    r"([^&;#]*)"
)


def _split_url(url: str) -> tuple[str, str, str]:
    """``url`` as ``(scheme and "://" or "//" or "", authority, path query and fragment)``."""
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme else 2 if url.startswith("//") else 0
    ends = [at for at in (url.find(mark, start) for mark in "/?#") if at >= 0]
    end = min(ends, default=len(url))
    return url[:start], url[start:end], url[end:]


def redact_url(url: str) -> str:
    """``url`` as it may be shown (messages, logs, banners, metrics, files): any
    ``user:password@`` (or ``token@``) replaced by ``***@``, and the values of query
    parameters that hold credentials (``password=``, ``token=``, ``key=``...) by ``***``,
    so no credential in a URL is ever printed. The rest (host, IPv6 literal, port, path)
    stays as given."""
    head, authority, tail = _split_url(url)
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return head + authority + _SECRET_PARAMS.sub(r"\1***", tail)


def without_userinfo(url: str) -> str:
    """``url`` without its ``user:password@``, if it has one (the query is kept)."""
    head, authority, tail = _split_url(url)
    return head + authority.rpartition("@")[2] + tail


def upstream_id(url: str) -> str:
    """The name under which entries fetched from ``url`` are cached: the URL without
    credentials, query or fragment, its scheme and host in lower case, a default port and a
    trailing slash dropped (``https://API.jina.ai:443/`` is ``https://api.jina.ai``). A
    value without a scheme (a name given to ``--upstream-as``) is kept as written.

    :raises InvalidInputError: ``url`` cannot be parsed (an unclosed ``[`` of an IPv6 host).
    """
    url = url.strip()
    if not _SCHEME.match(url):
        return url
    try:
        parts = urllib.parse.urlsplit(without_userinfo(url))
    except ValueError as exc:  # "http://[bad": no host can be made of it
        raise InvalidInputError(f"{redact_url(url)!r} is not a valid URL ({exc})") from None
    scheme, host = parts.scheme.lower(), parts.netloc.lower()
    default_port = {"https": ":443", "http": ":80"}.get(scheme)
    if default_port and host.endswith(default_port):
        host = host[: -len(default_port)]
    return f"{scheme}://{host}{parts.path}".rstrip("/")


#: The upstream whose entries carry no upstream in their key: Jina's API, the default, so
#: every entry written before upstreams were recorded keeps its key (and is read as Jina's).
DEFAULT_UPSTREAM_ID = upstream_id(DEFAULT_BASE_URL)


def resolve_upstream_id(base_url: str | None, upstream_as: str | None = None) -> str:
    """The upstream entries are cached under: ``upstream_as`` (else ``EMBEDCACHE_UPSTREAM_AS``),
    a declared equivalence such as a gateway in front of Jina's API, else the base URL's
    own (:func:`upstream_id`).

    :raises InvalidInputError: ``upstream_as`` is blank.
    """
    declared = upstream_as if upstream_as is not None else os.environ.get(UPSTREAM_AS_ENV)
    if declared is not None and declared.strip():
        return upstream_id(declared)
    if upstream_as is not None:
        raise InvalidInputError("the upstream to cache as is empty")
    try:
        return upstream_id(resolve_base_url(base_url))
    except InvalidInputError as exc:
        if base_url:
            raise
        raise InvalidInputError(f"{BASE_URL_ENV}: {exc}") from None


def url_secrets(url: str) -> frozenset[str]:
    """The credentials ``url`` holds, as written and percent-decoded: its userinfo, the
    password in it, and the values of credential query parameters (see :func:`redact_url`).
    A user name beside a password is not one of them; a userinfo without a password (a
    token) is."""
    _, authority, tail = _split_url(url)
    found: set[str] = set()
    if "@" in authority:
        userinfo = authority.rpartition("@")[0]
        found.add(userinfo)
        _, colon, password = userinfo.partition(":")
        if colon:
            found.add(password)
    found.update(match.group(2) for match in _SECRET_PARAMS.finditer(tail))
    found |= {urllib.parse.unquote(secret) for secret in found}
    return frozenset(found - {""})


def redact_text(text: str, url: str) -> str:
    """``text`` (an error message, a library's exception text) with ``url`` shown as
    :func:`redact_url` shows it and every credential of ``url`` replaced by ``***``
    wherever else it appears."""
    secrets = url_secrets(url)
    if not secrets:
        return text
    text = text.replace(url, redact_url(url))
    for secret in sorted(secrets, key=len, reverse=True):  # "user:pw" before "pw"
        text = text.replace(secret, "***")
    return text


def resolve_offline(explicit: bool | None) -> bool:
    """Return whether misses must raise instead of reaching the network."""
    if explicit is not None:
        return explicit
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE


def default_cache_dir() -> Path:
    """The platform's per-user cache directory for embedcache."""
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
        return base / "embedcache" / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "embedcache"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else home / ".cache") / "embedcache"


def resolve_cache_dir(explicit: str | os.PathLike[str] | None) -> Path:
    """Return the cache directory: argument, else ``EMBEDCACHE_DIR``, else the platform
    default."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get(CACHE_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else default_cache_dir()


def resolve_redis_url(explicit: str | None) -> str | None:
    """The shared tier's URL: the argument, else ``EMBEDCACHE_REDIS_URL``, else none."""
    return explicit or os.environ.get(REDIS_URL_ENV) or None
