"""Why prewarm draws its own progress line instead of tqdm's: what each shows of the same
state at the widths terminals have.

A status line must fit the terminal (a wrapped line leaves a stale row per redraw) and keep
what matters most when it cannot show everything. tqdm fits by cutting the line's end; the
prewarm line drops its least useful parts first and keeps the ETA. For each width, this
prints both lines and whether each keeps the count, the ETA and whole words, and writes the
table to its section of bench/RESULTS.md.

    python bench/progress_line.py      (or: tox -e bench-progress)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tqdm as tqdm_package
from tqdm import tqdm

from bench.results import write_section
from embedcache.cli.prewarm import Progress

WIDTHS = (40, 60, 79, 100, 119, 160)
COMMAND = "python bench/progress_line.py"
TQDM_VERSION = tqdm_package.__version__


def _state() -> Progress:
    """Three quarters through a 3M-text prewarm, with every part of the line present."""
    progress = Progress(total=3_000_000, cached=1_234_567, quiet=True)
    progress.start -= 200.0  # 200 s in: 5,000 texts/s, 2 min 30 s to go
    progress.advance(1_000_000, 25_690_123)
    progress.found(12_345)
    return progress


def tqdm_line(progress: Progress, width: int) -> str:
    """The same state as tqdm draws it: its bar, our parts (ETA first) as its postfix."""
    parts = sorted(progress.parts(), key=lambda part: part[0])
    return str(
        tqdm.format_meter(
            progress.done,
            progress.total,
            200.0,
            ncols=width,
            bar_format="prewarm {n:,}/{total:,} ({percentage:.0f}%) {bar} {postfix}",
            postfix=", ".join(text for _, text in parts),
        )
    )


def _verdict(line: str, full: str, width: int, eta: str) -> str:
    """What a reader gets from ``line`` (``full``: the same line drawn without a width):
    whether it fits, keeps the ETA, and ends on a whole word of the full line."""
    last = line.rstrip().split(" ")[-1]
    whole = last in full.replace(",", " ").split() or last in full.split()
    return ", ".join(
        [
            "fits" if len(line) <= width else f"{len(line)} > {width}",
            "ETA kept" if eta in line else "ETA lost",
            "whole words" if whole else "a word cut",
        ]
    )


def main() -> None:
    progress = _state()
    eta = next(text for rank, text in progress.parts() if text.startswith("ETA"))
    rows = []
    for width in WIDTHS:
        ours, theirs = progress.render(width), tqdm_line(progress, width)
        rows.append(
            (
                width,
                ours,
                _verdict(ours, progress.render(1000), width, eta),
                theirs,
                _verdict(theirs, tqdm_line(progress, 1000), width, eta),
            )
        )
        print(f"{width:>4}  ours  {ours!r}\n      tqdm  {theirs!r}")
    table = "\n".join(f"| {w} | `{o}` | {ov} | `{t}` | {tv} |" for w, o, ov, t, tv in rows)
    write_section(
        "progress-line",
        f"""## prewarm's progress line against tqdm's

`{COMMAND}` (tqdm {TQDM_VERSION}): the same state
(three quarters through 3M texts) drawn by `cli/progress.py` and by `tqdm.format_meter` with
the same parts as its postfix, ETA first. tqdm fits a line by cutting its end, mid-word and
after a sliver of bar; ours drops the least useful parts first, keeps the ETA, and gives the
bar only the room left. This is why prewarm draws its own line (redrawn at most every 0.1 s,
the width read again at each redraw, ASCII only, nothing when stderr is not a terminal).

| width | ours | | tqdm | |
|---:|---|---|---|---|
{table}
""",
    )


if __name__ == "__main__":
    main()
