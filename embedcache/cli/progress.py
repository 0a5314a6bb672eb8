"""A status line redrawn in place on a terminal, fitted to its width, and the progress of a
``prewarm`` drawn with it (or written as plain lines off a terminal).

A line longer than the terminal wraps, and ``\\r`` then returns only to the start of its
last row: every redraw would leave a stale row behind. So each line is cut to the width
(read again at every redraw, so a resized window is followed), dropping its least important
parts first, and a bar takes only the room that is left.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

import click

from .output import cut, text_width
from .units import format_duration

__all__ = ["Pacing", "Progress", "StatusLine", "fit_line", "terminal_columns"]

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
    ``width`` terminal columns (a wide character takes two).

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

    while text_width(line(_MIN_BAR if bar else 0)) > width and (kept or bar):
        worst = max(kept, key=lambda part: part[0], default=None)
        if bar and (worst is None or bar_rank >= worst[0]):
            bar = False
        else:
            assert worst is not None
            kept.remove(worst)
    if not bar:
        return cut(line(0), width)  # cut only when even the head is too long
    room = width - text_width(line(0)) - 3  # " [" and "]"
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


@dataclass(frozen=True)
class Pacing:
    """How often a prewarm writes a plain progress line off a terminal (a log wants one
    every few seconds). Not a CLI option: a program running the CLI in-process (the tests)
    may hand another as the root context's ``obj``,
    ``CliRunner().invoke(main, args, obj=Pacing(0.0))``."""

    line_seconds: float = 5.0

    @classmethod
    def of(cls, ctx: click.Context) -> Pacing:
        """The pacing handed to the root of ``ctx``, else the default."""
        given = ctx.find_root().obj
        return given if isinstance(given, cls) else cls()


class Progress:
    """Progress over distinct inputs (texts, or images or PDFs: ``noun``), on stderr so
    ``--json`` output stays clean: on a terminal, one line redrawn in place within its width;
    otherwise a plain line every few seconds (for logs); nothing with ``quiet``.

    :param pace: seconds the rate limits need for a number of texts still to fetch; when
        given, the ETA follows it (a paced fill's early burst would mislead a rate-based one).
    :param line_seconds: seconds between two plain lines (:class:`Pacing`).
    :param noun: what is counted, ``text``, ``image`` or ``PDF`` (an ``s`` is added).
    """

    def __init__(
        self,
        total: int,
        cached: int,
        pace: Callable[[int], float] | None = None,
        *,
        quiet: bool = False,
        line_seconds: float = Pacing.line_seconds,
        noun: str = "text",
    ) -> None:
        self.total, self.cached = total, cached
        self.noun = noun
        self.line_seconds = line_seconds
        self.pace = pace
        self.quiet = quiet
        #: Texts this run fetched, and the tokens it paid for them.
        self.fetched = self.tokens = 0
        #: Texts missing when planned that another process stored meanwhile.
        self.elsewhere = 0
        self.start = self.last_line = time.monotonic()
        self.status = StatusLine(sys.stderr) if not quiet and sys.stderr.isatty() else None
        if self.status is not None:
            self.status.show(self.render(self.status.width), force=True)

    @property
    def done(self) -> int:
        return self.cached + self.fetched + self.elsewhere

    def parts(self) -> list[tuple[float, str]]:
        """What the line says after the count, each with its rank (the highest ranks are
        dropped first when the line must be shortened)."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        parts: list[tuple[float, str]] = [(1, f"{self.fetched:,} fetched")]
        if self.elsewhere:
            parts.append((2, f"{self.elsewhere:,} by another process"))
        parts += [
            (3, f"{self.tokens:,} tokens"),
            (4, f"{self.fetched / elapsed:,.0f} {self.noun}s/s"),
        ]
        eta = self.eta()
        if not math.isnan(eta) and self.done < self.total:
            paced = " at the rate limits" if self.pace is not None else ""
            parts.append((0, f"ETA {format_duration(eta)}{paced}"))
        return parts

    def render(self, width: int) -> str:
        """The terminal line, within ``width`` characters."""
        head = f"prewarm {self.done:,}/{self.total:,} ({self.done / max(self.total, 1):.0%})"
        return fit_line(head, self.parts(), width, self.done / max(self.total, 1))

    def eta(self) -> float:
        """Seconds still needed (``nan`` while no rate is known)."""
        remaining = self.total - self.done
        if self.pace is not None:
            return self.pace(remaining)
        rate = self.fetched / max(time.monotonic() - self.start, 1e-9)
        return remaining / rate if rate else float("nan")

    def advance(self, texts: int, tokens: int) -> None:
        """This run committed a batch of ``texts``, charged ``tokens``."""
        self.fetched += texts
        self.tokens += tokens
        self._tick()

    def found(self, texts: int) -> None:
        """``texts`` still missing when planned were stored meanwhile by another process."""
        self.elsewhere += texts
        self._tick()

    def _tick(self) -> None:
        if self.status is not None:
            if self.status.due():
                self.status.show(self.render(self.status.width))
        elif not self.quiet and time.monotonic() - self.last_line >= self.line_seconds:
            self.line()

    def line(self) -> None:
        """The plain line written off a terminal."""
        self.last_line = time.monotonic()
        text = f"{self.done:,}/{self.total:,} {self.noun}s ({self.done / max(self.total, 1):.0%})"
        parts = ", ".join(part for _, part in self.parts())
        click.echo(f"prewarm: {text}, {self.cached:,} hits, {parts}", err=True)

    def close(self) -> None:
        """Leave the final count on the terminal."""
        if self.status is not None:
            self.status.show(self.render(self.status.width), force=True)
            self.status.finish()
