"""The segment files of a cache directory: fixed-size float32 rows, appended and never moved.

Row ``r`` of a segment of dimension ``d`` is ``d`` little-endian float32 values at byte offset
``r * d * 4`` of ``segments/<id>.f32``. Which rows are live, and how many a file holds, is
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

__all__ = ["Segments", "fits"]

_SEGMENT_BYTES = 1 << 30
# Rows are read through a map of their segment, kept for the process's life: a sparse read
# faults in the pages it touches (a 10k-row read of a 1 GB segment costs about what 10k
# positioned reads do, the first time), and pages stay mapped, so a long-lived reader's
# next reads find them there (positioned reads cost the same every time). A dense read
# populates the whole map at once instead: faulting in a 400 MB map page by page costs
# ~10x the copy. Populating costs per page of the file, so it is worth it only when
# reading at least one row per this many pages (measured on a 1 GB segment, 262,144
# pages: 10,000 random rows took 26 ms by row and 70 ms through a new populated map,
# 100,000 rows 343 ms and 180 ms).
_PAGES_PER_MAPPED_ROW = 8

log = logging.getLogger("embedcache")


def fits(rows: int, dim: int) -> bool:
    """Whether a segment of ``rows`` rows of dimension ``dim`` stays within the size cap."""
    return rows * dim * 4 <= _SEGMENT_BYTES


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
        self._populated: set[int] = set()  # segments whose map has every page mapped
        # Read-only descriptors kept open: opening a file costs more than reading a row.
        self._fds: dict[int, int] = {}
        directory.mkdir(mode=0o700, exist_ok=True)

    def close(self) -> None:
        """Drop the file maps and descriptors."""
        with self._lock:
            self._maps.clear()
            self._populated.clear()
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def path(self, seg: int) -> Path:
        return self.directory / f"{seg}.f32"

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
            mapped = self.mapped(seg, dim, int(rows.max()), self._worth_populating(seg, rows))
            return np.asarray(mapped[rows], dtype=np.float32)
        except (OSError, IndexError, ValueError) as exc:
            # Unreadable rows come back as zeros, which fail their checksum: they refetch.
            log.warning("cannot read segment %d: %s", seg, exc)
            return np.zeros((len(rows), dim), dtype=np.float32)

    def _worth_populating(self, seg: int, rows: NDArray[np.int64]) -> bool:
        """Whether to map all of a segment's pages at once for ``rows``: many rows, dense
        enough in the file (see :data:`_PAGES_PER_MAPPED_ROW`), and not mapped so yet."""
        with self._lock:
            if seg in self._populated:
                return False
        pages = os.fstat(self._descriptor(seg)).st_size // mmap.PAGESIZE
        return len(rows) * _PAGES_PER_MAPPED_ROW >= pages

    def read_rows(self, seg: int, dim: int, rows: NDArray[np.int64]) -> NDArray[np.float32]:
        """Read a few rows with positioned reads: no mapping to set up."""
        out = np.empty((len(rows), dim), dtype="<f4")
        fd = self._descriptor(seg)
        size = dim * 4
        for i, row in enumerate(rows.tolist()):
            if os.preadv(fd, [out[i]], row * size) != size:
                raise ValueError(f"row {row} of segment {seg} is past its end")
        return out.astype(np.float32, copy=False)

    def _descriptor(self, seg: int) -> int:
        with self._lock:
            fd = self._fds.get(seg)
            if fd is None:
                fd = self._fds[seg] = os.open(self.path(seg), os.O_RDONLY | os.O_CLOEXEC)
            return fd

    def mapped(
        self, seg: int, dim: int, need_row: int = -1, populate: bool = False
    ) -> NDArray[np.float32]:
        """A read-only map of a segment file, remapped when it has grown past ``need_row``;
        with ``populate``, its pages all mapped at once (else as rows are read)."""
        with self._lock:
            mapped = self._maps.get(seg)
            if (
                mapped is None
                or need_row >= len(mapped)
                or (populate and seg not in self._populated)
            ):
                with open(self.path(seg), "rb") as handle:
                    size = os.fstat(handle.fileno()).st_size // (4 * dim) * (4 * dim)
                    if populate and hasattr(mmap, "MAP_POPULATE"):
                        view = mmap.mmap(
                            handle.fileno(), size, prot=mmap.PROT_READ,
                            flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                        )  # fmt: skip
                        self._populated.add(seg)
                    else:
                        view = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ)
                        self._populated.discard(seg)
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
                self._populated.discard(seg)
                fd = self._fds.pop(seg, None)
                if fd is not None:
                    os.close(fd)
                with contextlib.suppress(OSError):
                    self.path(seg).unlink()
