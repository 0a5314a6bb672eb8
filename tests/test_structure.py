"""The package's shape: every module short enough to read in one sitting, and every module
named in docs/architecture.md, the map a newcomer reads first (and nothing named there that
is gone)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "embedcache"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
MOST_LINES = 500

_ROW = re.compile(r"^\|([^|]*)\|([^|]*)\|(.*)\|\s*$")
_NAME = re.compile(r"`([\w/]+(?:\.py|/))`")


def _modules() -> list[str]:
    """Every module of the package, as a path relative to it (``storage/store.py``)."""
    return sorted(path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py"))


def _named() -> tuple[set[str], set[str]]:
    """What the layer table of docs/architecture.md names: modules and packages (relative to
    the package, packages ending in ``/``), and the subset named in its "where" column.

    A row with a layer number names a top-level module or package; the rows under a
    package's (no layer number) name its modules, relative to it (``http/`` a subpackage).
    A package's row may name its modules in its description instead.
    """
    named: set[str] = set()
    where: set[str] = set()
    package = ""
    for line in ARCHITECTURE.read_text(encoding="utf-8").splitlines():
        row = _ROW.match(line)
        if row is None:
            continue
        layer, place, description = row.groups()
        places = _NAME.findall(place)
        if layer.strip():
            package = places[0] if len(places) == 1 and places[0].endswith("/") else ""
            resolved = places
            described = [package + name for name in _NAME.findall(description)]
        else:
            resolved = [package + name for name in places]
            described = []
        where.update(resolved)
        named.update(resolved, described)
    return named, where


def _is_named(module: str, named: set[str]) -> bool:
    if module in named:
        return True
    # A package's __init__.py is named with the package, or with any module of it (the
    # top-level one by the map itself).
    folder, _, file = module.rpartition("/")
    return file == "__init__.py" and (
        not folder or any(name.startswith(f"{folder}/") for name in named)
    )


@pytest.mark.parametrize("module", _modules())
def test_every_module_is_at_most_500_lines(module: str) -> None:
    lines = len((PACKAGE / module).read_text(encoding="utf-8").splitlines())
    assert lines <= MOST_LINES, f"embedcache/{module} has {lines} lines: split it by job"


def test_every_module_is_named_in_the_architecture_map() -> None:
    named, _ = _named()
    unnamed = [module for module in _modules() if not _is_named(module, named)]
    assert unnamed == [], f"add these to docs/architecture.md's layer table: {unnamed}"


def test_the_architecture_map_names_only_modules_and_packages_that_exist() -> None:
    _, where = _named()
    gone = sorted(name for name in where if not (PACKAGE / name).exists())
    assert gone == [], f"docs/architecture.md names what is not in embedcache/: {gone}"


def test_the_map_is_read_as_the_table_lays_it_out() -> None:
    # The reader itself: rows under a package resolve into it, a subpackage's too, and a
    # package's description names its modules.
    named, where = _named()
    assert {"storage/store.py", "proxy/http/messages.py", "cli/listing.py"} <= where
    assert {"maintenance/inventory.py", "maintenance/sharing.py"} <= named
    assert "store.py" not in named  # never read outside its package
