"""A worker's log output: the stderr handler of the ``embedcache`` logger, and access lines.

Every line a worker logs goes to stderr with the time, the level and which worker wrote it
(several workers share one stderr). Access lines, one per answered request, are written
only when asked for (``--log-level info`` or ``--access-log``); otherwise the server is
given no access logger at all, so the hit path pays nothing for them.

An access line names the caller's key only by a short hash (the first 8 hex digits of the
SHA-256 of the bearer value, ``-`` when none): enough to tell clients apart and to match a
key one holds, never the key. For example::

    127.0.0.1:50412 "POST /v1/embeddings" 200 texts=1 hits=1 ms=0.31 key=3f2a9c1e

Lines for a file are each one ``write`` to a descriptor opened with ``O_APPEND``, so the
workers appending to one file never interleave within a line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time

from .http import LogAccess, Request

__all__ = ["access_logger", "install_handler", "key_hash", "open_access_log"]

log = logging.getLogger("embedcache")
access_log = logging.getLogger("embedcache.access")

#: The ``--access-log`` value meaning stderr.
STDERR = "-"
_LONGEST_PATH = 200  # characters of a target shown; the rest is elided
_PRINTABLE = frozenset(range(0x21, 0x7F)) - {ord('"'), ord("\\")}


def key_hash(authorization: bytes) -> str:
    """The first 8 hex digits of the SHA-256 of a request's bearer value (the whole header
    value for another scheme); ``-`` without one.

    >>> key_hash(b"Bearer secret")
    '2bb80d53'
    >>> key_hash(b"")
    '-'
    """
    scheme, _, value = authorization.partition(b" ")
    secret = value.strip() if scheme.lower() == b"bearer" else authorization.strip()
    if not secret:
        return "-"
    return hashlib.sha256(secret).hexdigest()[:8]


def _shown(target: bytes) -> str:
    """A request target safe in one log line: no spaces, quotes, control or non-ASCII
    characters (each written as ``\\xNN``), and at most :data:`_LONGEST_PATH` of them."""
    if all(byte in _PRINTABLE for byte in target):
        text = target.decode("ascii")
    else:
        text = "".join(chr(byte) if byte in _PRINTABLE else f"\\x{byte:02x}" for byte in target)
    return text if len(text) <= _LONGEST_PATH else text[:_LONGEST_PATH] + "..."


def _client(request: Request) -> str:
    # The peer's address, when the HTTP server records it on the request (``client``:
    # ``(host, port)``); a server that does not simply leaves it out.
    peer = getattr(request, "client", None)
    if not peer:
        return "-"
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)


def access_line(request: Request, status: int, seconds: float) -> str:
    """One request's access line (no time or worker: the writer adds them).

    >>> request = Request(b"POST", b"/v1/embeddings", authorization=b"Bearer secret")
    >>> request.texts, request.hits = 3, 2
    >>> access_line(request, 200, 0.00125)
    '- "POST /v1/embeddings" 200 texts=3 hits=2 ms=1.25 key=2bb80d53'
    """
    texts = "-" if request.texts < 0 else request.texts
    hits = "-" if request.hits < 0 else request.hits
    method = _shown(request.method) or "-"
    return (
        f'{_client(request)} "{method} {_shown(request.path)}" {status} '
        f"texts={texts} hits={hits} ms={seconds * 1000:.2f} key={key_hash(request.authorization)}"
    )


class _Clock:
    """The current time as a log line shows it, formatted once per second (a busy worker
    writes thousands of lines a second)."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now(self) -> str:
        stamp = time.time()
        second = int(stamp)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._text},{int(stamp % 1 * 1000):03d}"


class AccessLog:
    """Writes access lines to a descriptor, one ``os.write`` each, prefixed like the
    worker's other log lines (time, ``ACCESS``, worker).

    :param fd: where lines go (opened with ``O_APPEND`` when a file; see
        :func:`open_access_log`).
    :param worker: the worker's number, shown on each line.
    """

    def __init__(self, fd: int, worker: int) -> None:
        self._fd = fd
        self._prefix = f" ACCESS embedcache worker {worker} (pid {os.getpid()}): "
        self._clock = _Clock()

    def __call__(self, request: Request, status: int, seconds: float) -> None:
        """Write ``request``'s line (:data:`~embedcache.proxy.http.LogAccess`)."""
        line = self._clock.now() + self._prefix + access_line(request, status, seconds) + "\n"
        try:
            _write_all(self._fd, line.encode())
        except OSError as exc:  # a full disk must not fail the request it describes
            log.debug("embedcache proxy: access line not written: %s", exc)


def _log_access(request: Request, status: int, seconds: float) -> None:
    access_log.info("%s", access_line(request, status, seconds))


def open_access_log(target: str) -> int:
    """A descriptor for ``--access-log``: stderr for ``-``, else ``target`` opened to append
    (created if missing), shared by every worker forked after this.

    :raises OSError: it cannot be opened.
    """
    if target == STDERR:
        return 2
    return os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


def access_logger(fd: int | None, worker: int) -> LogAccess | None:
    """What a worker's server tells of each answered request: lines to ``fd`` (an
    ``--access-log``) whatever the level, else through the logger when it is at ``info``,
    else nothing at all (``None``: no cost per request)."""
    if fd is not None:
        return AccessLog(fd, worker)
    if access_log.isEnabledFor(logging.INFO):
        return _log_access
    return None


class _LineHandler(logging.Handler):
    """Each record as one ``write`` to a descriptor, so the lines of workers sharing
    stderr never interleave within a line."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _write_all(self._fd, (self.format(record) + "\n").encode("utf-8", "replace"))
        except Exception:
            self.handleError(record)


def install_handler(level: str, worker: int | None) -> None:
    """Send the ``embedcache`` logger's records at ``level`` and above to stderr, each line
    with the time, the level and the worker's number and pid (``worker`` ``None``: the
    parent of the workers). Replaces a handler installed before (a forked worker replaces
    its parent's)."""
    logger = logging.getLogger("embedcache")
    for handler in list(logger.handlers):
        if isinstance(handler, _LineHandler):
            logger.removeHandler(handler)
    who = "main" if worker is None else f"worker {worker}"
    handler = _LineHandler(2)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s embedcache {who} (pid %(process)d): %(message)s"
        )
    )
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    # The process is the server's: its lines are written here, once, not again by a root
    # handler an embedding program may have set up.
    logger.propagate = False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
