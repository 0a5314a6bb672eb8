"""Lifetime counters a drop-in user can trust: hits and tokens saved reach the cache without
close() (now and then, and at exit), never with a write per hit, once per process across
fork, and a flush never raises."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedcache import JinaClient, JinaEmbeddingFunction
from embedcache.assembly import build_embedder
from embedcache.embedding.counters import AUTOFLUSH, Autoflush, Counters, Recorder
from embedcache.models import resolve_options
from embedcache.storage.store import Store
from embedcache.testing import JinaEmulator

from .cli_helpers import as_json, invoke
from .conftest import API_KEY, MakeProxy, wait_for

JINA = "https://api.jina.ai"
TEXTS = ["the first cached text", "a second one", "and the third, a little longer"]
OPTIONS = resolve_options("jina-embeddings-v3", "retrieval.passage", 8)


@pytest.fixture
def interval() -> Iterator[None]:
    """Put AUTOFLUSH's interval back after a test that changes it."""
    before = AUTOFLUSH.interval
    yield
    AUTOFLUSH.interval = before


def fill(cache_dir: Path, emulator: JinaEmulator) -> None:
    """Cache :data:`TEXTS` (misses only; closed, so its counters are recorded), as Jina's
    API's entries: the readers below use the defaults, as the README's example does."""
    with JinaEmbeddingFunction(
        api_key=API_KEY, base_url=emulator.url, cache_dir=cache_dir, upstream_as=JINA
    ) as ef:
        ef.encode_documents(TEXTS)


def lifetime(cache_dir: Path) -> dict[str, int]:
    """The lifetime counters as ``embedcache stats --json`` reports them."""
    counters: dict[str, int] = as_json(invoke("stats", "--json", cache_dir=cache_dir))["lifetime"]
    return counters


def run_python(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a new interpreter (this test's scrubbed environment), checked."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done


# The README's example: embed, never close, exit normally. Every text is cached, so it needs
# no key and no network, and every count is a hit.
HITS_ONLY = """
import json, sys
from embedcache import JinaEmbeddingFunction
ef = JinaEmbeddingFunction(cache_dir=sys.argv[1])
ef.encode_documents(json.loads(sys.argv[2]))
ef.encode_documents(json.loads(sys.argv[2])[:1])
print(json.dumps(ef.stats.as_dict()))
"""


def test_a_process_that_only_hits_and_never_closes_leaves_its_hits_in_stats(
    emulator: JinaEmulator, cache_dir: Path
) -> None:
    fill(cache_dir, emulator)
    before = lifetime(cache_dir)
    done = run_python(HITS_ONLY, str(cache_dir), json.dumps(TEXTS))
    stats = json.loads(done.stdout)
    assert (stats["hits"], stats["misses"], stats["requests"]) == (4, 0, 0)
    after = lifetime(cache_dir)
    assert after["hits"] - before["hits"] == 4
    assert after["tokens_saved"] - before["tokens_saved"] == round(stats["tokens_saved"]) > 0
    assert after["misses"] == before["misses"] == len(TEXTS)


def test_many_hits_make_no_store_write_until_the_timer_flushes_once(
    client: JinaClient, cache_dir: Path, interval: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    AUTOFLUSH.interval = 3600.0  # the thread stays asleep: the test plays its tick
    with Store(cache_dir) as store:
        writes: list[dict[str, int]] = []
        record = store.add_counters

        def counted(deltas: dict[str, int]) -> None:
            writes.append(deltas)
            record(deltas)

        monkeypatch.setattr(store, "add_counters", counted)
        embedder = build_embedder(store, client)
        try:
            embedder.embed(TEXTS, OPTIONS)  # a fill records its counters as it ends
            assert len(writes) == 1
            for _ in range(500):
                embedder.embed(TEXTS, OPTIONS)
                embedder.count_hits(2, 3.0)  # the proxy's hit path counts this way
            assert len(writes) == 1
            assert store.counters()["hits"] == 0
            AUTOFLUSH.flush_all()
            assert len(writes) == 2
            assert writes[1]["hits"] == 500 * (len(TEXTS) + 2)
            assert store.counters()["hits"] == 500 * (len(TEXTS) + 2)
            AUTOFLUSH.flush_all()  # nothing new counted: nothing written
            assert len(writes) == 2
        finally:
            embedder.close()
        assert len(writes) == 2  # close has nothing left to record either


def test_the_timer_records_the_hits_of_an_embedder_left_open(
    client: JinaClient, cache_dir: Path, interval: None
) -> None:
    with Store(cache_dir) as store:
        embedder = build_embedder(store, client)
        try:
            embedder.embed(TEXTS, OPTIONS)
            embedder.embed(TEXTS, OPTIONS)
            AUTOFLUSH.interval = 0.02
            wait_for(
                lambda: store.counters()["hits"] == len(TEXTS),
                lambda: f"the timer recorded {store.counters()} so far",
            )
            assert store.counters()["tokens_saved"] == round(embedder.stats.tokens_saved)
        finally:
            embedder.close()


def test_an_embedder_dropped_without_close_is_collected_and_its_hits_still_recorded(
    client: JinaClient, cache_dir: Path, interval: None
) -> None:
    AUTOFLUSH.interval = 3600.0
    with Store(cache_dir) as store:
        embedder = build_embedder(store, client)
        embedder.embed(TEXTS, OPTIONS)
        embedder.embed(TEXTS, OPTIONS)
        recorder = embedder._recorder  # only to see it let go, below
        gone, released = weakref.ref(embedder), weakref.ref(recorder)
        del embedder, recorder
        gc.collect()
        assert gone() is None  # the exit flush does not keep it alive
        # The thread records its hits at once, not at its next tick, and lets go of the
        # recorder (and so of the store).
        wait_for(lambda: store.counters()["hits"] == len(TEXTS), "the hits were not recorded")
        wait_for(lambda: released() is None, "AUTOFLUSH still holds the recorder")


def test_a_closed_embedder_leaves_the_autoflush(
    client: JinaClient, cache_dir: Path, interval: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    AUTOFLUSH.interval = 3600.0
    with Store(cache_dir) as store:
        writes: list[dict[str, int]] = []
        monkeypatch.setattr(store, "add_counters", writes.append)
        embedder = build_embedder(store, client)
        embedder.embed(TEXTS, OPTIONS)
        embedder.close()
        writes.clear()
        embedder.count_hits(1, 1.0)  # counted after close: not AUTOFLUSH's to record
        AUTOFLUSH.flush_all()
        assert writes == []


def test_an_embedder_joins_the_autoflush_it_is_handed_not_the_process_one(
    client: JinaClient, cache_dir: Path, interval: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    AUTOFLUSH.interval = 3600.0
    own = Autoflush(interval=3600.0)  # asleep too: the test plays its ticks
    with Store(cache_dir) as store:
        writes: list[dict[str, int]] = []
        monkeypatch.setattr(store, "add_counters", writes.append)
        embedder = build_embedder(store, client, autoflush=own)
        embedder.embed(TEXTS, OPTIONS)
        writes.clear()
        embedder.count_hits(2, 3.0)
        AUTOFLUSH.flush_all()
        assert writes == []  # not the process's to record
        own.flush_all()
        assert [w["hits"] for w in writes] == [2]
        embedder.close()
        embedder.count_hits(1, 1.0)
        own.flush_all()
        assert len(writes) == 1  # closed: it left the autoflush it joined


def test_without_an_autoflush_counters_are_recorded_after_each_fill_and_on_close(
    client: JinaClient, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(cache_dir) as store:
        writes: list[dict[str, int]] = []
        monkeypatch.setattr(store, "add_counters", writes.append)
        embedder = build_embedder(store, client, autoflush=None)
        embedder.embed(TEXTS, OPTIONS)
        assert [w["misses"] for w in writes] == [len(TEXTS)]
        embedder.embed(TEXTS, OPTIONS)  # all hits: no fill, nothing recorded yet
        AUTOFLUSH.flush_all()
        assert len(writes) == 1
        embedder.close()
        assert [w["hits"] for w in writes] == [0, len(TEXTS)]


def test_a_failing_flush_warns_once_keeps_its_counts_and_the_next_one_records_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counters = Counters()
    recorded: list[dict[str, int]] = []
    failures = [OSError("disk full"), OSError("disk still full")]

    def record(deltas: dict[str, int]) -> None:
        if failures:
            raise failures.pop(0)  # a fault the real store only shows on a full disk
        recorded.append(deltas)

    recorder = Recorder(counters, record)
    counters.add_hits(3, 1.5)
    recorder.flush()
    counters.add_hits(1, 1.0)
    recorder.flush()
    assert [r.getMessage() for r in caplog.records] == [
        "could not record lifetime counters: disk full"
    ]
    assert counters.unflushed
    recorder.flush()
    assert recorded == [{**dict.fromkeys(recorded[0], 0), "hits": 4, "tokens_saved": 2}]
    assert not counters.unflushed


# Hits counted, then the store closed and its directory removed under an embedder that is
# never closed: the exit flush cannot record them, and must say so without raising.
GONE_AT_EXIT = """
import shutil, sys
from embedcache import JinaClient
from embedcache.assembly import build_embedder
from embedcache.models import resolve_options
from embedcache.storage.store import Store
store = Store(sys.argv[1])
embedder = build_embedder(store, JinaClient("unused", base_url="http://127.0.0.1:1"))
embedder.embed([sys.argv[2]], resolve_options("jina-embeddings-v3", "retrieval.passage", 8))
store.close()
shutil.rmtree(sys.argv[1])
"""


def test_the_exit_flush_into_a_closed_and_removed_store_warns_instead_of_raising(
    client: JinaClient, cache_dir: Path
) -> None:
    with Store(cache_dir) as store:
        filler = build_embedder(store, client)
        filler.embed(TEXTS[:1], OPTIONS)
        filler.close()
    done = run_python(GONE_AT_EXIT, str(cache_dir), TEXTS[0])
    assert "could not record lifetime counters" in done.stderr
    assert not cache_dir.exists()


# Hits counted before a fork are the parent's to record; the child records its own, with a
# timer thread of its own, and both exit without close().
FORKED = """
import json, os, sys, time
from embedcache import JinaEmbeddingFunction
from embedcache.embedding.counters import AUTOFLUSH
from embedcache.storage.store import Store
texts = json.loads(sys.argv[2])
ef = JinaEmbeddingFunction(cache_dir=sys.argv[1])
ef.encode_documents(texts)
pid = os.fork()
if pid == 0:
    ef.encode_documents(texts[:1])
    AUTOFLUSH.interval = 0.02
    deadline = time.monotonic() + 20
    with Store(sys.argv[1]) as store:
        while store.counters()["hits"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        seen = store.counters()["hits"]
    print(json.dumps({"child_recorded": seen}), flush=True)
    os._exit(0)  # no exit flush: only the child's timer can have recorded its hit
_, status = os.waitpid(pid, 0)
assert status == 0, status
"""


def test_a_forked_child_records_only_its_own_hits_with_a_timer_of_its_own(
    emulator: JinaEmulator, cache_dir: Path
) -> None:
    fill(cache_dir, emulator)
    done = run_python(FORKED, str(cache_dir), json.dumps(TEXTS))
    # The child's timer recorded its one hit, and not the parent's three (not yet recorded
    # when it forked); the parent recorded its three at exit.
    assert json.loads(done.stdout) == {"child_recorded": 1}
    assert lifetime(cache_dir)["hits"] == 1 + len(TEXTS)


# A multiprocessing child (fork) ends with os._exit, not through atexit: its hits, counted
# without close(), must still be recorded, and the parent's only by the parent.
MULTIPROCESSING = """
import json, multiprocessing, sys
from embedcache import JinaEmbeddingFunction
texts = json.loads(sys.argv[2])
ef = JinaEmbeddingFunction(cache_dir=sys.argv[1])
ef.encode_documents(texts)

def work():
    ef.encode_documents(texts[:1])

child = multiprocessing.get_context("fork").Process(target=work)
child.start()
child.join()
assert child.exitcode == 0, child.exitcode
"""


def test_a_multiprocessing_child_records_its_hits_as_it_ends(
    emulator: JinaEmulator, cache_dir: Path
) -> None:
    fill(cache_dir, emulator)
    run_python(MULTIPROCESSING, str(cache_dir), json.dumps(TEXTS))
    assert lifetime(cache_dir)["hits"] == 1 + len(TEXTS)


# The usual worker pattern: the parent makes no embedder, each child makes its own.
OWN_EMBEDDER_CHILD = """
import json, multiprocessing, sys
from embedcache import JinaEmbeddingFunction

def work(cache_dir, texts):
    JinaEmbeddingFunction(cache_dir=cache_dir).encode_documents(texts)

if __name__ == "__main__":
    for method in ("fork", "spawn"):
        child = multiprocessing.get_context(method).Process(
            target=work, args=(sys.argv[1], json.loads(sys.argv[2]))
        )
        child.start()
        child.join()
        assert child.exitcode == 0, (method, child.exitcode)
"""


def test_a_multiprocessing_child_with_its_own_embedder_records_its_hits_as_it_ends(
    emulator: JinaEmulator, cache_dir: Path, tmp_path: Path
) -> None:
    fill(cache_dir, emulator)
    script = tmp_path / "own_embedder_child.py"  # a file: spawn imports the main module
    script.write_text(OWN_EMBEDDER_CHILD, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script), str(cache_dir), json.dumps(TEXTS)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert lifetime(cache_dir)["hits"] == 2 * len(TEXTS)


def test_forked_proxy_workers_record_each_hit_once(make_proxy: MakeProxy, cache_dir: Path) -> None:
    served = make_proxy()  # two forked workers on one port
    body = {"model": "jina-embeddings-v3", "input": [TEXTS[0]]}
    assert served.embed(body, key=API_KEY).status_code == 200  # the one miss
    for _ in range(20):
        answer = served.embed(body, key=API_KEY)
        assert answer.headers["x-embedcache-cached"] == "1"
    served.stop()
    counters = lifetime(cache_dir)
    assert (counters["hits"], counters["misses"], counters["requests"]) == (20, 1, 1)
