"""A status line redrawn in place on a terminal, fitted to its width.

A line longer than the terminal wraps, and ``\\r`` then returns only to the start of its
last row: every redraw would leave a stale row behind. So each line is cut to the width
(read again at every redraw, so a resized window is followed), dropping its least important
parts first, and a bar takes only the room that is left.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from typing import TextIO

__all__ = ["StatusLine", "fit_line", "terminal_columns"]

#: Narrowest bar worth drawing, and the widest (a longer one says nothing more).
_MIN_BAR = 10
_MAX_BAR = 30
#: Least time between two redraws: a fast fill commits hundreds of batches a second.
_REDRAW_SECONDS = 0.1
#: Erase from the cursor to the end of the line (what a shorter redraw leaves behind).
_ERASE_TO_END = "\x1b[K"


def terminal_columns(stream: TextIO) -> int:
    """The width to draw in: ``$COLUMNS`` or standard output's terminal (as
    ``shutil.get_terminal_size`` finds them), else the terminal ``stream`` writes to (standard
    output may be a file while the progress goes to a terminal), else 80."""
    columns = shutil.get_terminal_size((0, 0)).columns
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError):  # not a terminal, or a stream without a descriptor
        return 80


def fit_line(
    head: str,
    parts: Sequence[tuple[float, str]],
    width: int,
    fraction: float | None = None,
    bar_rank: float = 3.5,
) -> str:
    """``head``, a bar for ``fraction`` (0 to 1), then ``parts`` joined by ``", "``, within
    ``width`` characters.

    :param parts: ``(rank, text)`` in the order shown; when they do not all fit, the
        highest ranks are dropped first (rank 0 stays longest).
    :param bar_rank: the bar's rank among them (it is dropped in turn, and otherwise takes
        the room left, up to 30 columns).
    """
    kept = list(parts)
    bar = fraction is not None

    def line(bar_size: int) -> str:
        tail = ", ".join(text for _, text in kept)
        shown = head
        if bar_size:
            filled = round(bar_size * min(max(fraction or 0.0, 0.0), 1.0))
            shown += f" [{'#' * filled}{'-' * (bar_size - filled)}]"
        return f"{shown}  {tail}" if tail else shown

    while len(line(_MIN_BAR if bar else 0)) > width and (kept or bar):
        worst = max(kept, key=lambda part: part[0], default=None)
        if bar and (worst is None or bar_rank >= worst[0]):
            bar = False
        else:
            assert worst is not None
            kept.remove(worst)
    if not bar:
        text = line(0)
        if len(text) <= width:
            return text
        return text[: width - 1] + "…" if width > 0 else ""  # even the head is too long
    room = width - len(line(0)) - 3  # " [" and "]"
    return line(min(room, _MAX_BAR))


class StatusLine:
    """One line on a terminal, redrawn in place (at most every tenth of a second unless
    forced), always within the terminal's width less one column: a line that fills the
    last column makes some terminals wrap before the next redraw."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._last = 0.0
        self._shown = False

    @property
    def width(self) -> int:
        return max(terminal_columns(self.stream) - 1, 1)

    def due(self) -> bool:
        """Whether a redraw now would be shown (callers skip building the line if not)."""
        return time.monotonic() - self._last >= _REDRAW_SECONDS

    def show(self, text: str, *, force: bool = False) -> None:
        """Draw ``text`` (already fitted, or cut here) over the line shown before."""
        if not force and not self.due():
            return
        self._last = time.monotonic()
        self._shown = True
        self.stream.write(f"\r{text[: self.width]}{_ERASE_TO_END}")
        self.stream.flush()

    def clear(self) -> None:
        """Erase the line, so what is written next starts on a clean one."""
        if self._shown:
            self.stream.write(f"\r{_ERASE_TO_END}")
            self.stream.flush()
            self._shown = False

    def finish(self) -> None:
        """Leave the last line shown in place and move below it."""
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False
