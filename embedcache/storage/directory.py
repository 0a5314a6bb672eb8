"""A cache directory itself: created private, marked with the versions it was written with.

Any number of processes may create the same directory at once (four prewarm jobs on a new
machine, or the default cache on first use): the marker is written whole under a temporary
name and then hard-linked into place, which fails if another process got there first, so
every opener reads one complete marker, and the first creator's versions are the ones
checked. Those temporary names do not make a directory "not empty".

What lives inside it is described in :mod:`embedcache.storage.store`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import cast

from ..errors import CacheError, CacheFormatError

__all__ = ["check_or_create_marker", "raise_marker", "restrict_permissions"]

# Filesystems without hard links (some network and FUSE mounts) answer os.link with these:
# there the marker is renamed into place, which lets the last of racing creators win.
_NO_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})


def check_or_create_marker(
    directory: Path, name: str, expected: dict[str, int], readable: dict[str, range] | None = None
) -> dict[str, int]:
    """Check the directory's versions; create it and its marker when new. Returns the
    versions the marker holds.

    :param name: the marker's file name in ``directory``.
    :param expected: the versions a new marker is written with, and the marker must hold...
    :param readable: ...unless a version is in the range given for it here (a format this
        version reads too, such as one a later write raises the marker to).
    :raises CacheFormatError: the marker holds other versions, or is missing from a directory
        that is not empty.
    :raises CacheError: the directory cannot be read or created.
    """
    marker = directory / name
    try:
        found = _read(marker)
        if found is None:
            _create(directory, name, expected)
            found = _read(marker)
            if found is None:  # deleted as soon as it was made: not ours to guess about
                raise CacheError(f"cannot prepare cache at {directory}: {marker} vanished")
    except OSError as exc:
        raise CacheError(f"cannot prepare cache at {directory}: {exc}") from exc
    versions = {key: found.get(key) for key in expected}
    accepted = readable or {}
    if all(
        versions[key] == value or versions[key] in accepted.get(key, ())
        for key, value in expected.items()
    ):
        return cast("dict[str, int]", versions)
    newer = [
        key for key, value in versions.items()
        if isinstance(value, int) and value > max(expected[key], *accepted.get(key, [0]))
    ]  # fmt: skip
    if newer:
        raise CacheFormatError(
            f"cache at {directory} was written by a newer embedcache ({versions}; this one "
            f"reads {expected}): upgrade embedcache, or choose "
            "another cache directory"
        )
    raise CacheFormatError(
        f"cache at {directory} was written with {versions}, this "
        f"embedcache uses {expected}: choose another cache directory or "
        "delete this one"
    )


def raise_marker(directory: Path, name: str, versions: dict[str, int]) -> None:
    """Rewrite the marker with ``versions`` (whole, under a temporary name renamed into
    place), before anything only those versions can read is written: older versions then
    refuse the directory with their message instead of misreading it.

    :raises CacheError: it cannot be written.
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(versions) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, directory / name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    except OSError as exc:
        raise CacheError(f"cannot update {directory / name}: {exc}") from exc


def _read(marker: Path) -> dict[str, object] | None:
    """The marker's contents, ``None`` when there is none yet."""
    try:
        text = marker.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        found = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CacheFormatError(f"{marker} is not valid JSON: {exc}") from exc
    if not isinstance(found, dict):
        raise CacheFormatError(f"{marker} is not an embedcache marker: {text[:80]!r}")
    return found


def _is_temporary(entry: str, name: str) -> bool:
    """Whether ``entry`` is a marker being written (or left by a creator that crashed)."""
    return entry.startswith(f".{name}.") and entry.endswith(".tmp")


def _create(directory: Path, name: str, expected: dict[str, int]) -> None:
    """Create the directory and its marker, unless another process has just done so."""
    try:
        directory.mkdir(parents=True, mode=0o700)
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        pass  # made by the user, or by another process opening it right now
    marker = directory / name
    foreign = [entry for entry in os.listdir(directory) if not _is_temporary(entry, name)]
    # Every process writes the marker before anything else, so what the listing saw belongs
    # to a cache if the marker is there now (the listing may have started just before it).
    if foreign and not marker.exists():
        raise CacheFormatError(
            f"{directory} is not empty and has no {name}: not an embedcache directory"
        )
    if foreign:
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)  # 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(expected) + "\n")
            handle.flush()
            os.fsync(handle.fileno())  # linked only once whole, even across a power cut
        try:
            os.link(tmp, marker)
        except FileExistsError:
            pass  # another process's marker won: the caller checks its versions
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            os.replace(tmp, marker)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def restrict_permissions(directory: Path) -> None:
    """Make everything under ``directory`` private to its owner (0700 / 0600)."""
    # Created under the process umask; vectors can reveal the texts they embed.
    for path in directory.rglob("*"):
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700 if path.is_dir() else 0o600)
