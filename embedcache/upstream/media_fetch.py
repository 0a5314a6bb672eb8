"""Fetching images and PDFs given by URL, to key them by their content.

By default an image given by URL is keyed by the URL and the API fetches it
(:mod:`embedcache.inputs`). With fetching on (``JinaEmbeddingFunction(fetch_images=True)``;
``serve --fetch-images-from HOST``, only for the hosts listed, since it makes the server
fetch what clients name), embedcache fetches it first, keys it by the SHA-256 of the bytes,
and sends the bytes: new content at an old URL is a new entry, and the same image by URL
and by base64 is one entry.

Every fetch is bounded: ``http``/``https`` only, :data:`~embedcache.inputs.MAX_MEDIA_BYTES`
read at most, at most :data:`MAX_REDIRECTS` redirects, each to a host the fetcher allows, no
proxy variables followed. The fetches of one request (:meth:`MediaFetcher.fetch_all`) share
one deadline and one byte total (:data:`DEFAULT_TOTAL_BYTES`), so a request naming many
slow or large URLs holds a thread and memory for a bounded time and size, not per URL. A
URL's credentials never reach an error message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from urllib.parse import urljoin, urlsplit

import httpx

from ..config import redact_url
from ..errors import InvalidInputError, TransportError
from ..inputs import MAX_MEDIA_BYTES, Input, Media, media_bytes

__all__ = ["DEFAULT_FETCH_SECONDS", "DEFAULT_TOTAL_BYTES", "MAX_REDIRECTS", "MediaFetcher"]

#: The deadline of one request's fetches, redirects included.
DEFAULT_FETCH_SECONDS = 20.0
#: The most bytes fetched for one request, all its URLs together.
DEFAULT_TOTAL_BYTES = 64 * 1024 * 1024
#: Redirects followed at most.
MAX_REDIRECTS = 5


class MediaFetcher:
    """Fetches :class:`~embedcache.inputs.Media` given by URL; thread-safe.

    :param hosts: the hosts whose URLs it fetches (lower case; ``None``: any host).
    :param timeout: the deadline of one request's fetches, in seconds.
    :param max_bytes: the most bytes one image or PDF may have.
    :param max_total_bytes: the most bytes fetched for one request.
    """

    def __init__(
        self,
        hosts: frozenset[str] | None = None,
        *,
        timeout: float = DEFAULT_FETCH_SECONDS,
        max_bytes: int = MAX_MEDIA_BYTES,
        max_total_bytes: int = DEFAULT_TOTAL_BYTES,
    ) -> None:
        self.hosts = None if hosts is None else frozenset(host.lower() for host in hosts)
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._max_total = max_total_bytes
        self._lock = threading.Lock()
        self._http: httpx.Client | None = None

    def __repr__(self) -> str:
        hosts = "any host" if self.hosts is None else ", ".join(sorted(self.hosts))
        return f"MediaFetcher({hosts})"

    def fetches(self, media: Media) -> bool:
        """Whether ``media`` is given by a URL of a host this fetcher fetches."""
        return media.url is not None and self._allowed(media.url)

    def fetch_all(self, items: Sequence[Input], where: Callable[[int], str]) -> list[Input]:
        """``items`` with each image or PDF it :meth:`fetches` keyed and sent by its content
        (``where(i)`` names item ``i`` in errors), under one deadline and one byte total.

        :raises InvalidInputError: a URL that answered an error status or redirected to a
            host not allowed, content over the size limit, or more than the total.
        :raises TransportError: no answer within the deadline.
        """
        deadline = time.monotonic() + self._timeout
        room = self._max_total
        fetched: list[Input] = []
        for index, item in enumerate(items):
            if isinstance(item, Media) and self.fetches(item):
                item = self._by_content(item, where(index), deadline, room)
                assert item.data is not None
                room -= len(item.data)
            fetched.append(item)
        return fetched

    def _by_content(self, media: Media, where: str, deadline: float, room: int) -> Media:
        assert media.url is not None
        shown = redact_url(media.url)
        url = media.url
        for _ in range(MAX_REDIRECTS + 1):
            data, moved = self._get(url, deadline, where, shown, room)
            if moved is None:
                return media_bytes(media.kind, data, f"{where} ({shown})")
            url = urljoin(url, moved)
            if not self._allowed(url):
                raise InvalidInputError(
                    f"{where}: {shown} redirects to {redact_url(url)}, a host not fetched"
                )
        raise InvalidInputError(f"{where}: {shown} redirects more than {MAX_REDIRECTS} times")

    def close(self) -> None:
        """Close the connections."""
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def _allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            return False
        return self.hosts is None or parts.hostname.lower() in self.hosts

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                # Redirects followed by hand (each hop's host checked), no proxy variables.
                self._http = httpx.Client(follow_redirects=False, trust_env=False)
            return self._http

    def _get(
        self, url: str, deadline: float, where: str, shown: str, room: int
    ) -> tuple[bytes, str | None]:
        """The body of ``url`` (or where it redirects to), within the deadline, the size of
        one image and the ``room`` left of the request's total."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransportError(f"{where}: fetching {shown} passed the {self._late}")
        limit = min(self._max_bytes, room)
        try:
            with self._client().stream("GET", url, timeout=left) as answer:
                if answer.is_redirect and "location" in answer.headers:
                    return b"", answer.headers["location"]
                if answer.status_code != 200:
                    raise InvalidInputError(
                        f"{where}: fetching {shown} answered HTTP {answer.status_code}"
                    )
                chunks, size = [], 0
                # As the bytes arrive (no chunk size: httpx would wait to fill one), so the
                # deadline is looked at after every read, however slowly a server drips.
                for chunk in answer.iter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise InvalidInputError(self._too_big(where, shown, limit))
                    if time.monotonic() > deadline:
                        raise TransportError(f"{where}: fetching {shown} passed the {self._late}")
                    chunks.append(chunk)
                return b"".join(chunks), None
        except httpx.HTTPError as exc:
            kind = type(exc).__name__
            raise TransportError(f"{where}: cannot fetch {shown}: {kind}") from None

    @property
    def _late(self) -> str:
        return f"{self._timeout:g} s one request's fetches may take"

    def _too_big(self, where: str, shown: str, limit: int) -> str:
        if limit == self._max_bytes:
            return f"{where}: {shown} is over {self._max_bytes:,} bytes, the API's limit"
        return (
            f"{where}: {shown} takes the images fetched for one request over "
            f"{self._max_total:,} bytes"
        )
