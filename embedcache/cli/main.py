"""The ``embedcache`` command line.

Library errors become one-line messages and exit code 1 in exactly one place
(:class:`_Group`); click's own usage errors exit with 2. The commands live in the
modules beside this one: ``prewarm``, ``serve``, ``cache``, ``sync`` and ``demo``.

The global options (the cache directory, the API root, the shared Redis tier, the rate
limits) are defined once in :mod:`.options` and taken before or after the command name, by
every command; given in both places, the one after the name wins. Embedding commands read
and fill the Redis tier, falling back to local disk when it is down; ``sync``, ``stats`` and
``verify`` work on it and fail with a one-line error instead.
"""

from __future__ import annotations

from typing import Any

import click

from ..config import VERSION
from ..errors import EmbedcacheError
from .cache import clear, export, get, inspect, ls, prune, stats, verify
from .demo import demo
from .doctor import doctor
from .limit import limit
from .options import Group
from .prewarm import prewarm
from .serve import serve
from .sync import sync

__all__ = ["main"]


class _Group(Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EmbedcacheError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
        except BrokenPipeError:
            # The reader went away (`embedcache ls | head -1`): click stops quietly, as git
            # does, where a message would only say "Broken pipe".
            raise
        except OSError as exc:
            raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or ''}") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="embedcache")
def main() -> None:
    """A disk cache in front of the Jina AI embeddings API.

    Set JINAAI_API_KEY or JINA_API_KEY for misses; a fully cached run needs no key.
    Try `embedcache demo` for an offline tour.

    The global options work before or after the command name (`embedcache --cache-dir DIR
    stats` or `embedcache stats --cache-dir DIR`); given in both places, the one after the
    name wins.
    """


for _command in (
    prewarm, serve, stats, ls, inspect, get, export, prune, clear, verify, sync, demo
):  # fmt: skip
    main.add_command(_command)
main.add_command(doctor)
main.add_command(limit)
