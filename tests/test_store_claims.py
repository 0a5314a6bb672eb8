"""The claims files of a cache directory (embedcache.storage.claims), on their own: what
another process sees of a claim, and what a dead one leaves."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from embedcache import JinaClient, RequestOptions, Store
from embedcache.assembly import build_embedder
from embedcache.storage import claims as claims_module
from embedcache.storage.claims import CLAIMS_DB, CLAIMS_LOCK, Claims, claims_for

from .claimers import CLAIMS, Worker
from .conftest import wait_for

A, B, C = (bytes([n]) * 16 for n in (1, 2, 3))


@pytest.fixture
def directory(cache_dir: Path) -> Iterator[Claims]:
    """The claims of a fresh cache directory, attached as a store would attach them."""
    Store(cache_dir).close()
    claims = claims_for(cache_dir)
    assert claims is not None
    yield claims
    claims.detach()


@pytest.fixture
def other(cache_dir: Path, directory: Claims) -> Iterator[Worker]:
    """Another process on the same directory."""
    worker = Worker(CLAIMS, str(cache_dir))
    worker.expect("ready")
    yield worker
    worker.close()


def take(worker: Worker, *keys: bytes) -> tuple[int | None, list[int], list[int]]:
    worker.send("take " + " ".join(key.hex() for key in keys))
    _, ticket, owned, elsewhere = worker.expect("taken")

    def numbers(listed: str) -> list[int]:
        return [] if listed == "-" else [int(n) for n in listed.split(",")]

    return None if ticket == "None" else int(ticket), numbers(owned), numbers(elsewhere)


@contextlib.contextmanager
def choosing(cache_dir: Path, choose_byte: Callable[[], int]) -> Iterator[Claims]:
    """Claims of ``cache_dir`` drawing their bytes from ``choose_byte``. The only ones this
    process uses meanwhile (the ``directory`` fixture's have opened no file), so the two
    descriptors cannot drop each other's locks."""
    claims = Claims(cache_dir, choose_byte=choose_byte)
    claims.attach()
    try:
        yield claims
    finally:
        claims.detach()


def rows(cache_dir: Path) -> list[tuple[bytes, int]]:
    with sqlite3.connect(cache_dir / CLAIMS_DB) as db:
        found = sorted(db.execute("SELECT k, byte FROM claims"))
    db.close()
    return found


def test_a_claim_owns_free_keys_until_released(cache_dir: Path, directory: Claims) -> None:
    taken = directory.take([A, B])
    assert taken.byte is not None
    assert (taken.owned, taken.other_bytes) == ([0, 1], [])
    assert rows(cache_dir) == [(A, taken.byte), (B, taken.byte)]
    directory.release(taken.byte)
    directory.release(taken.byte)  # idempotent
    assert rows(cache_dir) == []


def test_another_processs_live_claim_is_elsewhere_until_it_ends(
    cache_dir: Path, directory: Claims, other: Worker
) -> None:
    ticket, owned, _ = take(other, A, B)
    assert ticket is not None
    assert owned == [0, 1]
    taken = directory.take([B, C])
    assert (taken.owned, taken.other_bytes) == ([1], [ticket])
    assert taken.byte is not None
    waited = threading.Event()

    def wait() -> None:
        directory.wait(taken.other_bytes)
        waited.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert directory.take([A]).other_bytes == [ticket]  # still held: the waiter still waits
    assert not waited.is_set()
    other.send(f"release {ticket}")
    other.expect("released")
    waiter.join(10)
    assert waited.is_set()
    again = directory.take([A, B])
    assert (again.owned, again.other_bytes) == ([0, 1], [])
    for mine in (taken.byte, again.byte):
        assert mine is not None
        directory.release(mine)


def test_the_claims_of_a_killed_process_count_for_nothing(
    cache_dir: Path, directory: Claims, other: Worker
) -> None:
    keep = directory.take([C])  # holds this process's files open across the kill
    assert keep.byte is not None
    ticket, _, _ = take(other, A, B)
    assert ticket is not None
    other.kill()
    assert sorted(byte for _, byte in rows(cache_dir)) == sorted([keep.byte, ticket, ticket])
    taken = directory.take([A])  # its row is found dead and taken over, with no wait
    assert taken.byte is not None
    assert (taken.owned, taken.other_bytes) == ([0], [])
    directory.wait([ticket])  # returns at once: nobody holds that byte any more
    assert (B, ticket) in rows(cache_dir)
    directory.release(taken.byte)
    directory.release(keep.byte)
    directory.detach()  # nothing held, nobody attached: the files close
    directory.attach()
    later = directory.take([C])  # opening them again sweeps the dead claim's last row
    assert later.byte is not None
    assert rows(cache_dir) == [(C, later.byte)]
    directory.release(later.byte)


def test_this_processs_own_claims_are_left_to_the_in_process_registry(
    cache_dir: Path, directory: Claims
) -> None:
    # Threads are coalesced above (embedding.coalescing asks only for keys no thread of
    # its process holds): the directory never makes a process wait on itself.
    first = directory.take([A])
    second = directory.take([A, B])
    assert first.byte is not None
    assert second.byte is not None
    assert first.byte != second.byte
    assert (second.owned, second.other_bytes) == ([0, 1], [])
    directory.release(first.byte)  # its row for A was taken over: the second's stays
    assert rows(cache_dir) == [(A, second.byte), (B, second.byte)]
    directory.release(second.byte)


def test_a_byte_held_by_another_claim_is_never_shared(
    cache_dir: Path, directory: Claims, other: Worker
) -> None:
    held, _, _ = take(other, A)
    assert held is not None
    choices = iter([held, held, 12345])
    with choosing(cache_dir, lambda: next(choices)) as claims:
        taken = claims.take([B])
        assert taken.byte == 12345
        claims.release(taken.byte)


def test_with_no_free_byte_a_claim_is_left_to_the_process(
    cache_dir: Path,
    directory: Claims,
    other: Worker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    held, _, _ = take(other, A)
    assert held is not None
    with choosing(cache_dir, lambda: held) as claims:
        taken = claims.take([B, C])
    assert (taken.byte, taken.owned, taken.other_bytes) == (None, [0, 1], [])
    assert "no free claim byte" in caplog.text


def test_a_cycle_of_waiting_processes_is_polled_not_refused(
    cache_dir: Path, directory: Claims, other: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    # Threads of each process wait on the other's fetch while other threads hold their own:
    # no claim waits on itself, but the kernel, which sees processes, answers EDEADLK.
    locks = Path("/proc/locks")
    if not locks.exists():
        pytest.skip("needs /proc/locks to see the other process blocked")
    caplog.set_level(logging.DEBUG, logger="embedcache")
    theirs, _, _ = take(other, A)
    mine = directory.take([B])
    assert theirs is not None
    assert mine.byte is not None
    other.send(f"wait {mine.byte}")
    wait_for(
        lambda: any("->" in line and f" {other.process.pid} " in line
                    for line in locks.read_text().splitlines()),
        "the other process never blocked",
    )  # fmt: skip
    waiter = threading.Thread(target=directory.wait, args=([theirs],))
    waiter.start()
    wait_for(lambda: "EDEADLK" in caplog.text, "the kernel saw no cycle")
    directory.release(mine.byte)  # the other's wait ends, then it lets go of its own
    other.expect("waited")
    other.send(f"release {theirs}")
    other.expect("released")
    waiter.join(10)
    assert not waiter.is_alive()


def test_one_instance_per_directory_in_a_process(cache_dir: Path, tmp_path: Path) -> None:
    Store(cache_dir).close()
    link = tmp_path / "link"
    link.symlink_to(cache_dir)
    with Store(cache_dir) as one, Store(link) as two:
        assert one.claims is not None
        assert one.claims is two.claims
    assert one.claims is None  # closed


def test_a_directory_that_is_gone_does_not_lend_its_claims_to_its_inode(
    cache_dir: Path, tmp_path: Path
) -> None:
    # A renamed directory keeps its inode, as a new directory may reuse a deleted one's.
    with Store(cache_dir) as store:
        old = store.claims
        moved = tmp_path / "moved"
        cache_dir.rename(moved)
        with Store(moved) as again:
            assert again.claims is not None
            assert again.claims is not old
            assert again.claims.directory == moved


def test_the_files_are_private_and_closed_when_unused(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        assert store.claims is not None
        taken = store.claims.take([A])
        assert taken.byte is not None
        store.claims.release(taken.byte)
    for name in (CLAIMS_DB, CLAIMS_LOCK):
        assert stat.S_IMODE((cache_dir / name).stat().st_mode) == 0o600
    fds = Path("/proc/self/fd")
    if fds.exists():
        targets = [os.path.realpath(fd) for fd in fds.iterdir()]
        assert not [t for t in targets if Path(t).name.startswith("claims.")]
    # The last connection to close took SQLite's WAL files with it.
    assert sorted(p.name for p in cache_dir.glob("claims*")) == [CLAIMS_DB, CLAIMS_LOCK]


def test_a_store_that_only_reads_creates_no_claims_files(cache_dir: Path) -> None:
    with Store(cache_dir) as store:
        store.read_many([A])
        assert store.claims is not None
    assert not list(cache_dir.glob("claims*"))


def test_a_forked_child_does_not_take_its_parents_claims_for_its_own(
    cache_dir: Path, directory: Claims
) -> None:
    taken = directory.take([A])
    assert taken.byte is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+
        pid = os.fork()
    if pid == 0:  # the child: its view must be a stranger's
        child = claims_for(cache_dir)
        seen = child.take([A]) if child is not None else None
        os._exit(0 if seen is not None and seen.other_bytes == [taken.byte] else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    directory.release(taken.byte)


def test_without_fcntl_there_are_no_directory_claims(
    cache_dir: Path, client: JinaClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(claims_module, "fcntl", None)
    with Store(cache_dir) as store:
        assert store.claims is None
        embedder = build_embedder(store, client)  # threads are still coalesced
        assert embedder.embed(["a"], RequestOptions("jina-embeddings-v3")).shape == (1, 1024)
    assert not (cache_dir / CLAIMS_DB).exists()
