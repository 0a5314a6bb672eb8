"""The ``embedcache`` command line.

Library errors become one-line messages and exit code 1 in exactly one place
(:class:`_Group`); click's own usage errors exit with 2. The commands live in the
modules beside this one: ``prewarm``, ``serve``, ``cache``, ``reranking``, ``sync``,
``analyze`` and ``demo``.

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
from ..errors import AuthenticationError, EmbedcacheError
from .analyze import analyze
from .cache import clear, export, get, prune, stats, verify
from .demo import demo
from .doctor import doctor
from .inspecting import inspect
from .limit import limit
from .listing import ls
from .options import Group
from .prewarm import prewarm
from .reranking import rerank
from .serve import serve
from .sync import sync

__all__ = ["main"]


class _Group(Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EmbedcacheError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {_in_cli_terms(exc)}") from None
        except BrokenPipeError:
            # The reader went away (`embedcache ls | head -1`): click stops quietly, as git
            # does, where a message would only say "Broken pipe".
            raise
        except OSError as exc:
            raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or ''}") from None


def _in_cli_terms(exc: EmbedcacheError) -> str:
    """``exc``'s message as a CLI user acts on it: the library's names a Python argument
    (``api_key=``) the command line does not have."""
    if isinstance(exc, AuthenticationError) and exc.variables:
        first, *others = exc.variables
        return f"no Jina API key: set {first}" + (f" (or {' or '.join(others)})" if others else "")
    return str(exc)


#: Shell completion, as click generates it (shown at the end of `embedcache --help`).
COMPLETION_HELP = """\b
Shell completion of commands, options and choices:
  eval "$(_EMBEDCACHE_COMPLETE=bash_source embedcache)"    # in ~/.bashrc
  eval "$(_EMBEDCACHE_COMPLETE=zsh_source embedcache)"     # in ~/.zshrc
  _EMBEDCACHE_COMPLETE=fish_source embedcache > ~/.config/fish/completions/embedcache.fish
"""


# -h is --help in every command: the child contexts inherit help_option_names.
@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=COMPLETION_HELP,
)
@click.version_option(VERSION, "-V", "--version", prog_name="embedcache")
def main() -> None:
    """A disk cache in front of the Jina AI embeddings API.

    Set JINAAI_API_KEY or JINA_API_KEY for misses; a fully cached run needs no key.
    Try `embedcache demo` for an offline tour.

    The global options work before or after the command name (`embedcache --cache-dir DIR
    stats` or `embedcache stats --cache-dir DIR`); given in both places, the one after the
    name wins.
    """


for _command in (
    prewarm, serve, stats, ls, inspect, get, rerank, export, prune, clear, verify, sync, demo
):  # fmt: skip
    main.add_command(_command)
main.add_command(doctor)
main.add_command(limit)
main.add_command(analyze)
