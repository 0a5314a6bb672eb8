"""Running the ``embedcache`` CLI in-process with click's CliRunner, and reading its answer.

One place for what every CLI test module needs, so they all agree on what success and a
user-facing error look like.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from click.testing import CliRunner, Result

from embedcache.cli import main

#: A fixture's bound CLI call (each module fixes the cache dir and upstream its own way).
Invoke = Callable[..., Result]

#: Where the global options go: before the command name, or right after it.
Position = Literal["before", "after"]
POSITIONS: tuple[Position, ...] = ("before", "after")


def placed(position: Position, options: Sequence[str], *args: str) -> list[str]:
    """``OPTIONS COMMAND REST`` or ``COMMAND OPTIONS REST``, where ``args`` is
    ``COMMAND REST``."""
    if position == "before" or not args:
        return [*options, *args]
    return [args[0], *options, *args[1:]]


def invoke(
    *args: str,
    cache_dir: Path | None = None,
    base_url: str | None = None,
    key: str | None = None,
    stdin: str | None = None,
    obj: object = None,
) -> Result:
    """``embedcache [--cache-dir DIR] [--base-url URL] ARGS``, with ``key`` as
    ``JINA_API_KEY`` when given (else no key: the suite's environment has none), and ``obj``
    as the root context's (a :class:`~embedcache.cli.prewarm.Pacing`, say)."""
    prefix: list[str] = []
    if cache_dir is not None:
        prefix += ["--cache-dir", str(cache_dir)]
    if base_url is not None:
        prefix += ["--base-url", base_url]
    env = {"JINA_API_KEY": key} if key else {}
    return CliRunner().invoke(main, [*prefix, *args], env=env, input=stdin, obj=obj)


def ok(result: Result) -> Result:
    """``result``, after checking the command succeeded (its output shown if not)."""
    assert result.exit_code == 0, result.output
    return result


def as_json(result: Result) -> Any:
    """The JSON a successful ``--json`` command printed."""
    return json.loads(ok(result).stdout)


def one_line_error(result: Result, code: int = 1) -> str:
    """The single ``Error:`` line of a command that failed with ``code``, after checking
    there is exactly one and no traceback: what users see of a failure."""
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    return errors[0]
