"""The processes of ``bench/rerank.py`` besides itself: the emulator, the floor server, the
filling process, and the timed hits of a checkout (``--baseline``).

Run as ``python bench/rerank_roles.py ROLE ARGS...`` by ``bench/rerank.py``:

- ``_floor PORT``: the protocol floor (``bench/proxy_hits.py``'s uvloop + httptools server)
  answering rerank bodies from pre-rendered scores, and embeddings bodies as its own floor;
- ``_fill DIRECTORY URL QUERIES DOCUMENTS``: every query against the same documents through
  ``JinaRerankFunction``, then its own peak RSS (``ru_maxrss``) and time as JSON;
- ``_hits URL DIRECTORY SIZES RUNS``: ``rerank_scores`` on a cache the caller filled, µs per
  document by size as JSON, with whatever ``embedcache`` is first on ``PYTHONPATH``.
"""

from __future__ import annotations

import functools
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import orjson
import xxhash
from loadclient import KEY
from proxy_hits import embeddings_answerer, serve_protocol
from workload import make_texts

from embedcache import JinaRerankFunction

MODEL = "jina-reranker-v2-base-multilingual"
CALL_SECONDS = 0.05  # each timed sample: enough calls of one method for this long
LIBRARY_SEED = 11  # the library part's documents: make_texts(n, LIBRARY_SEED)


class Emulator:
    """``python -m embedcache.testing`` in its own process; its URL is its first line."""

    def __init__(self, log: Path) -> None:
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "embedcache.testing", "--api-key", KEY],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url:
            self.stop()
            raise RuntimeError(f"the emulator did not start:\n{log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self._log.close()


def queries(n: int) -> list[str]:
    return [f"query {i}: which passage says how the cache keys a vector?" for i in range(n)]


def per_document(call: Callable[[], object], calls: int, documents: int) -> float:
    """µs per document of ``calls`` calls of ``call``."""
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / (calls * documents) * 1e6


def calls_for(call: Callable[[], object], seconds: float = CALL_SECONDS) -> int:
    """Call twice (a warm-up) and say how many calls make a sample of ~``seconds``."""
    call()
    start = time.perf_counter()
    call()
    return max(1, int(seconds / (time.perf_counter() - start)))


def hits(url: str, directory: str, sizes: list[int], runs: int) -> None:
    """The ``_hits`` role: ``rerank_scores`` medians by size, on a cache already filled."""
    query = queries(1)[0]
    texts = make_texts(max(sizes), LIBRARY_SEED)
    medians = {}
    with JinaRerankFunction(MODEL, KEY, base_url=url, cache_dir=directory) as reranker:
        for n in sizes:
            docs = texts[:n]
            # Longer samples than the in-process table's: a process's first calls, and a
            # burst of the shared machine's load, weigh on one process's few samples.
            call = functools.partial(reranker.rerank_scores, query, docs)
            calls = calls_for(call, 4 * CALL_SECONDS)
            medians[n] = statistics.median(per_document(call, calls, n) for _ in range(runs))
        if reranker.stats.requests:
            raise RuntimeError("the cache was not filled: the timed calls sent requests")
    print(json.dumps(medians), flush=True)


def rerank_answerer() -> Callable[[bytes, bytes], bytes]:
    """The floor's answers: a rerank body parsed, each (query, document) hashed, its
    pre-rendered score looked up, sorted, and written in the dialect asked (embeddings
    bodies as ``bench/proxy_hits.py``'s floor)."""
    embeddings = embeddings_answerer()
    scores: dict[bytes, float] = {}

    def score(query: str, document: str) -> float:
        key = xxhash.xxh3_128_digest(f"{len(query)}:{query}{document}".encode())
        found = scores.get(key)
        if found is None:  # first sight (the warm-up second): a score, then kept
            found = scores[key] = xxhash.xxh3_64_intdigest(key) / 2**64
        return found

    def answer(url: bytes, body: bytes) -> bytes:
        if url == b"/v1/embeddings":
            return embeddings(url, body)
        asked = orjson.loads(body)
        docs = asked.get("texts") or asked["documents"]
        query = asked["query"]
        got = [score(query, doc) for doc in docs]
        order = sorted(range(len(got)), key=lambda i: (-got[i], i))
        if url == b"/rerank":
            return orjson.dumps([{"index": i, "score": got[i]} for i in order])
        results = [
            {"index": i, "relevance_score": got[i], "document": {"text": docs[i]}}
            for i in order[: asked.get("top_n", len(order))]
        ]
        return orjson.dumps({"model": MODEL, "usage": {"total_tokens": 0}, "results": results})

    return answer


def fill(directory: str, url: str, count: int, documents: int) -> None:
    """The filling process (``_fill``): every query against the same documents, then its
    own peak RSS and time printed as JSON."""
    texts = make_texts(documents, 17)
    start = time.perf_counter()
    with JinaRerankFunction(MODEL, KEY, base_url=url, cache_dir=directory) as reranker:
        for query in queries(count):
            reranker.rerank_scores(query, texts)
        stats = reranker.stats
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    done = {"seconds": seconds, "peak": peak, "misses": stats.misses, "requests": stats.requests}
    print(json.dumps(done), flush=True)


if __name__ == "__main__":
    role, args = sys.argv[1], sys.argv[2:]
    if role == "_floor":
        serve_protocol(int(args[0]), rerank_answerer())
    elif role == "_fill":
        fill(args[0], args[1], int(args[2]), int(args[3]))
    elif role == "_hits":
        hits(args[0], args[1], [int(n) for n in args[2].split(",")], int(args[3]))
    else:
        raise SystemExit(f"unknown role {role}")
