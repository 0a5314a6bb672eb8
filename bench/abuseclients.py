"""The clients and the server of ``bench/proxy_abuse.py``: ``embedcache serve`` with its
worker's memory watched, raw-socket clients bounded in time, and the normal client.

Every client loop has a deadline or a count: a server that neither reads nor closes (the old
code never closed an idle connection) must not hang the benchmark.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from loadclient import HOST, KEY, body_of, parse_head
from loadservers import child_setup

MIB = 1 << 20
BOUND_MIB = 64.0  # issue 21: RSS growth under 64 MiB per case ...
BOUND_P99_MS = 50.0  # ... and a normal client's p99 under 50 ms during the attacks
TOKEN = "bench-abuse-proxy-token"
TEXTS = [f"cached text {i:02d}: a short passage" for i in range(16)]
BANNER = "embedcache proxy: http://127.0.0.1:"


@dataclass(frozen=True)
class Figure:
    """One measured figure of a case, as shown, and whether it met its bound."""

    case: str
    name: str
    text: str
    ok: bool | None = None  # None: no bound
    bound: str = ""


@dataclass(frozen=True)
class Code:
    """A version of the server: the source tree put first on its path, and its options."""

    label: str
    tree: Path
    args: tuple[str, ...]
    options: tuple[str, ...]  # the hardening options its `serve --help` lists


def mib(value: float) -> str:
    return f"{value:,.0f} MiB"


def growth(case: str, name: str, grew: float) -> Figure:
    return Figure(case, name, f"{grew:+,.0f} MiB", grew < BOUND_MIB, f"< {BOUND_MIB:.0f} MiB")


# The server and its worker's memory


def status_mib(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM of ``pid``, in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class Proxy:
    """``embedcache serve --workers 1`` on ``cache``; a thread watches its worker's memory,
    keeps the highest RSS since :meth:`mark`, and kills it above ``cap`` MiB."""

    def __init__(
        self, code: Code, cache: Path, upstream: str, log: Path, cap: float, token: bool
    ) -> None:
        command = [sys.executable, "-m", "embedcache", "--cache-dir", str(cache), "serve"]
        command += ["--port", "0", "--workers", "1", "--upstream", upstream, *code.args]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDCACHE_", "JINA"))}
        env.update(JINAAI_API_KEY=KEY, PYTHONPATH=str(code.tree))
        if token:  # not on the command line: the server may show its arguments
            env["EMBEDCACHE_PROXY_TOKEN"] = TOKEN
        self.bearer = TOKEN if token else KEY
        self.log = log
        with log.open("wb") as out:  # `python -m` puts the working directory first: the tree's
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=code.tree,
                preexec_fn=child_setup(),
            )  # fmt: skip
        self.port = self._port()
        self.pid = self._worker()
        self.cap, self.killed, self.top, self.last = cap, False, 0.0, (0.0, 0.0)
        self._halt = threading.Event()
        self._watch = threading.Thread(target=self._watching, daemon=True)
        self._watch.start()

    def _port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.process.poll() is None:
            text = self.log.read_text(errors="replace")
            if BANNER in text:
                return int(text.split(BANNER, 1)[1].split("/", 1)[0])
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedcache serve did not start:\n{self.log.read_text()}")

    def _worker(self) -> int:
        """The serve process itself with one worker, or its only child if it forks one."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        with suppress(OSError):
            pids = children.read_text().split()
            if len(pids) == 1:
                return int(pids[0])
        return self.process.pid

    def _watching(self) -> None:
        while not self._halt.wait(0.05):
            try:
                self.last = status_mib(self.pid)
            except (OSError, KeyError):
                return
            self.top = max(self.top, self.last[0])
            if self.last[0] > self.cap:
                self.killed = True
                os.kill(self.pid, signal.SIGKILL)
                return

    def mark(self) -> None:
        self.top = self.rss()

    def rss(self) -> float:
        with suppress(OSError, KeyError):
            self.last = status_mib(self.pid)
        return self.last[0]

    def hwm(self) -> float:
        self.rss()
        return self.last[1]

    def stop(self) -> None:
        self._halt.set()
        if self.process.poll() is None:
            self.process.terminate()
            try:  # the old code waits for a half-sent body up to 120 s
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# Clients


def head(port: int, length: int, bearer: str | None, path: str = "/v1/embeddings") -> bytes:
    auth = f"Authorization: Bearer {bearer}\r\n" if bearer else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def request(port: int, body: bytes, bearer: str | None) -> bytes:
    return head(port, len(body), bearer) + body


class Wire:
    """One connection reading answers (Content-Length, or until closed), bodies discarded."""

    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = bytearray()
        self.scratch = bytearray(1 << 20)

    def _recv(self, deadline: float | None, size: int) -> int:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer in time")
            self.sock.settimeout(left)
        return self.sock.recv_into(self.scratch, size)

    def answer(self, deadline: float | None = None) -> tuple[int, int]:
        """The next answer's status and body length."""
        while b"\r\n\r\n" not in self.buf:
            got = self._recv(deadline, len(self.scratch))
            if not got:
                raise ConnectionError("closed by the server")
            self.buf += self.scratch[:got]
        end = self.buf.index(b"\r\n\r\n") + 4
        status, headers = parse_head(bytes(self.buf[:end]))
        del self.buf[:end]
        length = int(headers.get(b"content-length", b"-1"))
        left = (1 << 62) if length < 0 else length
        taken = min(left, len(self.buf))
        del self.buf[:taken]
        left -= taken
        while left > 0:
            got = self._recv(deadline, min(left, len(self.scratch)))
            if not got:
                if length < 0:
                    break
                raise ConnectionError("closed in the middle of an answer")
            left -= got
        return status, length if length >= 0 else (1 << 62) - left

    def close(self) -> None:
        self.sock.close()


class Prober(threading.Thread):
    """The normal client: sequential cached hits on one kept-alive connection."""

    def __init__(self, port: int, limit: float) -> None:
        super().__init__(daemon=True)
        self.port, self.limit = port, limit
        self.latency_ms: list[float] = []
        self.errors = 0
        self._halt = threading.Event()

    def run(self) -> None:
        wire: Wire | None = None
        until = time.monotonic() + self.limit
        i = 0
        while not self._halt.is_set() and time.monotonic() < until and i < 1_000_000:
            data = request(self.port, body_of([TEXTS[i % len(TEXTS)]]), KEY)
            i += 1
            start = time.perf_counter()
            try:
                wire = wire or Wire(self.port, 5.0)
                wire.sock.sendall(data)
                status, _ = wire.answer()
                if status != 200:
                    raise ConnectionError(f"HTTP {status}")
                self.latency_ms.append((time.perf_counter() - start) * 1000)
            except OSError:
                self.errors += 1
                if wire is not None:
                    wire.close()
                wire = None
            self._halt.wait(0.005)
        if wire is not None:
            wire.close()

    def finish(self, case: str) -> list[Figure]:
        self._halt.set()
        self.join(30)
        if not self.latency_ms:
            return [Figure(case, "normal client: hits", f"none, {self.errors} failed", False)]
        p99, top = np.percentile(self.latency_ms, 99), max(self.latency_ms)
        return [
            Figure(
                case,
                "normal client: hit p99 / max",
                f"{p99:.1f} / {top:.1f} ms ({len(self.latency_ms):,} hits, "
                f"{self.errors} failed or over 5 s)",
                bool(p99 < BOUND_P99_MS) and not self.errors,
                f"p99 < {BOUND_P99_MS:.0f} ms, none failed",
            )
        ]


@contextmanager
def probing(port: int, case: str, limit: float, out: list[Figure]) -> Iterator[None]:
    prober = Prober(port, limit)
    prober.start()
    time.sleep(0.3)  # a few hits before the attack, as a reference
    try:
        yield
    finally:
        time.sleep(0.3)
        out += prober.finish(case)


def send_all(sock: socket.socket, data: bytes | memoryview, seconds: float) -> int:
    """Send without blocking for at most ``seconds``; the bytes sent (the server may stop
    reading or close)."""
    sock.setblocking(False)
    view, sent = memoryview(data), 0
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_WRITE)
        while sent < len(view) and time.monotonic() < deadline:
            if not sel.select(min(0.2, max(0.0, deadline - time.monotonic()))):
                continue
            try:
                sent += sock.send(view[sent : sent + (1 << 18)])
            except BlockingIOError:
                continue
            except OSError:
                break
    return sent


def body_prefix(total: int) -> bytes:
    """The start of a JSON body declared ``total`` bytes long: one long text, never ended."""
    start = b'{"model":"jina-embeddings-v3","input":["'
    return start + b"a" * (total - len(start))


def closed_by_peer(sock: socket.socket, seconds: float = 2.0) -> bool:
    """Whether the server has closed ``sock`` (end of stream or reset) within ``seconds``."""
    sock.setblocking(True)
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True  # reset: closed with our unsent body unread
    return True
