"""The environment variables embedcache reads are the ones ``config.ENVIRONMENT`` lists.

The package's source is parsed, not run: every ``os.environ`` read and click ``envvar=``
must name a listed variable (directly, through a constant, or through a parameter whose
every caller passes one), so a new variable cannot be read without being listed, scrubbed
by the tests and documented.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import embedcache
from embedcache import config
from embedcache.config import ENVIRONMENT, PLATFORM_ENVIRONMENT

PACKAGE = Path(embedcache.__file__).parent
README = PACKAGE.parent / "README.md"
KNOWN = set(ENVIRONMENT) | set(PLATFORM_ENVIRONMENT)
# A variable's name as it is spelled in source or docs.
NAME = re.compile(r"\b(?:EMBEDCACHE_[A-Z_]*[A-Z]|JINA(?:AI)?_API_KEY)\b")


@dataclass
class _Source:
    """One module of the package: its path, syntax tree and (imported) namespace."""

    path: Path
    tree: ast.Module
    module: ModuleType | None
    parents: dict[int, ast.AST] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parents[id(child)] = node


def _sources() -> Iterator[_Source]:
    for path in sorted(PACKAGE.rglob("*.py")):
        dotted = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        dotted = dotted.removesuffix(".__init__")
        # __main__ modules run code on import; they read no environment of their own.
        module = None if dotted.endswith("__main__") else importlib.import_module(dotted)
        yield _Source(path, ast.parse(path.read_text(encoding="utf-8")), module)


def _is_os(node: ast.AST, attr: str) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == attr
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def _reads(tree: ast.Module) -> tuple[list[ast.expr], list[ast.AST]]:
    """The expressions naming the variable of each read, and any use of ``os.environ``
    in a form this test does not know how to check."""
    named: list[ast.expr] = []
    checked: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "get"
                and _is_os(func.value, "environ")
            ):
                named.append(node.args[0])
                checked.add(id(func.value))
            if _is_os(func, "getenv"):
                named.append(node.args[0])
            named += [kw.value for kw in node.keywords if kw.arg == "envvar"]
        if isinstance(node, ast.Subscript) and _is_os(node.value, "environ"):
            named.append(node.slice)
            checked.add(id(node.value))
    unknown = [n for n in ast.walk(tree) if _is_os(n, "environ") and id(n) not in checked]
    unknown += [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.module == "os"
        and {alias.name for alias in node.names} & {"environ", "getenv"}
    ]
    return named, unknown


def _resolve(expr: ast.expr, source: _Source) -> set[str] | None:
    """The variable names ``expr`` can hold, or ``None`` when the test cannot tell."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return {expr.value}
    if not isinstance(expr, ast.Name):
        return None
    value = getattr(source.module, expr.id, None)  # a module constant, maybe from config
    if isinstance(value, str):
        return {value}
    if isinstance(value, tuple) and all(isinstance(item, str) for item in value):
        return set(value)
    node: ast.AST | None = expr
    while node is not None:
        node = source.parents.get(id(node))
        target = getattr(node, "target", None)
        if isinstance(node, ast.For) and isinstance(target, ast.Name) and target.id == expr.id:
            return _resolve(node.iter, source)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            params = [arg.arg for arg in node.args.args]
            if expr.id in params:
                return _from_callers(node.name, params.index(expr.id), source)
    return None


def _from_callers(function: str, index: int, source: _Source) -> set[str] | None:
    """What every call of ``function`` in the module passes as argument ``index``."""
    calls = [
        node
        for node in ast.walk(source.tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == function
    ]
    names: set[str] = set()
    for call in calls:
        found = _resolve(call.args[index], source) if len(call.args) > index else None
        if found is None:
            return None
        names |= found
    return names if calls else None


def test_every_variable_read_is_listed() -> None:
    read: set[str] = set()
    problems: list[str] = []
    for source in _sources():
        named, unknown = _reads(source.tree)
        where = source.path.relative_to(PACKAGE.parent)
        problems += [f"{where}:{getattr(n, 'lineno', '?')}: os.environ as a whole" for n in unknown]
        for expr in named:
            names = _resolve(expr, source)
            if names is None:
                problems.append(f"{where}:{expr.lineno}: cannot tell which variable is read")
            else:
                read |= names
    assert problems == []
    assert read - KNOWN == set()
    assert set(ENVIRONMENT) - read == set()  # and each listed one is read somewhere


def test_every_variable_named_in_the_package_is_listed() -> None:
    named = {
        name
        for path in PACKAGE.rglob("*.py")
        for name in NAME.findall(path.read_text(encoding="utf-8"))
    }
    assert named - set(ENVIRONMENT) == set()


def test_the_list_is_exactly_the_constants_of_config() -> None:
    constants: set[str] = set()
    for name, value in vars(config).items():
        if name.endswith("_ENV"):
            constants.add(value)
        if name.endswith("_ENV_VARS"):
            constants |= set(value)
    assert constants == set(ENVIRONMENT)


def test_the_readme_documents_every_variable_and_no_other() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Configuration\n") :]
    section = section[: section.index("\n## ", 1)]
    assert set(ENVIRONMENT) - set(NAME.findall(section)) == set()
    # Outside the configuration section too, no variable embedcache does not read (the
    # test suite's own EMBEDCACHE_REQUIRE_* are not mentioned there).
    assert set(NAME.findall(text)) - set(ENVIRONMENT) == set()


def test_the_tests_scrub_exactly_the_list() -> None:
    from . import serving

    assert set(serving._SCRUBBED) == set(ENVIRONMENT)
