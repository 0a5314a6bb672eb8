"""The README's examples run as written.

Every ```python block directly preceded by the line ``<!-- example: runs against the
emulator -->`` runs in a subprocess of its own, in an empty directory, with a
:class:`JinaEmulator` on loopback as the API (``EMBEDCACHE_BASE_URL``), a fake key in
``JINA_API_KEY`` and ``EMBEDCACHE_DIR`` in the test's tmp dir; it fails if the block raises.
Nothing else is assumed of a block, so any section may mark its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedcache.config import ENVIRONMENT
from embedcache.testing import JinaEmulator

from .conftest import API_KEY

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- example: runs against the emulator -->"
_BLOCK = re.compile(rf"^{re.escape(MARKER)}\n```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^#+ (.+)$", re.MULTILINE)
#: Seconds one example may take (a LlamaIndex import alone takes a few).
_EXAMPLE_SECONDS = 90


def examples(text: str) -> Iterator[tuple[str, str]]:
    """``(name, code)`` of each marked block: its section's heading and its line number."""
    for found in _BLOCK.finditer(text):
        headings = _HEADING.findall(text, 0, found.start())
        line = text.count("\n", 0, found.start()) + 2
        yield f"{headings[-1] if headings else 'top'} (line {line})", found.group(1)


EXAMPLES = dict(examples(README.read_text(encoding="utf-8")))


def test_the_runner_finds_marked_blocks_only() -> None:
    text = (
        f"# A\n{MARKER}\n```python\nprint(1)\n```\n\n```python\nunmarked()\n```\n"
        f"# B\n{MARKER}\n\n```python\nnot_directly_preceded()\n```\n"
        f"{MARKER}\n```bash\nnot python\n```\n{MARKER}\n```python\nx = 2\ny = 3\n```\n"
    )
    assert list(examples(text)) == [("A (line 3)", "print(1)\n"), ("B (line 21)", "x = 2\ny = 3\n")]


def test_the_readme_marks_its_python_examples() -> None:
    names = " ".join(EXAMPLES)
    for section in ("Use it from Python", "Async", "LangChain", "LlamaIndex"):
        assert section in names


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_readme_example_runs_against_the_emulator(
    name: str, emulator: JinaEmulator, tmp_path: Path
) -> None:
    environ = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT}
    environ.update(
        EMBEDCACHE_BASE_URL=emulator.url,
        JINA_API_KEY=API_KEY,
        EMBEDCACHE_DIR=str(tmp_path / "cache"),
    )
    work = tmp_path / "work"
    work.mkdir()
    script = work / "example.py"
    script.write_text(EXAMPLES[name], encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=work,
        env=environ,
        capture_output=True,
        text=True,
        timeout=_EXAMPLE_SECONDS,
    )
    script.unlink()  # nothing of the example is left for the session's key check
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    assert API_KEY not in done.stdout + done.stderr
