"""What the cache did for each embedding request: the ``X-Embedcache-*`` headers on its
answer, and its line in the request log (``serve --request-log FILE``).

One :class:`RequestRecord` per request, filled by the route that answers it (the hit path,
``/v1/embeddings``, TEI's ``/embed``; a refusal at the headers with what is known), gives
both. A line is one JSON object, keys in the order the README's "What the cache did"
shows, never a text nor a key: the caller's key only as ``k_`` and the first 12 hex
digits of its SHA-256.

Several workers (and servers) append to one file: each batch of whole lines
(:mod:`.outcomes` hands them over every tenth of a second) is one ``write`` to a descriptor
opened with ``O_APPEND``, so lines never interleave (a write cut short by a full disk aside).
Rotation by size: the writer that finds the file over ``max_bytes`` takes an ``flock`` on
it, looks again (another may have rotated meanwhile) and renames ``FILE`` → ``FILE.1`` →
... ``FILE.N``; the others notice the new file within a second (:data:`_REOPEN_SECONDS`)
and reopen it, their lines meanwhile going whole to ``FILE.1``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import orjson
import xxhash

from .access import key_name

__all__ = [
    "DEFAULT_BACKUPS",
    "DEFAULT_MAX_BYTES",
    "HITS_HEADER",
    "MISSES_HEADER",
    "STATUS_HEADER",
    "TOKENS_SAVED_HEADER",
    "RequestLog",
    "RequestRecord",
    "Served",
    "cache_status",
    "caller_hash",
    "check_writable",
    "request_digest",
    "status_headers",
]

log = logging.getLogger("embedcache")

#: Response headers: what the cache did (``hit``: every distinct text from the cache,
#: ``miss``: none, ``partial``), distinct texts served from it and fetched, and the tokens
#: the texts served from it cost when they were fetched.
STATUS_HEADER = "X-Embedcache-Status"
HITS_HEADER = "X-Embedcache-Hits"
MISSES_HEADER = "X-Embedcache-Misses"
TOKENS_SAVED_HEADER = "X-Embedcache-Tokens-Saved"

#: ``--request-log-max-size`` and ``--request-log-backups`` defaults.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_BACKUPS = 3

# How stale a writer's idea of which file is current may be after another process rotated
# it: a stat of the path once a second, not per line.
_REOPEN_SECONDS = 1.0
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


def caller_hash(bearer: str) -> str | None:
    """``k_`` and the first 12 hex digits of the SHA-256 of the caller's key (the bearer
    value as sent); ``None`` without one.

    >>> caller_hash("secret")
    'k_2bb80d537b1d'
    >>> caller_hash("") is None
    True
    """
    return key_name(bearer) if bearer else None


def request_digest(asked: Sequence[bytes]) -> str:
    """``r_`` and 16 hex digits of the XXH3 of a request's entry keys, in order (the keys
    cover the model, every setting and the text): equal for the same request again. Like
    the cache's own keys it cannot be read back into text, though it can confirm a guess.

    >>> request_digest([b"a" * 16]) == request_digest([b"a" * 16])
    True
    """
    return "r_" + xxhash.xxh3_64_hexdigest(b"".join(asked))


def cache_status(hits: int, misses: int) -> str:
    """``hit`` (nothing fetched), ``miss`` (nothing from the cache) or ``partial``."""
    if not misses:
        return "hit"
    return "partial" if hits else "miss"


@dataclass(slots=True)
class RequestRecord:
    """One embedding request as its log line and status headers tell it; the routes fill
    what they learn (``-1``/``None``: not known), the log adds the time.

    :ivar route: the path served.
    :ivar dialect: ``jina``, ``openai`` or ``tei``.
    :ivar key: the caller's key hash (:func:`caller_hash`), never the key.
    :ivar texts: inputs in the request.
    :ivar hits: distinct texts served from the cache (stored, or fetched meanwhile by
        another request).
    :ivar misses: distinct texts fetched upstream for this request.
    :ivar cache: :func:`cache_status` once answered from the cache's work; ``None`` when
        refused or failed.
    :ivar at: when it was answered (``time.time()``; set as it is handed over,
        :mod:`.outcomes`).
    :ivar digest: for a request that fetched anything, :func:`request_digest` of what it
        asked for: the same again means the cache did not keep it (``analyze``'s "could
        still save"); ``None`` for hits and refusals.
    """

    route: str
    dialect: str
    key: str | None = None
    model: str | None = None
    task: str | None = None
    dimensions: int | None = None
    texts: int = 0
    hits: int = 0
    misses: int = 0
    tokens_spent: int = 0
    tokens_saved: float = 0.0
    ms: float = 0.0
    status: int = 0
    cache: str | None = None
    at: float = 0.0
    digest: str | None = None

    def answered(
        self, hits: int, misses: int, spent: int, saved: float, asked: Sequence[bytes] = ()
    ) -> None:
        """Note what the cache did for a request answered with embeddings; ``asked``: the
        entry keys of its texts (or a body passed through), digested when anything missed."""
        self.hits, self.misses = hits, misses
        self.tokens_spent, self.tokens_saved = spent, saved
        self.cache = cache_status(hits, misses)
        if misses and asked:
            self.digest = request_digest(asked)

    def line(self) -> bytes:
        """The request log line (newline included)."""
        return self.line_with(self.middle())

    def middle(self) -> bytes:
        """The line's fields from ``route`` to ``tokens_saved``: the same for every hit of
        one caller on one request (:class:`RequestLog` writes it once for them)."""
        return orjson.dumps(
            {
                "route": self.route,
                "dialect": self.dialect,
                "key": self.key,
                "model": self.model,
                "task": self.task,
                "dimensions": self.dimensions,
                "texts": self.texts,
                "hits": self.hits,
                "misses": self.misses,
                "tokens_spent": self.tokens_spent,
                "tokens_saved": round(self.tokens_saved),
            }
        )[1:-1]

    def line_with(self, middle: bytes) -> bytes:
        """The line, given its :meth:`middle`."""
        return self.line_at(middle, self.at, self.ms)

    def line_at(self, middle: bytes, at: float, ms: float) -> bytes:
        """The line of a request like this one, answered at ``at`` in ``ms``: every hit of
        one caller on one request body shares its record and :meth:`middle`."""
        cache = _CACHE_TEXT.get(self.cache) or orjson.dumps(self.cache)
        digest = b"null" if self.digest is None else b'"%s"' % self.digest.encode()
        return b'{"time":"%s",%s,"ms":%.2f,"status":%d,"cache":%s,"digest":%s}\n' % (
            _stamp(at),
            middle,
            ms,
            self.status,
            cache,
            digest,
        )


_CACHE_TEXT = {None: b"null", "hit": b'"hit"', "miss": b'"miss"', "partial": b'"partial"'}
# The second of the last stamp and its text, and each millisecond's: formatting the date
# costs more than the rest of a line, and a busy server writes thousands of lines a second.
_last_second: list[tuple[int, bytes]] = [(-1, b"")]
_MILLISECONDS = [b".%03dZ" % number for number in range(1000)]
_last_millisecond: list[tuple[int, bytes]] = [(-1, b"")]


def _stamp(now: float) -> bytes:
    """``now`` as ``2026-12-07T19:51:13.123Z`` (UTC, milliseconds)."""
    millisecond = int(now * 1000)
    if millisecond == _last_millisecond[0][0]:
        return _last_millisecond[0][1]
    second, part = divmod(millisecond, 1000)
    cached_second, text = _last_second[0]
    if second != cached_second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        _last_second[0] = (second, text)
    stamp = text + _MILLISECONDS[part]
    _last_millisecond[0] = (millisecond, stamp)
    return stamp


def status_headers(record: RequestRecord) -> dict[str, str]:
    """The ``X-Embedcache-*`` headers of an answer with embeddings."""
    return {
        STATUS_HEADER: record.cache or "miss",
        HITS_HEADER: str(record.hits),
        MISSES_HEADER: str(record.misses),
        TOKENS_SAVED_HEADER: str(round(record.tokens_saved)),
    }


def check_writable(path: str) -> None:
    """Open ``path`` to append (creating it) and close it: ``serve`` says at once when the
    request log cannot be written, not on the first request.

    :raises OSError: it cannot be opened.
    """
    os.close(os.open(path, _FLAGS, 0o644))


class Served(NamedTuple):
    """One hit as :mod:`.outcomes` hands it over: the record every hit of one caller on one
    request body shares (made once, its ``at`` and ``ms`` the first's), its
    :meth:`~RequestRecord.middle`, and this hit's own time and milliseconds."""

    record: RequestRecord
    middle: bytes
    at: float
    ms: float


def _write_all(fd: int, data: bytes) -> int:
    """Write all of ``data`` (a file's ``write`` is whole unless the disk fills or a signal
    lands; then the rest follows, or the error is raised)."""
    view, written = memoryview(data), 0
    while written < len(data):
        written += os.write(fd, view[written:])
    return written


class RequestLog:
    """Appends request lines to ``path``, rotating it by size; one per worker process (a
    forked worker opens its own on its first line).

    :param path: the log file (``serve --request-log``).
    :param max_bytes: rotate once the file is this big (0: never). A writer looks at the
        size once its own lines could have filled it, or a second after it last looked, so
        other workers' lines may take the file a little past it.
    :param backups: rotated files kept, ``path.1`` (newest) to ``path.N``.
    """

    def __init__(
        self, path: str, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd = -1
        self._pid = -1
        self._inode = -1
        self._checked = 0.0
        self._seen_size = 0  # the file's size when last looked at
        # Bytes this process wrote since it last looked at the file's size: the size is
        # looked at (one more syscall) only once they could have filled it, or once a second.
        self._unseen = 0

    def write(self, records: Sequence[RequestRecord | Served]) -> None:
        """Append ``records``' lines (:mod:`.outcomes` hands them over in batches), in one
        ``write`` unless the file fills up on the way; a failure is logged, never raised (a
        full disk must not fail the requests the lines describe)."""
        if not records:
            return
        lines = [self._line(record) for record in records]
        try:
            fd = self._current(time.time())
            size = sum(map(len, lines))
            if not self.max_bytes or self._seen_size + self._unseen + size < self.max_bytes:
                self._unseen += _write_all(fd, b"".join(lines))
                return
            chunk: list[bytes] = []
            for line in lines:
                chunk.append(line)
                self._unseen += len(line)
                if self._seen_size + self._unseen >= self.max_bytes:
                    # The lines so far, then the size looked at: a file goes at most one
                    # line past the size, however many lines a batch holds.
                    _write_all(fd, b"".join(chunk))
                    chunk.clear()
                    fd = self._checked_size(fd)
            if chunk:
                _write_all(fd, b"".join(chunk))
        except OSError as exc:
            log.warning("embedcache proxy: request log %s not written: %s", self.path, exc)

    @staticmethod
    def _line(entry: RequestRecord | Served) -> bytes:
        if type(entry) is Served:  # a hit: its record and middle shared with others
            return entry.record.line_at(entry.middle, entry.at, entry.ms)
        assert isinstance(entry, RequestRecord)
        return entry.line()

    def _checked_size(self, fd: int) -> int:
        """Look at the file's size, rotating it when full; the descriptor to go on with."""
        self._unseen = 0
        self._seen_size = os.fstat(fd).st_size
        if self._seen_size >= self.max_bytes:
            self._rotate()
        return self._fd

    def close(self) -> None:
        """Close the file (a later line reopens it)."""
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = -1

    def _current(self, now: float) -> int:
        """This process's descriptor of the current file, reopened after a fork or, looked
        at once a second, after another process rotated it."""
        if self._fd < 0 or self._pid != os.getpid():
            self._open()
        elif now - self._checked >= _REOPEN_SECONDS:
            self._checked = now
            self._seen_size = self.max_bytes  # others write too: look at the size next line
            try:
                moved = os.stat(self.path).st_ino != self._inode
            except FileNotFoundError:
                moved = True
            if moved:
                self._reopen()
        return self._fd

    def _open(self) -> None:
        self._fd = os.open(self.path, _FLAGS, 0o644)
        self._pid = os.getpid()
        self._inode = os.fstat(self._fd).st_ino
        self._checked = time.time()
        self._seen_size, self._unseen = self.max_bytes, 0  # look at a new file's size next line

    def _reopen(self) -> None:
        self.close()
        self._open()

    def _rotate(self) -> None:
        """Rename ``path`` → ``path.1`` → ... under a lock on the file, unless another
        process did it first (the path is then another file)."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            try:
                current = os.stat(self.path).st_ino == self._inode
            except FileNotFoundError:
                current = False
            if current:
                for number in range(self.backups - 1, 0, -1):
                    older = f"{self.path}.{number}"
                    if os.path.exists(older):
                        os.replace(older, f"{self.path}.{number + 1}")
                if self.backups > 0:
                    os.replace(self.path, f"{self.path}.1")
                else:
                    os.unlink(self.path)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._reopen()
