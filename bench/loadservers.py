"""The processes of ``bench/proxy_load.py``: the servers under test, and wrk.

Every server runs in its own process, which is sent SIGTERM if the script dies (Linux), so
none outlives it: the floor and the Jina emulator are roles of the script itself, run as
``python bench/proxy_load.py _floor PORT`` and ``python bench/proxy_load.py _emulator
LATENCY`` (:func:`serve_floor`, :func:`serve_emulator`); the proxy is ``python -m
embedcache serve``. wrk, when installed, is the second load generator of the pure-hit part.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
from loadclient import DIM, HOST, KEY, MAX_TEXTS, MODEL, fetch
from numpy.typing import NDArray

SCRIPT = str(Path(__file__).with_name("proxy_load.py"))  # the entry point, re-run as children
STARTUP_SECONDS = 30.0


# The servers, each in its own process


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child (Linux): be sent SIGTERM if this script dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def child_setup() -> Callable[[], None] | None:
    return _die_with_parent if sys.platform == "linux" else None


class Server:
    """A server process on ``port``, its output in ``log``; :meth:`stop` ends it for sure."""

    def __init__(self, name: str, command: list[str], port: int, log: Path, **popen: Any) -> None:
        self.name, self.port, self.log = name, port, log
        self._log_file: IO[bytes] = log.open("wb")
        popen.setdefault("stdout", self._log_file)
        self.process = subprocess.Popen(
            command,
            stderr=self._log_file,
            preexec_fn=child_setup(),
            **popen,
        )

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(OSError):
                if fetch(self.port, "/health").status == 200:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start:\n{self.log.read_text(errors='replace')}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 10 s (idempotent)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()

    def log_problems(self) -> list[str]:
        """Lines of its output that look like warnings or errors."""
        words = ("warning", "error", "traceback", "exception")
        lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return [line for line in lines if any(word in line.lower() for word in words)]


class Emulator(Server):
    """The Jina emulator; :meth:`count` asks it how many requests and tokens it has served."""

    def __init__(self, latency: float, log: Path) -> None:
        command = [sys.executable, SCRIPT, "_emulator", str(latency)]
        super().__init__(
            "emulator", command, 0, log, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url:
            self.stop()
            raise RuntimeError(f"the emulator did not start:\n{log.read_text()}")
        self.port = int(self.url.rsplit(":", 1)[1])

    def count(self) -> tuple[int, int]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write("count\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        return int(answer["requests"]), int(answer["tokens"])

    def stop(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(OSError):
                self.process.stdin.close()  # its signal to stop
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        super().stop()


def start_floor(root: Path) -> Server:
    port = free_port()
    command = [sys.executable, SCRIPT, "_floor", str(port)]
    return Server("floor", command, port, root / "floor.log")


def start_proxy(root: Path, name: str, upstream: str, *flags: str) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "embedcache", "--cache-dir", str(root / name), "serve"]
    command += ["--port", str(port), "--upstream", upstream, *flags]
    env = {**os.environ, "JINAAI_API_KEY": KEY}
    return Server(
        f"embedcache serve {' '.join(flags)}".strip(), command, port, root / f"{name}.log", env=env
    )


def metrics(port: int) -> dict[str, float]:
    """The proxy's Prometheus samples, by name with labels."""
    samples: dict[str, float] = {}
    for line in fetch(port, "/metrics").body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


# Roles of proxy_load.py in the child processes (its _emulator and _floor sub-commands)


def serve_emulator(latency: float) -> None:
    """Run the emulator; answer each line on stdin with its counts; stop at EOF."""
    from embedcache.testing import JinaEmulator

    with JinaEmulator(api_key=KEY, host=HOST, latency=latency) as emulator:
        print(emulator.url, flush=True)
        for _ in sys.stdin:
            log = [r for r in emulator.requests if r.path == "/v1/embeddings"]
            counts = {"requests": len(log), "tokens": sum(r.tokens for r in log)}
            print(json.dumps(counts), flush=True)


def floor_answer(vector: NDArray[np.float32], n: int) -> bytes:
    """An embeddings answer of ``n`` copies of ``vector``, written as the proxy writes it."""
    data = [{"object": "embedding", "index": i, "embedding": vector} for i in range(n)]
    usage = {"total_tokens": 0, "prompt_tokens": 0}
    answer = {"model": MODEL, "object": "list", "usage": usage, "data": data}
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)


def serve_floor(port: int) -> None:
    """The floor: parse the JSON body, answer a precomputed response of as many vectors."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    vector = np.random.default_rng(0).standard_normal(DIM).astype(np.float32)
    vector /= np.linalg.norm(vector)
    answers = {n: floor_answer(vector, n) for n in range(1, MAX_TEXTS + 1)}

    async def embeddings(request: Request) -> Response:
        count = len(orjson.loads(await request.body())["input"])
        answer = answers.get(count)
        if answer is None:  # a size no case of proxy_load.py sends (proxy_hits.py's 64)
            answer = answers[count] = floor_answer(vector, count)
        return Response(answer, 200, media_type="application/json")

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', 200, media_type="application/json")

    app = Starlette(
        routes=[
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )
    # The proxy's own uvicorn settings: default ("auto") loop and http implementations.
    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)


# wrk


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    bad: int  # non-2xx responses and socket errors


def wrk_script(root: Path, bodies: Sequence[bytes], name: str = "post") -> Path:
    """A Lua script that POSTs ``bodies`` in turn (one JSON body per line of a file)."""
    bodies_file = root / f"wrk-{name}.jsonl"
    bodies_file.write_bytes(b"\n".join(bodies) + b"\n")
    script = root / f"{name}.lua"
    script.write_text(
        f"""wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {KEY}"
local bodies = {{}}
for line in io.lines({json.dumps(str(bodies_file))}) do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
""",
        encoding="utf-8",
    )
    return script


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_wrk(
    port: int,
    script: Path,
    seconds: int,
    connections: int,
    threads: int = 1,
    path: str = "/v1/embeddings",
) -> WrkResult:
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        f"http://{HOST}:{port}{path}",
    ]
    out = subprocess.run(
        command, capture_output=True, text=True, check=True, preexec_fn=child_setup()
    ).stdout
    p50, p99 = (re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M) for p in (50, 99))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not (p50 and p99 and rps and total):
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    bad = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    for errors in re.findall(r"Socket errors: (.*)", out):
        bad += sum(int(n) for n in re.findall(r"\d+", errors))
    return WrkResult(
        float(rps.group(1)), _ms(*p50.groups()), _ms(*p99.groups()), int(total.group(1)), bad
    )
