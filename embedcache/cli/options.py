"""What the CLI commands share: the global options and the context they build, and common
options (their values are parsed by :mod:`.units`).

The global options (``--cache-dir``, ``--base-url``, the Redis and rate-limit options) are
defined once, in :func:`global_options`, and taken both before the command name (by
:class:`Group`) and after it (by every :class:`Command`). Given in both places, the one after
the command name wins, option by option: the rule click already applies to an option given
twice, and what lets a shell alias that fixes ``--cache-dir`` be overridden for one run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

from ..config import (
    DEFAULT_MODEL,
    DEFAULT_PRICE_PER_MILLION_TOKENS,
    DEFAULT_REDIS_PREFIX,
    PRICE_ENV,
    resolve_cache_dir,
    upstream_id,
)
from ..errors import CacheError, EmbedcacheError
from ..models import RequestOptions, default_task, resolve_options
from ..upstream.limiter import TIERS, Limits, resolve_limits
from .units import format_bytes, parse_size_limit, parse_time

if TYPE_CHECKING:  # imported where used, so `embedcache --help` skips numpy and httpx
    from ..assembly import Assembly, CacheSettings
    from ..maintenance.inventory import Filters

F = TypeVar("F", bound=Callable[..., Any])


def _non_empty(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value:
        raise click.BadParameter("must not be empty", ctx=ctx, param=param)
    return value


def _size_limit(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    return None if value is None else parse_size_limit(value)


def global_options() -> list[click.Option]:
    """The global options, as new :class:`click.Option` objects (a parameter belongs to
    one command, so the group and each command get their own).

    None has a click ``envvar``: the library resolves each default from the environment
    (``config``, ``resolve_limits``), so an option not given stays ``None`` here and the
    variables mean what they mean to the library, whichever position the options take.
    """
    return [
        click.Option(
            ["--cache-dir"],
            type=click.Path(file_okay=False, path_type=Path),
            help="Cache directory (default: $EMBEDCACHE_DIR or the user cache directory).",
        ),
        click.Option(
            ["--size-limit"],
            metavar="SIZE",
            callback=_size_limit,
            help="Set the cache's size limit, kept in the cache directory for every writer, "
            "when this command writes entries (prewarm, get, rerank, serve): 10GB, 512MiB; none "
            "removes it. `embedcache limit` shows and sets it alone.",
        ),
        click.Option(
            ["--base-url"],
            metavar="URL",
            help="Jina API root (default: $EMBEDCACHE_BASE_URL or api.jina.ai). Part of "
            "every cache key: another upstream's vectors are never hits.",
        ),
        click.Option(
            ["--upstream-as"],
            metavar="URL",
            help="Cache as if --base-url were this upstream, to share its entries (a "
            "gateway in front of https://api.jina.ai) (default: $EMBEDCACHE_UPSTREAM_AS).",
        ),
        click.Option(
            ["--redis-url"],
            metavar="URL",
            help="A Redis/Valkey cache shared with other machines, read after the local one; "
            "a cluster as redis+cluster://host:port[,host:port...] (default: "
            "$EMBEDCACHE_REDIS_URL; needs the redis extra).",
        ),
        click.Option(
            ["--redis-prefix"],
            metavar="PREFIX",
            default=DEFAULT_REDIS_PREFIX,
            show_default=True,
            callback=_non_empty,
            help="Key namespace in that Redis, so several teams can share one.",
        ),
        click.Option(
            ["--redis-ttl"],
            metavar="SECONDS",
            type=click.IntRange(min=1),
            help="Seconds each entry written to that Redis lives (default: until Redis evicts it).",
        ),
        click.Option(
            ["--tier"],
            type=click.Choice(sorted(TIERS)),
            help="Pace requests to this Jina account tier's limits "
            "(default: $EMBEDCACHE_TIER; none).",
        ),
        click.Option(
            ["--rpm"],
            type=click.IntRange(min=1),
            help="Requests per minute to stay under ($EMBEDCACHE_RPM).",
        ),
        click.Option(
            ["--tpm"],
            type=click.IntRange(min=1),
            help="Tokens per minute to stay under ($EMBEDCACHE_TPM).",
        ),
    ]


GLOBAL_OPTION_NAMES: tuple[str, ...] = tuple(str(o.name) for o in global_options())
#: For :class:`Command`'s ``ignores``: the global options of a command that sends nothing to
#: the API, and of one that works on the local cache only.
SENDS_NOTHING: Mapping[str, str] = dict.fromkeys(
    ("tier", "rpm", "tpm"), "it sends no request to the API"
)
NO_UPSTREAM: Mapping[str, str] = dict.fromkeys(
    ("base_url", "upstream_as"),
    "it sends no request to the API (--upstream picks one upstream's entries)",
)
LOCAL_ONLY: Mapping[str, str] = dict.fromkeys(
    ("redis_url", "redis_prefix", "redis_ttl"), "it works on the local cache only"
)
GIVEN_BEFORE = "embedcache.global_options_before_the_command"


def take_given(ctx: click.Context) -> dict[str, Any]:
    """Remove the global options from ``ctx.params`` (no callback takes them) and return the
    ones the user gave: a default must not override a value given in the other position."""
    given: dict[str, Any] = {}
    for name in GLOBAL_OPTION_NAMES:
        value = ctx.params.pop(name, None)
        if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT):
            given[name] = value
    return given


@dataclass
class CliContext:
    """Built from the global options, before and after the command name (see
    :meth:`from_options`); the commands receive it through :data:`pass_cli`."""

    cache_dir: Path | None
    base_url: str | None
    upstream_as: str | None = None
    redis_url: str | None = None
    redis_prefix: str = DEFAULT_REDIS_PREFIX
    redis_ttl: int | None = None
    limits: Limits = field(default_factory=Limits)
    #: ``--size-limit`` in bytes (0: remove the limit); ``None``: keep the stored one.
    size_limit: int | None = None

    @classmethod
    def from_options(cls, given: Mapping[str, Any]) -> CliContext:
        """The context of the global options in ``given`` (by parameter name; those absent
        take their defaults). Raises :class:`~embedcache.errors.InvalidInputError` for
        limits that do not resolve (an unknown ``$EMBEDCACHE_TIER``, say)."""
        return cls(
            cache_dir=given.get("cache_dir"),
            base_url=given.get("base_url"),
            upstream_as=given.get("upstream_as"),
            redis_url=given.get("redis_url"),
            redis_prefix=given.get("redis_prefix", DEFAULT_REDIS_PREFIX),
            redis_ttl=given.get("redis_ttl"),
            size_limit=given.get("size_limit"),
            # Resolved from the merged values, so `--tier free stats --rpm 10` is the free
            # tier's limits with 10 requests a minute, as if both were given in one place.
            limits=resolve_limits(
                tier=given.get("tier"), rpm=given.get("rpm"), tpm=given.get("tpm")
            ),
        )

    def settings(self, **overrides: Any) -> CacheSettings:
        """The global options as :class:`~embedcache.assembly.CacheSettings`, with the
        command's own ``overrides`` (fields of the same name)."""
        from ..assembly import CacheSettings

        given = {
            "cache_dir": self.cache_dir,
            "base_url": self.base_url,
            "upstream_as": self.upstream_as,
            "limits": self.limits,
            "redis_url": self.redis_url,
            "redis_prefix": self.redis_prefix,
            "redis_ttl": self.redis_ttl,
            "size_limit": self.size_limit,
        }
        return CacheSettings(**{**given, **overrides})

    def open(self, *, existing: bool = False, **overrides: Any) -> Assembly:
        """The cache's parts (see :class:`~embedcache.assembly.Assembly`) built from
        :meth:`settings`; closed when the command ends.

        :param existing: the command only reads the cache: a directory that holds none (a
            mistyped ``--cache-dir``) is an error, and nothing is created there.
        :raises CacheError: with ``existing``, no cache at the directory.
        """
        from ..assembly import Assembly
        from ..storage.store import Store

        settings = self.settings(**overrides)
        if existing and self.size_limit is not None:  # reading never writes, a limit neither
            raise click.UsageError(
                "--size-limit is set by commands that write entries (prewarm, get, rerank, serve); "
                "`embedcache limit SIZE` sets it alone"
            )
        if existing and not Store.exists(settings.cache_dir):
            raise CacheError(f"no embedcache cache at {resolve_cache_dir(settings.cache_dir)}")
        parts = Assembly(settings)
        click.get_current_context().call_on_close(parts.close)
        held = parts.store.vector_bytes() if self.size_limit else 0
        if self.size_limit and held > self.size_limit:
            click.echo(
                f"warning: --size-limit {format_bytes(self.size_limit)} is below the "
                f"{format_bytes(held)} of vectors in {parts.store.directory}: "
                "the next write evicts the oldest entries down to it",
                err=True,
            )
        return parts


pass_cli = click.make_pass_decorator(CliContext)


class Command(click.Command):
    """A command that also takes every global option after its name, and receives the
    :class:`CliContext` of them all: given in both places, the value after the name wins.

    :param global_help: help texts to show instead of the usual ones, by parameter name, for
        a command that gives a global option another default (``demo``'s ``--cache-dir``).
    :param ignores: the global options the command has no use for, by parameter name, each
        with why (``"it sends no request to the API"``): left out of its ``--help``, and a
        usage error after its name. Before the name they stay accepted, as global options
        (a shell alias fixing ``--tier`` serves every command).
    """

    def __init__(
        self,
        *args: Any,
        global_help: Mapping[str, str] | None = None,
        ignores: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        shared = global_options()
        for param in self.params:  # one meaning per flag: no command redefines a global one
            for option in shared:
                if option.name == param.name or set(option.opts) & set(param.opts):
                    raise TypeError(
                        f"{self.name}: {'/'.join(param.opts)} is also a global option "
                        f"({option.opts[0]})"
                    )
        help_texts = dict(global_help or {})
        if set(help_texts) - set(GLOBAL_OPTION_NAMES):
            raise TypeError(f"{self.name}: global_help names no global option: {help_texts}")
        self.ignores = dict(ignores or {})
        if set(self.ignores) - set(GLOBAL_OPTION_NAMES):
            raise TypeError(f"{self.name}: ignores names no global option: {self.ignores}")
        for option in shared:
            option.help = help_texts.get(str(option.name), option.help)
            option.hidden = option.name in self.ignores
        self.params += shared

    def invoke(self, ctx: click.Context) -> Any:
        after = take_given(ctx)
        for name in after:
            if name in self.ignores:
                flag = "--" + name.replace("_", "-")
                raise click.UsageError(
                    f"{ctx.command_path} does not use {flag}: {self.ignores[name]}", ctx
                )
        given = {**ctx.meta.get(GIVEN_BEFORE, {}), **after}
        try:
            ctx.obj = CliContext.from_options(given)
        except EmbedcacheError as exc:  # a bad tier or limit is bad usage, as at parse time
            raise click.UsageError(str(exc), ctx) from None
        return super().invoke(ctx)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _format_options(self, ctx, formatter)


class Group(click.Group):
    """A group that takes the global options before the command name and hands the ones
    given to its :class:`Command` (its own callback does not receive them)."""

    command_class = Command

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params += global_options()

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        """Add ``cmd``, which must be a :class:`Command`: any other would silently ignore the
        global options given before its name."""
        if not isinstance(cmd, Command):
            raise TypeError(f"{cmd.name} is not an embedcache.cli.options.Command")
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        ctx.meta[GIVEN_BEFORE] = take_given(ctx)  # meta is shared with the command's context
        return super().invoke(ctx)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click.Group.format_options is where the list of commands is written: replacing
        # it must write that list too, or `embedcache --help` names no command.
        _format_options(self, ctx, formatter)
        self.format_commands(ctx, formatter)


def _format_options(
    command: click.Command, ctx: click.Context, formatter: click.HelpFormatter
) -> None:
    """``--help``'s list of options: the command's own, then the global ones under a heading
    of their own (the same list in the group's help and in every command's)."""
    own: list[tuple[str, str]] = []
    shared: list[tuple[str, str]] = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is not None and isinstance(param, click.Option):
            (shared if param.name in GLOBAL_OPTION_NAMES else own).append(record)
    if own:
        with formatter.section("Options"):
            formatter.write_dl(own)
    if shared:  # a command that ignores every global option (analyze) lists none
        with formatter.section("Global options (before or after the command name)"):
            formatter.write_dl(shared)


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
        help="Task adapter; default: the model's own (retrieval.passage on v3, none on "
        "jina-clip-v2); '' sends none. v3 also takes Milvus's name 'clustering'.",
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
    model: str, task: str | None, dimensions: int | None, late_chunking: bool, truncate: bool
) -> RequestOptions:
    """The request settings given by :data:`request_options` (``--task`` not given: the
    model's own, see :func:`~embedcache.models.default_task`; ``--task ''``: none)."""
    return resolve_options(
        model,
        default_task(model) if task is None else task or None,
        dimensions,
        late_chunking=late_chunking,
        truncate=True if truncate else None,
    )


filter_options = _stack(
    click.option("--model", help="Only entries of this model."),
    click.option("--task", help="Only entries of this task."),
    click.option("--dimensions", type=click.IntRange(min=1), help="Only vectors of this size."),
    click.option("--since", help="Only entries stored since: 7d, 12h, or an ISO date."),
    click.option(
        "--upstream",
        metavar="URL",
        help="Only entries fetched from this upstream, as ls shows it "
        "(https://api.jina.ai for Jina's API).",
    ),
)


def build_filters(
    model: str | None,
    task: str | None,
    dimensions: int | None,
    since: str | None,
    before: float | None = None,
    upstream: str | None = None,
) -> Filters:
    from ..maintenance.inventory import Filters

    return Filters(
        model,
        task,
        dimensions,
        parse_time(since),
        before,
        upstream=upstream_id(upstream) if upstream else None,
    )


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
