"""Other processes on one cache directory, for the claims tests: each runs a small script and
is talked to by lines on stdin and stdout, every wait for a line with a deadline."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

from .conftest import API_KEY

#: Embeds argv[1]'s JSON ``{"cache_dir", "url", "texts", "out"}`` through a gate: says
#: ``sending N`` when a batch reaches the upstream and holds it there until stdin says
#: ``go``; says ``waiting`` once the embedder waits for another's fetch; ``done STATS`` last.
EMBED = r"""
import json, os, sys, threading, time
import numpy as np
from embedcache import JinaClient, Store
from embedcache.assembly import build_embedder
from embedcache.models import resolve_options

config = json.loads(sys.argv[1])
options = resolve_options("jina-embeddings-v3", "retrieval.passage")
lock, go, finished = threading.Lock(), threading.Event(), threading.Event()

def say(*words):
    with lock:  # one write per line: threads must not interleave theirs
        sys.stdout.write(" ".join(map(str, words)) + "\n")
        sys.stdout.flush()

def listen():
    for line in sys.stdin:
        if line.strip() == "go":
            go.set()

class Gate:
    def __init__(self, inner):
        self.inner = inner
    def embed(self, texts, options):
        say("sending", len(texts))
        if not go.wait(60):
            raise RuntimeError("never told to go")
        return self.inner.embed(texts, options)

def report(embedder):
    deadline = time.monotonic() + 60
    while not finished.is_set() and time.monotonic() < deadline:
        if embedder.waiting:
            say("waiting")
            return
        time.sleep(0.001)

threading.Thread(target=listen, daemon=True).start()
client = JinaClient(os.environ["JINA_API_KEY"], base_url=config["url"])
with Store(config["cache_dir"]) as store:
    embedder = build_embedder(store, client)
    threading.Thread(target=report, args=(embedder,), daemon=True).start()
    result = embedder.embed_detailed(config["texts"], options, upstream=Gate(client))
    finished.set()
    np.save(config["out"], result.vectors)
    embedder.close()
client.close()
s = result.stats
counts = {"misses": s.misses, "coalesced": s.coalesced, "requests": s.requests}
say("done", json.dumps(counts, separators=(",", ":")))
"""

#: Fills argv[1]'s JSON ``{"cache_dir", "url", "texts", "batch_size", "max_concurrency"}``
#: with ``warm``: says ``ready`` once open, starts when stdin says ``go`` (so several start
#: together), and says ``done STATS`` last.
FILL = r"""
import json, os, sys
from embedcache import JinaClient, Store
from embedcache.assembly import build_embedder
from embedcache.models import resolve_options

config = json.loads(sys.argv[1])
options = resolve_options("jina-embeddings-v3", "retrieval.passage")
client = JinaClient(os.environ["JINA_API_KEY"], base_url=config["url"])
with Store(config["cache_dir"]) as store:
    embedder = build_embedder(store, client, batch_size=config["batch_size"],
                              max_concurrency=config["max_concurrency"])
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit("never told to go")
    embedder.warm(config["texts"], options)
    s = embedder.stats
    embedder.close()
client.close()
counts = {"misses": s.misses, "coalesced": s.coalesced, "requests": s.requests}
print("done", json.dumps(counts, separators=(",", ":")), flush=True)
"""

#: Takes, releases and waits on claims of the directory argv[1] as stdin says:
#: ``take HEX...`` -> ``taken TICKET OWNED ELSEWHERE`` (comma lists, ``-`` when empty);
#: ``release TICKET`` -> ``released``; ``wait BYTE...`` waits in a thread -> ``waited``.
CLAIMS = r"""
import sys, threading
from pathlib import Path
from embedcache.storage.claims import claims_for

claims = claims_for(Path(sys.argv[1]))
lock = threading.Lock()

def say(*words):
    with lock:
        sys.stdout.write(" ".join(map(str, words)) + "\n")
        sys.stdout.flush()

def listed(values):
    return ",".join(map(str, values)) or "-"

def wait(fetches):
    claims.wait(fetches)
    say("waited")

say("ready", __import__("os").getpid())
for line in sys.stdin:
    command, *args = line.split()
    if command == "take":
        taken = claims.take([bytes.fromhex(arg) for arg in args])
        say("taken", taken.byte, listed(taken.owned), listed(taken.other_bytes))
    elif command == "release":
        claims.release(int(args[0]))
        say("released")
    elif command == "wait":
        threading.Thread(target=wait, args=([int(arg) for arg in args],)).start()
"""


def environment() -> dict[str, str]:
    return {**os.environ, "JINA_API_KEY": API_KEY}


class Worker:
    """One Python process running ``script`` with ``args``."""

    def __init__(self, script: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", script, *args], env=environment(), text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect(self, *words: str, limit: float = 30.0) -> list[str]:
        """The next line whose first word is one of ``words`` (earlier lines are skipped),
        split into words."""
        deadline = time.monotonic() + limit
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {words} line within {limit} s") from None
            if line is None:
                self.process.wait(10)
                assert self.process.stderr is not None
                raise AssertionError(f"exited before {words}: {self.process.stderr.read()}")
            if line.split()[0] in words:
                return line.split()

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self, limit: float = 30.0) -> None:
        """Close its stdin and wait for it to exit cleanly."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(limit)
        assert self.process.stderr is not None
        assert self.process.returncode == 0, self.process.stderr.read()
        self.close()

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs in it."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(10)  # it reads stdout until the end: close that only after
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()
