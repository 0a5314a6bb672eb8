"""Run ``embedcache serve`` as a real subprocess on a free loopback port, for tests."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from embedcache.config import ENVIRONMENT

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


class ProxyProcess:
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
        self.cache_dir = cache_dir
        self.log_path = cache_dir.parent / f"serve-{next(_numbers)}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
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

    def embed(self, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        """POST ``body`` to /v1/embeddings, with ``key`` as the bearer token if given."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return self.http.post("/v1/embeddings", json=body, headers=headers)

    def output(self) -> str:
        """Everything the server has printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

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

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
