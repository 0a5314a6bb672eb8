"""The package's import graph: dependencies point one way (docs/architecture.md), and the
optional extras stay behind the parts that need them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "embedcache"

#: Lower numbers are lower layers; a module may import only from its own layer or below.
#: Keys are module paths relative to the package; a package name covers its modules.
LAYERS = {
    "errors": 0,
    "config": 1,
    "models": 1,
    "tokens": 1,
    "inputs": 1,
    "cache_keys": 2,
    "rerank_keys": 2,  # rerank scores' keys, beside cache_keys
    "extras": 1,
    "upstream": 3,
    "storage": 3,
    "embedding": 4,
    "assembly": 5,
    "maintenance": 5,
    "integrations": 6,
    "proxy": 6,
    "cli": 7,
    "testing": 3,  # the emulator: models and tokens only, never the cache itself
    "function": 6,  # JinaEmbeddingFunction, the front door
    "rerank_function": 6,  # JinaRerankFunction, its rerank twin
    "workers": 6,  # its async methods' worker threads
    "__init__": 8,
    "__main__": 8,
    # The public faces of integrations/langchain.py and llama_index.py: never imported by
    # `import embedcache`, so the package loads neither library.
    "langchain": 8,
    "llama_index": 8,
}
#: Third-party packages that only these parts (or modules, dotted; a tuple: any of them) may
#: import.
CONFINED: dict[str, str | tuple[str, ...]] = {
    "starlette": "proxy",
    "uvicorn": "nowhere",  # the proxy runs its own server; only bench/ uses uvicorn
    "orjson": "proxy",
    "httptools": "proxy",
    "uvloop": "proxy",
    "httpx": "upstream",
    "redis": "storage",
    "diskcache": "storage",
    "pyarrow": "maintenance",
    # The Milvus Lite demo only: pymilvus pulls in grpc, pandas and pyarrow.
    "pymilvus": "cli.demo_milvus",
    "milvus_lite": "cli.demo_milvus",
    # Each extra's library in its own integration module only.
    "langchain_core": ("integrations.langchain", "integrations.langchain_rerank"),
    "llama_index": ("integrations.llama_index", "integrations.llama_index_rerank"),
}


def _part(module: str) -> str:
    return module.split(".")[0]


def _within(module: str, allowed: str | tuple[str, ...]) -> bool:
    """Whether ``module`` is the part or module ``allowed`` (or one of them), or inside it."""
    if isinstance(allowed, tuple):
        return any(_within(module, one) for one in allowed)
    return module == allowed or module.startswith(allowed + ".")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """(absolute module imported, line) for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(["embedcache", *base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            out.append((target, node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
    return out


MODULES = _modules()


def test_every_module_has_a_layer() -> None:
    assert {_part(name) for name in MODULES} <= set(LAYERS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module: str) -> None:
    mine = LAYERS[_part(module)]
    upward = []
    for target, line in _imports(module, MODULES[module]):
        if not target.startswith("embedcache.") or target == "embedcache":
            continue
        theirs = LAYERS[_part(target.removeprefix("embedcache."))]
        if theirs > mine:
            upward.append(f"line {line}: {target}")
    assert not upward, f"{module} imports from a higher layer: {upward}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_optional_dependencies_stay_in_their_part(module: str) -> None:
    strays = [
        f"line {line}: {target}"
        for target, line in _imports(module, MODULES[module])
        if target.split(".")[0] in CONFINED
        and not _within(module, CONFINED[target.split(".")[0]])
        and _part(module) != "testing"  # the emulator is its own HTTP server and client
    ]
    assert not strays, f"{module} imports another part's dependency: {strays}"


def test_import_and_cli_help_leave_heavy_dependencies_unloaded() -> None:
    code = (
        "import sys, embedcache, embedcache.cli; "
        "heavy = {'numpy', 'httpx', 'diskcache', 'starlette', 'redis', 'pymilvus', "
        "'milvus_lite', 'langchain_core', 'llama_index'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_milvus_class_loads_neither_langchain_nor_llama_index() -> None:
    code = (
        "import sys; from embedcache import JinaEmbeddingFunction; "
        "loaded = {'langchain_core', 'llama_index', 'pydantic'} & set(sys.modules); "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


#: The caching core's parts, each built only by the composition root (or by its own module:
#: the process's one ``AUTOFLUSH``), so how a cache is put together is read in one place.
PARTS = {
    "CachedEmbedder": "embedding.embedder",
    "Fetcher": "embedding.fetching",
    "Inflight": "embedding.coalescing",
    "BatchScheduler": "embedding.scheduler",
    "Counters": "embedding.counters",
    "Recorder": "embedding.counters",
    "Autoflush": "embedding.counters",
    "Tiers": "storage.tiers",
    "WriteBack": "storage.writeback",
}
COMPOSITION_ROOT = "assembly"


def _calls_and_names(path: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(name called, line) for every call of a plain or dotted name, and (name, line) for
    every name or attribute read, in ``path``."""
    calls, names = [], []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                calls.append((func.id, node.lineno))
            elif isinstance(func, ast.Attribute):
                calls.append((func.attr, node.lineno))
        elif isinstance(node, ast.Name):
            names.append((node.id, node.lineno))
        elif isinstance(node, ast.Attribute):
            names.append((node.attr, node.lineno))
    return calls, names


def test_the_parts_are_defined_where_the_seam_test_looks() -> None:
    for part, module in PARTS.items():
        assert f"class {part}" in MODULES[module].read_text(encoding="utf-8"), (part, module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_composition_root_builds_the_caching_cores_parts(module: str) -> None:
    calls, _ = _calls_and_names(MODULES[module])
    built = [
        f"line {line}: {name}()"
        for name, line in calls
        if name in PARTS and module not in (COMPOSITION_ROOT, PARTS[name])
    ]
    assert not built, f"{module} builds parts that embedcache/assembly.py hands in: {built}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_composition_root_joins_the_process_autoflush(module: str) -> None:
    _, names = _calls_and_names(MODULES[module])
    named = [f"line {line}" for name, line in names if name == "AUTOFLUSH"]
    allowed = (COMPOSITION_ROOT, PARTS["Autoflush"])
    assert module in allowed or not named, f"{module} names AUTOFLUSH: {named}"


def test_the_caching_core_reaches_storage_only_through_tiers_and_claims() -> None:
    reached = {
        target.removeprefix("embedcache.")
        for module in MODULES
        if _part(module) == "embedding"
        for target, _ in _imports(module, MODULES[module])
        if target.startswith("embedcache.storage")
    }
    assert reached == {"storage.tiers", "storage.claims"}
