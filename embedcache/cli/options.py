"""What the CLI commands share: the context object, common options, value parsers, output."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..config import (
    DEFAULT_MODEL,
    DEFAULT_PRICE_PER_MILLION_TOKENS,
    DEFAULT_REDIS_PREFIX,
    DEFAULT_TASK,
    PRICE_ENV,
)
from ..models import RequestOptions, resolve_options
from ..upstream.limiter import Limits

if TYPE_CHECKING:  # imported where used, so `embedcache --help` skips numpy and httpx
    from ..assembly import Assembly, CacheSettings
    from ..maintenance.inventory import Filters

F = TypeVar("F", bound=Callable[..., Any])

_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*")


@dataclass
class CliContext:
    """Built by the ``embedcache`` group from its global options."""

    cache_dir: Path | None
    base_url: str | None
    redis_url: str | None = None
    redis_prefix: str = DEFAULT_REDIS_PREFIX
    redis_ttl: int | None = None
    limits: Limits = field(default_factory=Limits)

    def settings(self, **overrides: Any) -> CacheSettings:
        """The global options as :class:`~embedcache.assembly.CacheSettings`, with the
        command's own ``overrides`` (fields of the same name)."""
        from ..assembly import CacheSettings

        given = {
            "cache_dir": self.cache_dir,
            "base_url": self.base_url,
            "limits": self.limits,
            "redis_url": self.redis_url,
            "redis_prefix": self.redis_prefix,
            "redis_ttl": self.redis_ttl,
        }
        return CacheSettings(**{**given, **overrides})

    def open(self, **overrides: Any) -> Assembly:
        """The cache's parts (see :class:`~embedcache.assembly.Assembly`) built from
        :meth:`settings`; closed when the command ends."""
        from ..assembly import Assembly

        parts = Assembly(self.settings(**overrides))
        click.get_current_context().call_on_close(parts.close)
        return parts


pass_cli = click.make_pass_decorator(CliContext)


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


request_options = _stack(
    click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Jina model id."),
    click.option(
        "--task",
        default=DEFAULT_TASK,
        show_default=True,
        help="Task adapter (v3 also takes Milvus's name 'clustering').",
    ),
    click.option(
        "--dimensions",
        type=click.IntRange(min=1),
        help="Matryoshka size; default: the model's native size (not sent).",
    ),
    click.option(
        "--late-chunking", is_flag=True, help="Embed each group as one late-chunking request."
    ),
    click.option("--truncate", is_flag=True, help="Let the API cut texts over its token limit."),
)


def build_options(
    model: str, task: str, dimensions: int | None, late_chunking: bool, truncate: bool
) -> RequestOptions:
    """The request settings given by :data:`request_options`."""
    return resolve_options(
        model,
        task or None,
        dimensions,
        late_chunking=late_chunking,
        truncate=True if truncate else None,
    )


def parse_duration(value: str | None) -> float | None:
    """Seconds in ``90s`` / ``30m`` / ``12h`` / ``7d`` / ``2w``; ``None`` passes through."""
    if value is None:
        return None
    match = _DURATION.fullmatch(value.lower())
    if not match:
        raise click.BadParameter(f"{value!r} is not a duration like 30d, 12h or 2w")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def parse_time(value: str | None) -> float | None:
    """A moment: a duration ago (``7d``), or an ISO date or datetime."""
    if value is None:
        return None
    if _DURATION.fullmatch(value.lower()):
        return time.time() - (parse_duration(value) or 0.0)
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a duration like 7d / 12h nor an ISO date"
        ) from None


def parse_size(value: str | None) -> int | None:
    """``500MB`` / ``2GiB`` / ``1e9`` / ``10k`` as bytes."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmgt]?)(i?)b?\s*", value.lower())
    if not match:
        raise click.BadParameter(f"{value!r} is not a size like 500MB or 2GiB")
    number, unit, binary = match.groups()
    scale = 1024 ** list(_UNITS).index(unit) if binary else _UNITS[unit]
    return int(float(number) * scale)


def format_bytes(size: float) -> str:
    """A human-readable byte count."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def format_duration(seconds: float) -> str:
    """``12 s``, ``3 min 20 s``, ``2 h 05 min``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def format_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")


filter_options = _stack(
    click.option("--model", help="Only entries of this model."),
    click.option("--task", help="Only entries of this task."),
    click.option("--dimensions", type=click.IntRange(min=1), help="Only vectors of this size."),
    click.option("--since", help="Only entries stored since: 7d, 12h, or an ISO date."),
)


def build_filters(
    model: str | None,
    task: str | None,
    dimensions: int | None,
    since: str | None,
    before: float | None = None,
) -> Filters:
    from ..maintenance.inventory import Filters

    return Filters(model, task, dimensions, parse_time(since), before)


price_option = click.option(
    "--price-per-million",
    type=click.FloatRange(min=0),
    envvar=PRICE_ENV,  # click reports a bad value as a usage error naming the variable
    default=DEFAULT_PRICE_PER_MILLION_TOKENS,
    show_default=f"{DEFAULT_PRICE_PER_MILLION_TOKENS}, or ${PRICE_ENV}; an estimate",
    help="Dollars per million tokens, for cost estimates.",
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def echo_json(data: object, *, compact: bool = False) -> None:
    click.echo(json.dumps(data, separators=(",", ":")) if compact else json.dumps(data, indent=2))


def dollars(tokens: float, price_per_million: float) -> float:
    return tokens * price_per_million / 1_000_000
