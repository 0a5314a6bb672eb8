"""The bytes behind an image or PDF item: base64 decoded, or an http(s) URL fetched.

The emulator's rules (the statuses and the fetch policy are choices; the reference gives
only "Images up to 8MB; PDFs up to 8MB" and "http/https URLs", §2.1, §2.3):

- A value starting with ``<scheme>://`` is a URL; only ``http`` and ``https`` are taken,
  any other scheme is a 422 naming the field. Anything else is base64 (standard alphabet,
  padding required; line breaks and spaces are dropped first, as MIME wraps it); what does
  not decode is a 400 (so is a ``data:`` URI: the sources show only raw base64).
- Loopback URLs (``localhost``, ``127.0.0.0/8``, ``::1``) are fetched: that is where tests
  serve images. Other hosts are fetched only with ``JinaEmulator(fetch_remote_images=True)``;
  by default their images are *opaque*: seeded by the URL text and charged one tile, since
  tests have no network (and the emulator's earlier tests send ``https://example.com/...``).
- A fetch follows up to 5 redirects, ignores proxy variables, and must answer 200 with at
  most 8 MiB within ``fetch_timeout`` seconds in all; anything else is a 400 that says what
  went wrong (the URL's user and password are never shown). Decoded base64 has the same
  8 MiB bound.
- Every fetch, good or bad, is recorded (:class:`~embedcache.testing.Fetched`) in the
  request's log entry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
import time
from urllib.parse import urlsplit, urlunsplit

import httpx

from .faults import Fetched
from .protocol import INPUT_VALIDATION_ERROR, ApiError, validation_error

__all__ = ["MAX_MEDIA_BYTES", "MediaLoader", "shown_url"]

#: The most bytes one image or PDF may have, decoded or fetched (reference §2.1: 8 MB).
MAX_MEDIA_BYTES = 8 * 1024 * 1024
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_WHITESPACE = re.compile(rb"\s+")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def shown_url(url: str) -> str:
    """``url`` with any user and password replaced by ``***``, for error text and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MediaLoader:
    """Turns one request's image and PDF values into bytes, and remembers what it fetched.

    One loader serves one request (its :attr:`fetched` goes into that request's log entry).

    :param fetch_remote: fetch URLs on any host, not only loopback ones.
    :param timeout: seconds one fetch may take in all.
    """

    def __init__(self, *, fetch_remote: bool = False, timeout: float = 10.0) -> None:
        self._fetch_remote = fetch_remote
        self._timeout = timeout
        #: What this request fetched, in order.
        self.fetched: list[Fetched] = []

    def load(self, value: str, where: str, *, url: bool = True, raw: bool = True) -> bytes | None:
        """The bytes ``value`` stands for, or ``None`` for a URL left opaque (see above).

        :param where: the field, as error text names it (``input.2.image``).
        :param url: whether a URL is allowed here (not in legacy ``{"bytes": ...}``).
        :param raw: whether base64 is allowed here (not in legacy ``{"url": ...}``).
        :raises ApiError: 422 for a URL scheme other than http(s) or a value of the wrong
            form, 400 for undecodable base64, a failed fetch or more than 8 MiB.
        """
        scheme = _SCHEME.match(value)
        if scheme is not None and url:
            if scheme.group(1).lower() not in ("http", "https"):
                raise validation_error(
                    where, "URL scheme should be 'http' or 'https'", "url_scheme"
                )
            if not (self._fetch_remote or _is_loopback(urlsplit(value).hostname)):
                return None
            return self._fetch(value, where)
        if not raw:
            raise validation_error(where, "Input should be a valid URL", "url_parsing")
        return _decode(value, where)

    def _fetch(self, url: str, where: str) -> bytes:
        shown = shown_url(url)
        deadline = time.monotonic() + self._timeout
        status: int | None = None
        body = bytearray()
        try:
            with (
                httpx.Client(
                    trust_env=False, timeout=self._timeout, follow_redirects=True, max_redirects=5
                ) as client,
                client.stream("GET", url) as response,
            ):
                status = response.status_code
                if status != 200:
                    raise self._failed(url, status, len(body), where, f"HTTP {status}")
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_MEDIA_BYTES:
                        raise self._failed(url, status, len(body), where, "more than 8 MiB")
                    if time.monotonic() > deadline:
                        raise self._failed(url, status, len(body), where, "too slow")
        except httpx.HTTPError as error:
            # The exception's text may carry the URL, userinfo included: name its type only.
            raise self._failed(url, status, len(body), where, type(error).__name__) from None
        data = bytes(body)
        digest = hashlib.sha256(data).hexdigest()
        self.fetched.append(Fetched(shown, status, len(data), digest, None))
        return data

    def _failed(self, url: str, status: int | None, size: int, where: str, why: str) -> ApiError:
        shown = shown_url(url)
        self.fetched.append(Fetched(shown, status, size, None, why))
        return ApiError(400, INPUT_VALIDATION_ERROR, f"{where}: could not fetch {shown}: {why}")


def _decode(value: str, where: str) -> bytes:
    compact = _WHITESPACE.sub(b"", value.encode("utf-8", "surrogatepass"))
    if len(compact) > (MAX_MEDIA_BYTES + 2) // 3 * 4:
        raise ApiError(400, INPUT_VALIDATION_ERROR, f"{where}: more than 8 MiB")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            400,
            INPUT_VALIDATION_ERROR,
            f"{where}: neither an http(s) URL nor valid base64",
        ) from None
