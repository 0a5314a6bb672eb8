"""Run ``embedcache serve`` on a free loopback port, for tests: in this process (most proxy
tests: :class:`ProxyInProcess`), or as a real subprocess with forked workers (the end-to-end
tests of startup, workers, signals and process limits: :class:`ProxyProcess`).

Both parse their arguments with the real ``embedcache serve`` command and answer the same
calls (:class:`Served`), so a test moves from one to the other by its fixture alone.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from unittest import mock

import httpx
from click.testing import CliRunner

from embedcache.cli import main as cli_main
from embedcache.config import ENVIRONMENT
from embedcache.errors import InvalidInputError
from embedcache.proxy import server as proxy_server
from embedcache.proxy.accesslog import access_logger, open_access_log
from embedcache.proxy.app import Proxy
from embedcache.proxy.http import Connections, Handlers, ServerLimits
from embedcache.proxy.metrics import Board
from embedcache.proxy.server import MakeProxy

from .bare_server import new_loop

if TYPE_CHECKING:
    from typing_extensions import Self

_STARTUP_SECONDS = 60.0
_STOP_SECONDS = 30.0
# Variables a developer's shell may hold that would change what the server does: every one
# embedcache reads. (The platform's cache variables stay: conftest points them at tmp_path.)
_SCRUBBED = tuple(ENVIRONMENT)
# Set RLIMIT_NOFILE to argv[1], then run the rest of argv as the Python command line.
_UNDER_FILE_LIMIT = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)
_numbers = itertools.count()


_BANNER = re.compile(r"embedcache proxy: http://127\.0\.0\.1:(\d+)/v1/embeddings")


class Served:
    """What a test drives of a running proxy, wherever it runs."""

    url: str
    http: httpx.Client

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        #: Where the server's output goes, beside the cache directory.
        self.log_path = cache_dir.parent / f"serve-{next(_numbers)}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

    def embed(self, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        """POST ``body`` to /v1/embeddings, with ``key`` as the bearer token if given."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return self.http.post("/v1/embeddings", json=body, headers=headers)

    def output(self) -> str:
        """Everything the server has printed (its banner, warnings, log lines) so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        """Stop serving, as SIGTERM would; returns the exit code."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProxyProcess(Served):
    """One ``embedcache serve`` process; its stderr goes to a file so it never blocks.

    :param env: extra environment (a server key, a token), on top of a scrubbed copy.
    :param argv: the command line after ``embedcache``, instead of the usual
        ``--cache-dir DIR serve --port 0 --upstream URL ARGS`` (for tests of where options
        go; it must still bind with ``--port 0``: the port is read from the banner).
    :param file_limit: start the server under this ``ulimit -n`` (soft and hard), set by a
        small Python program that then becomes ``embedcache``: not by a ``preexec_fn``, which
        makes the child a plain fork of this process, running the fork handlers of what the
        suite has loaded (gRPC's, from Milvus Lite, broke such a child's start).
    """

    def __init__(
        self,
        upstream: str,
        cache_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        argv: Sequence[str] | None = None,
        file_limit: int | None = None,
    ) -> None:
        super().__init__(cache_dir)
        environ = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
        environ.update(env or {})
        command = [sys.executable, "-m", "embedcache", "--cache-dir", str(cache_dir)]
        # Two workers unless told otherwise, whatever this machine's cores: every proxy test
        # then runs against a server of several processes, as users get by default.
        workers = [] if "--workers" in args else ["--workers", "2"]
        command += ["serve", "--port", "0", "--upstream", upstream, *workers, *args]
        if argv is not None:
            command = [sys.executable, "-m", "embedcache", *argv]
        if file_limit is not None:
            command = [sys.executable, "-c", _UNDER_FILE_LIMIT, str(file_limit), *command[1:]]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=environ
            )
        self.url = f"http://127.0.0.1:{self._wait_for_port()}"
        self.http = httpx.Client(base_url=self.url, timeout=30.0)
        self._wait_until_up()

    def _wait_for_port(self) -> int:
        """The port the server bound (``--port 0``), from its banner."""
        deadline = time.monotonic() + _STARTUP_SECONDS
        while time.monotonic() < deadline:
            found = _BANNER.search(self.output())
            if found:
                return int(found.group(1))
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.process.kill()
        self.process.wait()
        raise RuntimeError(f"embedcache serve did not start:\n{self.output()}")

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + _STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"embedcache serve exited early:\n{self.output()}")
            try:
                if self.http.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"embedcache serve did not come up:\n{self.output()}")

    def stop(self) -> int:
        """SIGTERM, as a service manager would; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.http.close()  # after the exit: a request in flight during shutdown gets its answer
        return self.process.returncode


class ProxyInProcess(Served):
    """``embedcache serve ARGS`` in this process, one worker: the arguments parsed by the
    real command (its checks, settings and banner), then that worker's proxy served on an
    event loop of its own in a thread, as a forked worker serves it; no process, no fork.

    :param env: environment variables set for the server's whole life (a miss paid with
        the server's key reads it then), put back as they were by :meth:`stop`.
    :param args: ``--workers`` above 1 is refused: several workers need processes
        (:class:`ProxyProcess`).
    :param argv: the whole command line after ``embedcache``, as for :class:`ProxyProcess`.
    :raises RuntimeError: the command refused its arguments (its output in the message).
    """

    def __init__(
        self,
        upstream: str,
        cache_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        argv: Sequence[str] | None = None,
    ) -> None:
        super().__init__(cache_dir)
        self._saved = {name: os.environ.get(name) for name in env or {}}
        os.environ.update(env or {})
        workers = [] if "--workers" in args else ["--workers", "1"]
        command = ["--cache-dir", str(cache_dir), "serve", "--port", "0", "--upstream", upstream]
        command += [*workers, *args]
        bound: list[_Worker] = []

        def serve_here(make_proxy: MakeProxy, **options: Any) -> None:
            bound.append(_Worker(make_proxy, **options))

        # The command's last step, serve_forever, is the one swapped: what it would fork and
        # signal, a thread runs here.
        with mock.patch.object(proxy_server, "serve_forever", serve_here):
            result = CliRunner().invoke(cli_main, command if argv is None else list(argv))
        self.log_path.write_text(result.output, encoding="utf-8")
        if result.exit_code != 0 or not bound:
            self._put_environment_back()
            raise RuntimeError(f"embedcache serve did not start:\n{result.output}")
        self._worker = bound[0]
        try:
            self._worker.start(self.log_path)
        except BaseException:
            self._put_environment_back()
            raise
        self.url = f"http://127.0.0.1:{self._worker.port}"
        self.http = httpx.Client(base_url=self.url, timeout=30.0)
        self._stopped = False

    @property
    def proxy(self) -> Proxy:
        """The worker's :class:`~embedcache.proxy.app.Proxy`, to look inside it."""
        return self._worker.proxy

    def stop(self) -> int:
        """Stop as SIGTERM stops a worker: no new connections, answer what was read, close
        the proxy (fills in flight commit first); returns 0 (idempotent)."""
        if not self._stopped:
            self._stopped = True
            try:
                self._worker.stop()
            finally:
                self.http.close()
                self._put_environment_back()
        return 0

    def _put_environment_back(self) -> None:
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _Worker:
    """One worker served on its own thread: what ``serve_forever`` is given (its keyword
    arguments), bound at once so the banner names the port."""

    def __init__(
        self,
        make_proxy: MakeProxy,
        *,
        host: str,
        port: int,
        workers: int,
        log_level: str,
        limits: ServerLimits | None = None,
        drain_seconds: float,
        access_log: str | None = None,
        on_bound: Callable[[int], None] | None = None,
    ) -> None:
        if workers != 1:
            raise InvalidInputError(f"{workers} workers need processes: use ProxyProcess")
        self._make_proxy = make_proxy
        self._level = log_level.upper()
        self._limits = limits or ServerLimits()
        self._drain_seconds = drain_seconds
        self._access_log = access_log
        self._socket = socket.create_server((host, port))
        self._socket.setblocking(False)
        self.port: int = self._socket.getsockname()[1]
        if on_bound is not None:
            on_bound(self.port)
        self._loop = new_loop()
        self.proxy: Proxy
        self._done: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._up = threading.Event()
        self._failure: BaseException | None = None

    def start(self, log_path: Path) -> None:
        """Serve, the worker's log lines appended to ``log_path``, once it accepts."""
        self._log = _LogTo(log_path, self._level)
        self._thread.start()
        if not self._up.wait(_STARTUP_SECONDS) or self._failure is not None:
            self._log.close()
            raise RuntimeError(f"embedcache serve did not come up: {self._failure!r}")

    def stop(self) -> None:
        """Drain and close, as the worker does on SIGTERM, and wait for the thread."""
        if self._done is not None:
            self._loop.call_soon_threadsafe(self._done.set_result, None)
        self._thread.join(_STOP_SECONDS)
        self._log.close()
        if self._thread.is_alive():
            raise RuntimeError("the in-process proxy did not stop")
        if self._failure is not None:
            raise RuntimeError("the in-process proxy failed") from self._failure

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self.proxy = self._make_proxy(Board(1), 0)
            try:
                self._loop.run_until_complete(self._run())
            finally:
                self.proxy.close()  # fills already running finish and commit first
                # What the close cancelled (the proxy's publisher) ends before the loop does.
                cancelled = asyncio.all_tasks(self._loop)
                self._loop.run_until_complete(asyncio.gather(*cancelled, return_exceptions=True))
        except BaseException as exc:  # told by start() or stop(), in the test's thread
            self._failure = exc
        finally:
            self._up.set()
            self._socket.close()
            self._loop.close()

    async def _run(self) -> None:
        # The access log (when asked for on stderr, "-") goes to this worker's log file.
        fd = self._log.fd if self._access_log == "-" else None
        if self._access_log not in (None, "-"):
            fd = open_access_log(self._access_log)
        handlers = Handlers(
            fast=self.proxy.answer_hit,
            app=self.proxy.app,
            admit=self.proxy.admit,
            log_access=access_logger(fd, 0),
            max_body=self._limits.max_body,
        )
        connections = Connections(handlers, self._limits)
        server = await self._loop.create_server(connections, sock=self._socket)
        self.proxy.start()
        self._done = self._loop.create_future()
        self._up.set()
        try:
            await self._done
        finally:
            server.close()
            self._socket.close()
            await connections.drain(self._drain_seconds)
            if fd is not None and fd != self._log.fd:
                os.close(fd)


class _LogTo:
    """The ``embedcache`` logger's records at ``level`` and above appended to a file, one
    line each, as a worker writes them to stderr; undone by :meth:`close`. The logger's own
    level and propagation are put back when the last of several at once is closed."""

    _open: ClassVar[list[_LogTo]] = []
    _saved: ClassVar[tuple[int, bool]] = (logging.NOTSET, True)

    def __init__(self, path: Path, level: str) -> None:
        self._file = path.open("a", encoding="utf-8")
        self.fd = self._file.fileno()
        self._logger = logging.getLogger("embedcache")
        if not _LogTo._open:
            _LogTo._saved = (self._logger.level, self._logger.propagate)
        _LogTo._open.append(self)
        self._handler = logging.StreamHandler(self._file)
        self._handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s embedcache worker 0 (pid %(process)d): %(message)s"
            )
        )
        self._logger.addHandler(self._handler)
        self._logger.setLevel(level)
        # Written to the file only, as a server's lines are: not again by pytest's capture.
        self._logger.propagate = False

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        _LogTo._open.remove(self)
        if not _LogTo._open:
            self._logger.setLevel(_LogTo._saved[0])
            self._logger.propagate = _LogTo._saved[1]
        self._file.close()
