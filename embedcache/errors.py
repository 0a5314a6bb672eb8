"""Every error embedcache raises, under one root.

::

    EmbedcacheError
     ├── InvalidInputError     bad texts or options, raised before any request (also a ValueError)
     ├── APIError              the API answered with an error (status, code, detail, request_id)
     │    ├── AuthenticationError   no key, or the API refused it (401/403)
     │    └── RateLimitError        429 still returned after the last retry
     ├── TransportError        no usable HTTP answer after the last retry (timeouts, resets)
     ├── ResponseFormatError   a 2xx answer that cannot be trusted; nothing of it is cached
     ├── CacheMissError        misses in offline mode (carries the count)
     ├── MissingDependencyError  an optional feature's extra is not installed (also an ImportError)
     └── CacheError            the cache directory cannot be used
          ├── CacheFormatError      written by an incompatible format or key version
          └── SharedCacheError      the shared Redis tier cannot be reached (maintenance only)

Messages are single lines and never contain the API key.
"""

from __future__ import annotations

__all__ = [
    "APIError",
    "AuthenticationError",
    "CacheError",
    "CacheFormatError",
    "CacheMissError",
    "EmbedcacheError",
    "InvalidInputError",
    "MissingDependencyError",
    "RateLimitError",
    "ResponseFormatError",
    "SharedCacheError",
    "TransportError",
]


class EmbedcacheError(Exception):
    """Root of every error raised by embedcache."""


class InvalidInputError(EmbedcacheError, ValueError):
    """Texts or options that cannot be sent; raised before any request."""


class APIError(EmbedcacheError):
    """The Jina API answered with an error status.

    :ivar status: HTTP status, or ``None`` when no request was made.
    :ivar code: Jina's machine-readable ``code`` field, when present.
    :ivar detail: Jina's human-readable ``detail``, when present.
    :ivar request_id: Jina's ``request_id``, when present.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        detail: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.detail = detail
        self.request_id = request_id


class AuthenticationError(APIError):
    """No API key was available, or the API refused the one given.

    :ivar variables: when no key was available, the environment variables one is read from
        (the message names them and ``api_key=``; the CLI and the proxy say it in their
        users' terms from this); empty when the API refused a key.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        detail: str | None = None,
        request_id: str | None = None,
        variables: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, status=status, code=code, detail=detail, request_id=request_id)
        self.variables = variables


class RateLimitError(APIError):
    """The API kept answering 429 until the retry budget ran out."""


class TransportError(EmbedcacheError):
    """No usable HTTP response after the last retry (timeouts, refused or reset connections)."""


class ResponseFormatError(EmbedcacheError):
    """A successful-looking response that cannot be trusted (bad JSON, wrong count or
    dimension, non-finite values). Nothing from it is cached."""


class CacheMissError(EmbedcacheError):
    """Offline mode met texts that are not cached.

    :ivar misses: how many distinct entries were missing.
    """

    def __init__(self, message: str, *, misses: int) -> None:
        super().__init__(message)
        self.misses = misses


class MissingDependencyError(EmbedcacheError, ImportError):
    """An optional feature was used without the extra that installs its packages; the
    message says which extra, and the ``pip install`` command.

    Also an :class:`ImportError`, the usual way to catch a missing optional package.

    :ivar extra: the extra to install, as in ``pip install 'embedcache[EXTRA]'``.
    :ivar name: the module that could not be imported, as on any ``ImportError``.
    """

    def __init__(self, message: str, *, extra: str, name: str | None = None) -> None:
        super().__init__(message, name=name)
        self.extra = extra


class CacheError(EmbedcacheError):
    """The cache directory cannot be opened or used."""


class CacheFormatError(CacheError):
    """The cache directory was written with an incompatible format or key version."""


class SharedCacheError(CacheError):
    """The shared Redis tier cannot be reached or refused a command.

    Raised only where Redis is the point of the call (``embedcache sync``, and ``stats`` and
    ``verify`` with a Redis URL); embedding calls fall back to local disk and the API instead.
    """
