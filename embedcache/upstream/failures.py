"""What each httpx exception means to a caller of the API: which of ours it becomes, and
whether another attempt may succeed.

One table, so every exception httpx can raise has exactly one answer
(``tests/test_client_failures.py`` checks that each class httpx exports is covered, as
httpx's own ``test_httpcore_all_exceptions_mapped`` does for httpcore's).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from ..errors import EmbedcacheError, InvalidInputError, ResponseFormatError, TransportError

__all__ = ["HTTPX_EXCEPTIONS", "HTTPX_FAILURES", "failure_of"]


@dataclass(frozen=True)
class Failure:
    """What an httpx exception means.

    :ivar error: the exception of ours it is raised as.
    :ivar retry: another attempt may get an answer (the request may also have reached the
        API, so its cost estimate is kept).
    :ivar doing: what failed, before the URL, in a message for a failure not retried.
    """

    error: type[EmbedcacheError]
    retry: bool
    doing: str = "cannot send to"


#: Most specific first: the first class an exception is an instance of decides.
HTTPX_FAILURES: tuple[tuple[type[Exception], Failure], ...] = (
    # Our request cannot be sent as it is: the same one would fail again.
    (httpx.UnsupportedProtocol, Failure(TransportError, retry=False)),
    (httpx.LocalProtocolError, Failure(TransportError, retry=False)),
    (httpx.InvalidURL, Failure(InvalidInputError, retry=False)),
    # The network or the server dropped it: the next attempt may get through.
    (httpx.TimeoutException, Failure(TransportError, retry=True)),
    (httpx.NetworkError, Failure(TransportError, retry=True)),
    (httpx.RemoteProtocolError, Failure(TransportError, retry=True)),
    (httpx.ProxyError, Failure(TransportError, retry=True)),
    # An answer whose body cannot be decoded is malformed: raised, never cached, not retried
    # (a malformed answer is a bug to see, not noise to wait out).
    (httpx.DecodingError, Failure(ResponseFormatError, False, "cannot decode the answer of")),
    # Not raised by how the client uses httpx (no redirects followed, no raise_for_status,
    # no streaming, no cookies), mapped so that none can ever escape as httpx's own.
    (httpx.TooManyRedirects, Failure(TransportError, retry=False)),
    (httpx.HTTPStatusError, Failure(TransportError, retry=False)),
    (httpx.StreamError, Failure(TransportError, retry=False)),
    (httpx.CookieConflict, Failure(TransportError, retry=False)),
    (httpx.HTTPError, Failure(TransportError, retry=False)),
)

#: Everything :data:`HTTPX_FAILURES` covers, for one ``except`` clause.
HTTPX_EXCEPTIONS: tuple[type[Exception], ...] = tuple(kind for kind, _ in HTTPX_FAILURES)


def failure_of(exc: Exception) -> Failure:
    """The entry of :data:`HTTPX_FAILURES` for ``exc``.

    :raises TypeError: ``exc`` is not an httpx exception of the table.
    """
    for kind, failure in HTTPX_FAILURES:
        if isinstance(exc, kind):
            return failure
    raise TypeError(f"not an httpx exception: {type(exc).__name__}")
