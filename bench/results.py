"""Shared writing of bench/RESULTS.md, so several benchmark scripts can own parts of it.

``bench/run.py`` writes the main report; other scripts (``bench/proxy_load.py``) own a
*marked section* each, delimited by ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``
lines. Each writer keeps what it does not own: :func:`write_section` replaces (or appends)
one section and leaves the rest of the file alone; :func:`write_report` replaces the main
report and carries every marked section of the old file over, after it.
:func:`baseline_tree` gives a script the code of an older revision to measure beside
today's in the same run (``--baseline REV``).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

__all__ = [
    "RESULTS", "baseline_tree", "replace_section", "sections", "write_report", "write_section",
]  # fmt: skip

RESULTS = Path(__file__).with_name("RESULTS.md")
_SECTION = re.compile(r"<!-- ([\w-]+):start -->\n.*?<!-- \1:end -->\n?", re.DOTALL)


def _marked(name: str, body: str) -> str:
    return f"<!-- {name}:start -->\n{body.strip()}\n<!-- {name}:end -->\n"


def sections(text: str) -> dict[str, str]:
    """Every marked section of ``text``, markers included, by name, in file order."""
    return {match.group(1): match.group(0) for match in _SECTION.finditer(text)}


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with section ``name`` holding ``body``: replaced in place, else appended."""
    new = _marked(name, body)
    for match in _SECTION.finditer(text):
        if match.group(1) == name:
            return text[: match.start()] + new + text[match.end() :]
    return text.rstrip("\n") + "\n\n" + new if text.strip() else new


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Put ``body`` in section ``name`` of the file at ``path``, keeping everything else."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    path.write_text(replace_section(old, name, body), encoding="utf-8")


def write_report(report: str, path: Path = RESULTS) -> None:
    """Replace the unmarked report in ``path``, keeping the old file's marked sections."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    text = report.rstrip("\n") + "\n"
    for section in sections(old).values():
        text += "\n" + section
    path.write_text(text, encoding="utf-8")


def baseline_tree(root: Path, rev: str) -> Path:
    """A work tree of this repository at ``rev`` under ``root`` (the code as it was, for
    comparison); the caller prunes work trees (``git worktree prune``) once ``root`` is gone."""
    tree = root / f"baseline-{rev}"
    subprocess.run(
        ["git", "-C", str(RESULTS.parent.parent), "worktree", "add", "--detach", str(tree), rev],
        check=True,
        capture_output=True,
    )
    return tree
