"""The segment files of a cache directory: fixed-size float32 rows, and heaps of payloads'
bytes, appended and never moved.

Row ``r`` of a segment of dimension ``d`` is ``d`` little-endian float32 values at byte offset
``r * d * 4`` of ``segments/<id>.f32``. A heap, ``segments/<id>.heap``, holds payloads (see
:mod:`~embedcache.storage.payloads`) one after another, each at the offset its index row
records. Which rows are live, and how many a file holds, is
recorded in the index (:mod:`embedcache.storage.index`); this module only reads and writes the
files. The directory layout as a whole is described in :mod:`embedcache.storage.store`.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import threading
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = ["Segments", "fits", "heap_fits"]

_SEGMENT_BYTES = 1 << 30
# Up to this many rows, read them one by one; beyond, map the segment with its page
# tables populated at once: faulting in a 400 MB map page by page costs ~10x the copy.
_PREAD_MAX_ROWS = 256
# ... unless the rows are sparse in a large file: populating a map costs per page of the
# file, reading per row. Measured on a 1 GB segment (262,144 pages), reading 10,000 random
# rows took 26 ms by row and 70 ms through a new map, 100,000 rows 343 ms and 180 ms: so
# map only when reading at least one row per this many pages (or the map is there already).
_PAGES_PER_MAPPED_ROW = 8

log = logging.getLogger("embedcache")


def fits(rows: int, dim: int) -> bool:
    """Whether a segment of ``rows`` rows of dimension ``dim`` stays within the size cap."""
    return rows * dim * 4 <= _SEGMENT_BYTES


def heap_fits(size: int) -> bool:
    """Whether a heap of ``size`` bytes stays within the size cap (a first payload larger
    than the cap gets a heap of its own all the same)."""
    return size <= _SEGMENT_BYTES


class Segments:
    """The ``segments/`` directory, and read-only maps of its files.

    :param directory: the ``segments`` directory; created with mode 0700 when missing.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Guards the caches of maps and descriptors only, not the store: a reader must
        # not wait for another thread's write transaction.
        self._lock = threading.Lock()
        self._maps: dict[int, NDArray[np.float32]] = {}
        # Read-only descriptors kept open: opening a file costs more than reading a row.
        self._fds: dict[int, int] = {}
        directory.mkdir(mode=0o700, exist_ok=True)

    def close(self) -> None:
        """Drop the file maps and descriptors."""
        with self._lock:
            self._maps.clear()
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def path(self, seg: int) -> Path:
        return self.directory / f"{seg}.f32"

    def heap_path(self, seg: int) -> Path:
        return self.directory / f"{seg}.heap"

    def write_heap(self, seg: int, offset: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``offset`` of a heap file, creating it (in the index's write
        transaction, before recording the entries)."""
        path = self.heap_path(seg)
        # Bytes past the recorded size are leftovers of a crashed writer: overwrite them.
        with open(path, "r+b" if path.exists() else "wb") as handle:
            os.chmod(path, 0o600)
            handle.seek(offset)
            handle.write(data)

    def read_heap(self, seg: int, spans: list[tuple[int, int]]) -> list[bytes]:
        """The bytes at each ``(offset, length)`` of a heap, one positioned read each.

        :raises OSError, ValueError: the file cannot be read, or ends before a span.
        """
        fd = self._descriptor(seg, heap=True)
        out = [os.pread(fd, length, offset) for offset, length in spans]
        for (offset, length), data in zip(spans, out, strict=True):
            if len(data) != length:
                raise ValueError(f"bytes {offset}+{length} of heap {seg} are past its end")
        return out

    def gather(
        self, segs: NDArray[np.int64], rows: NDArray[np.int64], present: NDArray[np.bool_], dim: int
    ) -> NDArray[np.float32]:
        """The vectors at ``(segs[i], rows[i])`` where ``present``, zeros elsewhere and where
        they cannot be read."""
        # Sorted and compared, not np.unique: its first call imports numpy.ma (20 ms).
        ordered = np.sort(segs[present])
        segments = ordered[np.flatnonzero(np.diff(ordered, prepend=ordered[:1] - 1))]
        if len(segments) == 1 and present.all():
            # The common warm read: one gather straight into the result.
            return self._read(int(segments[0]), dim, rows)
        out = np.zeros((len(segs), dim), dtype=np.float32)
        for seg in segments:
            mine = present & (segs == seg)
            out[mine] = self._read(int(seg), dim, rows[mine])
        return out

    def _read(self, seg: int, dim: int, rows: NDArray[np.int64]) -> NDArray[np.float32]:
        try:
            if not self._worth_mapping(seg, dim, rows):
                return self.read_rows(seg, dim, rows)
            return np.asarray(self.mapped(seg, dim, int(rows.max()))[rows], dtype=np.float32)
        except (OSError, IndexError, ValueError) as exc:
            log.warning("cannot read segment %d: %s", seg, exc)
        # Row by row, so only the unreadable rows (a file cut short) come back as zeros,
        # which fail their checksum and are refetched: the rest of the batch still hits.
        out = np.zeros((len(rows), dim), dtype=np.float32)
        for i in range(len(rows)):
            with contextlib.suppress(OSError, ValueError):
                out[i] = self.read_rows(seg, dim, rows[i : i + 1])[0]
        return out

    def _worth_mapping(self, seg: int, dim: int, rows: NDArray[np.int64]) -> bool:
        """Whether to gather ``rows`` through a map of the segment rather than row by row:
        many rows, dense enough in the file (see :data:`_PAGES_PER_MAPPED_ROW`)."""
        if len(rows) <= _PREAD_MAX_ROWS:
            return False
        with self._lock:
            mapped = self._maps.get(seg)
        if mapped is not None and int(rows.max()) < len(mapped):
            return True
        pages = os.fstat(self._descriptor(seg)).st_size // mmap.PAGESIZE
        return len(rows) * _PAGES_PER_MAPPED_ROW >= pages

    def read_rows(self, seg: int, dim: int, rows: NDArray[np.int64]) -> NDArray[np.float32]:
        """Read rows with one positioned read each: no mapping to set up (a writable array)."""
        fd = self._descriptor(seg)
        size = dim * 4
        pread = os.pread
        # One pread a row, joined: a fifth less than preadv into each row of an array (the
        # row views and lists cost about as much as the syscall's own work here).
        chunks = [pread(fd, size, offset) for offset in (rows * size).tolist()]
        raw = bytearray().join(chunks)  # a bytearray: the array over it is writable
        if len(raw) != len(rows) * size:
            short = next(i for i, chunk in enumerate(chunks) if len(chunk) != size)
            raise ValueError(f"row {int(rows[short])} of segment {seg} is past its end")
        vectors = np.frombuffer(raw, dtype="<f4").reshape(len(rows), dim)
        return vectors.astype(np.float32, copy=False)

    def _descriptor(self, seg: int, heap: bool = False) -> int:
        with self._lock:
            fd = self._fds.get(seg)
            if fd is None:
                path = self.heap_path(seg) if heap else self.path(seg)
                fd = self._fds[seg] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            return fd

    def mapped(self, seg: int, dim: int, need_row: int = -1) -> NDArray[np.float32]:
        """A read-only map of a segment file, remapped when it has grown past ``need_row``."""
        with self._lock:
            mapped = self._maps.get(seg)
            if mapped is None or need_row >= len(mapped):
                with open(self.path(seg), "rb") as handle:
                    size = os.fstat(handle.fileno()).st_size // (4 * dim) * (4 * dim)
                    if hasattr(mmap, "MAP_POPULATE"):
                        view = mmap.mmap(
                            handle.fileno(), size, prot=mmap.PROT_READ,
                            flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                        )  # fmt: skip
                    else:
                        view = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ)
                mapped = np.frombuffer(view, dtype="<f4").reshape(-1, dim)
                self._maps[seg] = mapped
            return mapped

    def write(self, seg: int, dim: int, start: int, matrix: NDArray[np.float32]) -> None:
        """Write ``matrix`` (little-endian float32) as rows ``start...`` of a segment file,
        creating it. Call in the index's write transaction, before recording the rows."""
        path = self.path(seg)
        # Rows past the recorded count are leftovers of a crashed writer: overwrite them.
        with open(path, "r+b" if path.exists() else "wb") as handle:
            os.chmod(path, 0o600)
            handle.seek(start * dim * 4)
            handle.write(np.ascontiguousarray(matrix, dtype="<f4").data)  # no extra copy

    def unlink(self, segments: list[int]) -> None:
        """Delete segment files (missing ones are ignored) and drop their maps."""
        with self._lock:
            for seg in segments:
                self._maps.pop(seg, None)
                fd = self._fds.pop(seg, None)
                if fd is not None:
                    os.close(fd)
                for path in (self.path(seg), self.heap_path(seg)):
                    with contextlib.suppress(OSError):
                        path.unlink()
