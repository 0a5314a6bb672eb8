"""The ``embedcache`` command line.

Library errors become one-line messages and exit code 1 in exactly one place
(:class:`_Group`); click's own usage errors exit with 2. The commands live in the
modules beside this one: ``prewarm``, ``serve``, ``cache``, ``sync`` and ``demo``.

The shared Redis tier is configured once, on the group (``--redis-url``, ``--redis-prefix``),
for every command: embedding commands read and fill it, falling back to local disk when it is
down; ``sync``, ``stats`` and ``verify`` work on it and fail with a one-line error instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..config import DEFAULT_REDIS_PREFIX, VERSION
from ..errors import EmbedcacheError
from ..upstream.limiter import TIERS, resolve_limits
from .cache import clear, export, get, inspect, ls, prune, stats, verify
from .demo import demo
from .options import CliContext
from .prewarm import prewarm
from .serve import serve
from .sync import sync

__all__ = ["main"]


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EmbedcacheError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or ''}") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="embedcache")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Cache directory (default: $EMBEDCACHE_DIR or the user cache directory).",
)
@click.option("--base-url", help="Jina API root (default: $EMBEDCACHE_BASE_URL or api.jina.ai).")
@click.option(
    "--redis-url",
    metavar="URL",
    help="A Redis/Valkey cache shared with other machines, read after the local one "
    "(default: $EMBEDCACHE_REDIS_URL; needs the redis extra).",
)
@click.option(
    "--redis-prefix",
    metavar="PREFIX",
    default=DEFAULT_REDIS_PREFIX,
    show_default=True,
    help="Key namespace in that Redis, so several teams can share one.",
)
@click.option(
    "--redis-ttl",
    metavar="SECONDS",
    type=click.IntRange(min=1),
    help="Seconds each entry written to that Redis lives (default: until Redis evicts it).",
)
@click.option(
    "--tier",
    type=click.Choice(sorted(TIERS)),
    help="Pace requests to this Jina account tier's limits (default: $EMBEDCACHE_TIER; none).",
)
@click.option(
    "--rpm", type=click.IntRange(min=1), help="Requests per minute to stay under ($EMBEDCACHE_RPM)."
)
@click.option(
    "--tpm", type=click.IntRange(min=1), help="Tokens per minute to stay under ($EMBEDCACHE_TPM)."
)
@click.pass_context
def main(
    ctx: click.Context,
    cache_dir: Path | None,
    base_url: str | None,
    redis_url: str | None,
    redis_prefix: str,
    redis_ttl: int | None,
    tier: str | None,
    rpm: int | None,
    tpm: int | None,
) -> None:
    """A disk cache in front of the Jina AI embeddings API.

    Set JINAAI_API_KEY or JINA_API_KEY for misses; a fully cached run needs no key.
    Try `embedcache demo` for an offline tour.
    """
    if not redis_prefix:
        raise click.BadParameter("must not be empty", param_hint="--redis-prefix")
    try:
        limits = resolve_limits(tier=tier, rpm=rpm, tpm=tpm)
    except EmbedcacheError as exc:
        raise click.UsageError(str(exc)) from None
    ctx.obj = CliContext(cache_dir, base_url, redis_url, redis_prefix, redis_ttl, limits)


for _command in (
    prewarm, serve, stats, ls, inspect, get, export, prune, clear, verify, sync, demo
):  # fmt: skip
    main.add_command(_command)
