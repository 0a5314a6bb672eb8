"""A pytest plugin that counts what a test run did, for comparing two runs of the suite.

At the end of the run it prints the ``assert`` statements that passed (pytest's
assertion-pass hook: run with ``-o enable_assertion_pass_hook=true``, and with the tests'
``__pycache__`` removed first, since assertions rewritten without the hook do not call it),
the ``assert`` statements written in ``tests/``, and how many ``embedcache serve``
subprocesses the tests started (``tests.serving.ProxyProcess``), in how many tests.

Used for the suite's wall time in bench/RESULTS.md::

    find tests -name __pycache__ -prune -exec rm -rf {} +
    PYTHONPATH=.:bench /usr/bin/time -v pytest -q -p suite_count \\
        -o enable_assertion_pass_hook=true
"""

from __future__ import annotations

import ast
import collections
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

_passed = 0
_started: collections.Counter[str] = collections.Counter()
_current: list[str] = []


def pytest_assertion_pass(item: pytest.Item, lineno: int, orig: str, expl: str) -> None:
    global _passed
    _passed += 1


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    _current.append(item.nodeid)
    try:
        return (yield)
    finally:
        _current.pop()


def pytest_configure(config: pytest.Config) -> None:
    try:
        from tests import serving
    except ImportError:  # another tree: nothing to count
        return
    original = serving.ProxyProcess.__init__

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        _started[_current[-1] if _current else ""] += 1
        original(self, *args, **kwargs)

    serving.ProxyProcess.__init__ = counted  # type: ignore[method-assign]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    written = sum(
        isinstance(node, ast.Assert)
        for path in Path(config.rootpath, "tests").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
    )
    terminalreporter.write_line(
        f"asserts passed: {_passed}; assert statements in tests/: {written}; "
        f"embedcache serve subprocesses: {sum(_started.values())} in {len(_started)} tests"
    )
