"""What people type and read: sizes, durations and moments parsed from options; bytes,
durations, times and dollars shown."""

from __future__ import annotations

import re
import time
from datetime import datetime

import click

__all__ = [
    "Size",
    "dollars",
    "format_bytes",
    "format_duration",
    "format_time",
    "money",
    "parse_duration",
    "parse_size",
    "parse_size_limit",
    "parse_time",
]

_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*")
# A number, then a unit: a prefix (k, m, g, t; i for powers of 1024) with an optional "b",
# or "b" alone.
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*(?:([kmgt])(i?)b?|(b))?\s*")


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
    """``500MB`` / ``2GiB`` / ``1e9B`` / ``10k`` as bytes; ``0`` needs no unit.

    A bare number is refused: ``--max-size 6`` meant 6 GB far more often than 6 bytes, and
    taken as bytes it empties a cache.
    """
    if value is None:
        return None
    match = _SIZE.fullmatch(value.lower())
    if not match:
        raise click.BadParameter(f"{value!r} is not a size like 500MB or 2GiB")
    number, unit, binary, plain_bytes = match.groups()
    if unit is None and plain_bytes is None and float(number) != 0:
        raise click.BadParameter(
            f"{value!r} has no unit: say {number}GB, {number}MiB or {number}B (bytes)"
        )
    unit = unit or ""
    scale = 1024 ** list(_UNITS).index(unit) if binary else _UNITS[unit]
    return int(float(number) * scale)


def parse_size_limit(value: str) -> int:
    """A size limit as bytes: a size with its unit, as :func:`parse_size` reads it, or
    ``none`` / ``0``, returned as 0 (no limit, as :class:`~embedcache.storage.store.Store`
    takes it).

    :raises click.BadParameter: anything else, with a message for the user.
    """
    if value.strip().lower() in ("none", "0"):
        return 0
    size = parse_size(value) or 0
    if size < 1:
        raise click.BadParameter(f"{value!r} is less than a byte: say none to remove the limit")
    return size


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


def dollars(tokens: float, price_per_million: float) -> float:
    """An estimated cost in dollars, to 6 significant digits and at most 8 decimals (exact
    at the default price, 5e-8 a token): a float's tail (0.0051030500000000005) is noise in
    an estimate, and rounding to fewer decimals would show the few tokens a small run saves
    as $0."""
    return round(float(f"{tokens * price_per_million / 1_000_000:.6g}"), 8)


def money(amount: float) -> str:
    """``$0.0075``; an amount under a tenth of a cent with its digits (``$0.00000065``), not
    as ``$0.0000``."""
    if amount == 0 or amount >= 0.001:
        return f"${amount:,.4f}"
    return "$" + f"{amount:.8f}".rstrip("0")


class Size(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.5 on, not 8.2
    """A byte size like ``64MiB`` (:func:`parse_size`); a bad one is an error naming its
    option.

    :param zero: whether ``0`` is a value (an option's "none" or "never").
    """

    name = "size"

    def __init__(self, *, zero: bool = False) -> None:
        self.zero = zero

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        try:
            size = parse_size(str(value))
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)
        if size == 0 and self.zero:
            return 0
        if not size:
            self.fail(f"{value!r} must be more than 0 bytes", param, ctx)
        return size
