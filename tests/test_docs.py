"""The docs hold: every module's doctests run, and the claims tests can check are checked."""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil
import re
from pathlib import Path

import pytest

import embedcache

PACKAGE = Path(embedcache.__file__).parent
# __main__ modules run the CLI or a server when imported: they hold no doctests.
MODULES = [
    "embedcache",
    *(
        info.name
        for info in pkgutil.walk_packages(embedcache.__path__, "embedcache.")
        if not info.name.endswith("__main__")
    ),
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    # Every module imports in the test environment (the test extra brings serve and redis).
    module = importlib.import_module(name)
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder(exclude_empty=True).find(module, name):
        runner.run(test, out=out.write)
    assert runner.failures == 0, out.getvalue()


def test_the_doctests_are_not_all_skipped() -> None:
    examples = 0
    for name in MODULES:
        for test in doctest.DocTestFinder().find(importlib.import_module(name), name):
            examples += sum(not ex.options.get(doctest.SKIP) for ex in test.examples)
    assert examples >= 10


def test_only_the_storage_package_imports_the_stores_parts() -> None:
    # storage/store.py says nothing outside embedcache.storage imports these.
    parts = r"(?:index|rows|segments|directory)"
    pattern = re.compile(
        rf"^\s*(?:from\s+(?:embedcache\.storage|\.+storage)\.{parts}\b"
        rf"|from\s+(?:embedcache\.storage|\.+storage)\s+import\s+.*\b{parts}\b"
        rf"|import\s+embedcache\.storage\.{parts}\b)",
        re.MULTILINE,
    )
    outside = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.parent.name != "storage" and pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert outside == []
