"""A cache directory itself: created private, marked with the versions it was written with.

What lives inside it is described in :mod:`embedcache.storage.store`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from ..errors import CacheError, CacheFormatError

__all__ = ["check_or_create_marker", "restrict_permissions"]


def check_or_create_marker(directory: Path, name: str, expected: dict[str, int]) -> None:
    """Check the directory's versions; create it and its marker when new.

    :param name: the marker's file name in ``directory``.
    :param expected: the versions the marker must hold (and a new one is written with).
    :raises CacheFormatError: the marker holds other versions, or is missing from a directory
        that is not empty.
    :raises CacheError: the directory cannot be read or created.
    """
    marker = directory / name
    try:
        if marker.exists():
            found = json.loads(marker.read_text(encoding="utf-8"))
            versions = {key: found.get(key) for key in expected}
            if versions != expected:
                raise CacheFormatError(
                    f"cache at {directory} was written with {versions}, this "
                    f"embedcache uses {expected}: choose another cache directory or "
                    "delete this one"
                )
            return
        if directory.exists() and any(directory.iterdir()):
            raise CacheFormatError(
                f"{directory} is not empty and has no {name}: not an embedcache directory"
            )
        created = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if created:
            os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
        tmp = marker.with_name(f".{name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(expected) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o600)
        os.replace(tmp, marker)
    except json.JSONDecodeError as exc:
        raise CacheFormatError(f"{marker} is not valid JSON: {exc}") from exc
    except OSError as exc:
        raise CacheError(f"cannot prepare cache at {directory}: {exc}") from exc


def restrict_permissions(directory: Path) -> None:
    """Make everything under ``directory`` private to its owner (0700 / 0600)."""
    # Created under the process umask; vectors can reveal the texts they embed.
    for path in directory.rglob("*"):
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700 if path.is_dir() else 0o600)
