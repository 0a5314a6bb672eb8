"""``embedcache serve``'s options for running it for a team: per-caller token budgets
(:mod:`~embedcache.proxy.budgets`) and the request log (:mod:`~embedcache.proxy.requestlog`),
which ``embedcache analyze`` reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .options import price_option
from .units import Size

__all__ = ["team_options"]

F = TypeVar("F", bound=Callable[..., object])


def team_options(command: F) -> F:
    """Add the budget, price and request-log options to ``command``, in this order."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--budget-tokens",
        type=click.IntRange(min=0),
        help="Default token budget of every caller key per --budget-window (misses only: hits "
        "are free); over it a request gets a 429 with Retry-After.",
    ),
    click.option(
        "--budget-window",
        default=3600.0,
        show_default=True,
        type=click.FloatRange(min=0, min_open=True),
        help="Seconds of a budget's window (fixed windows, aligned on the Unix epoch).",
    ),
    click.option(
        "--budgets",
        "budgets_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        metavar="FILE",
        help="Budgets per key or key group, TOML (or .json): see docs/budgets.md.",
    ),
    price_option,
    click.option(
        "--request-log",
        metavar="FILE",
        type=click.Path(dir_okay=False),
        help="Append one JSON line per embedding request to FILE: route, dialect, key hash, "
        "model, hits, misses, tokens, ms, status (never a text or a key). Off by default.",
    ),
    click.option(
        "--request-log-max-size",
        default="64MiB",
        show_default=True,
        type=Size(zero=True),
        help="Rotate the --request-log once it is this big (FILE -> FILE.1 ...; 0: never).",
    ),
    click.option(
        "--request-log-backups",
        default=3,
        show_default=True,
        type=click.IntRange(min=0),
        help="Rotated --request-log files kept (FILE.1 newest ... FILE.N).",
    ),
]
