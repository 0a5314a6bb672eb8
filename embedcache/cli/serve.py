"""``embedcache serve``: run the caching proxy (see :mod:`embedcache.proxy.server`)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import click
from click.core import ParameterSource

from ..config import (
    ADMIN_TOKEN_ENV,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MODEL,
    DEFAULT_RERANK_MODEL,
    EMBEDDINGS_PATH,
    PROXY_TOKEN_ENV,
    redact_url,
    resolve_offline,
    upstream_id,
)
from ..errors import InvalidInputError
from ..extras import requires
from ..models import check_rerank_model, resolve_options
from .options import CliContext, Command, echo_json, pass_cli
from .serve_team import team_options
from .units import Size, parse_size

__all__ = ["serve"]

DEFAULT_PORT = 8787


_SIZE = Size()
_SECONDS = click.FloatRange(min=0, min_open=True)


def _read_keys(path: Path) -> tuple[str, ...]:
    """Keys from a file, one per line; blank lines and ``#`` comments are skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    keys = tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))
    if not keys:
        raise click.BadParameter(f"{path} holds no keys", param_hint="--allow-keys")
    return keys


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command(cls=Command)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to bind; 0 picks a free one (the banner shows which).",
)
@click.option(
    "--upstream",
    metavar="URL",
    help="API root for misses (default: --base-url, $EMBEDCACHE_BASE_URL or api.jina.ai).",
)
@click.option(
    "--token",
    envvar=PROXY_TOKEN_ENV,
    help=f"Require clients to send 'Authorization: Bearer TOKEN'; misses are then paid with "
    f"the server's key. Prefer ${PROXY_TOKEN_ENV}: arguments show in `ps`.",
)
@click.option(
    "--allow-keys",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="File of client API keys (one per line) to serve; other keys are refused unless "
    "--verify-keys accepts them.",
)
@click.option(
    "--verify-keys",
    is_flag=True,
    help="Check each new client key with the upstream once (a one-token request) before "
    "serving it, even from the cache; refuse when the upstream cannot say.",
)
@click.option(
    "--verdict-ttl",
    default=300.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds a --verify-keys verdict is remembered.",
)
@click.option(
    "--admin-token",
    envvar=ADMIN_TOKEN_ENV,
    help=f"Guard /metrics with this bearer token and enable /admin/stats and /admin/flush "
    f"(or ${ADMIN_TOKEN_ENV}).",
)
@click.option("--offline", is_flag=True, default=None, help="Serve hits only; a miss is a 503.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Most texts per upstream request.")
@click.option(
    "--max-concurrency",
    default=DEFAULT_MAX_CONCURRENCY,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most upstream requests in flight at once, shared by all clients.",
)
@click.option("--no-coalesce", is_flag=True, help="Do not let concurrent requests share one fetch.")
@click.option(
    "--rendered-memory",
    default="256MiB",
    show_default=True,
    help="Memory per worker for served embeddings' JSON text and rerank scores, so a "
    "repeat hit is answered without reading the cache or rendering a vector (0: none). "
    "/metrics reports what is held (embedcache_rendered_bytes).",
)
# The flag's old name, which said nothing of what the memory holds: still taken, not shown.
@click.option("--memory", "old_memory", hidden=True)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=lambda: os.cpu_count() or 1,
    show_default="the number of cores",
    help="Processes serving the port (connections spread evenly over them), on the one "
    "cache directory.",
)
@click.option(
    "--tei-model",
    default=DEFAULT_MODEL,
    show_default=True,
    help="Model for TEI's POST /embed (Milvus's tei provider), which names none.",
)
@click.option(
    "--tei-task",
    default="retrieval.passage",
    show_default=True,
    help="Task for a TEI text without a '<task>: ' prefix (e.g. 'retrieval.query: ').",
)
@click.option(
    "--rerank-model",
    default=DEFAULT_RERANK_MODEL,
    show_default=True,
    help="Jina reranker for rerank bodies naming none (TEI's and vLLM's POST /rerank, "
    "Cohere's POST /v2/rerank: Milvus's Model Rankers).",
)
@click.option(
    "--idle-timeout",
    default=15.0,
    show_default=True,
    type=_SECONDS,
    help="Seconds a kept-alive connection may wait for its next request.",
)
@click.option(
    "--header-timeout",
    default=10.0,
    show_default=True,
    type=_SECONDS,
    help="Seconds from a request's first byte to the end of its headers.",
)
@click.option(
    "--body-timeout",
    default=60.0,
    show_default=True,
    type=_SECONDS,
    help="Seconds from the end of a request's headers to the end of its body.",
)
@click.option(
    "--send-timeout",
    default=30.0,
    show_default=True,
    type=_SECONDS,
    help="Seconds answers may wait unread by their client before its connection is closed.",
)
@click.option(
    "--max-connections",
    default=1024,
    show_default=True,
    type=click.IntRange(min=1),
    help="Open connections per worker; over it the oldest idle one is closed, else the new "
    "one gets a 503. Lowered to fit the open-file limit (ulimit -n).",
)
@click.option(
    "--max-body",
    default="64MiB",
    show_default=True,
    type=_SIZE,
    help="Largest request body; a larger one gets a 413.",
)
@click.option(
    "--max-body-memory",
    default="256MiB",
    show_default=True,
    type=_SIZE,
    help="Request body bytes held at once per worker, over all its connections; a body "
    "that would pass it gets a 503.",
)
@click.option(
    "--fetch-images-from",
    "fetch_images_from",
    metavar="HOST",
    multiple=True,
    help="Fetch images and PDFs given by URL on HOST (repeat for more hosts) and key them by "
    "their content, not their URL (the server then fetches what clients name: list only "
    "hosts you trust). Others are keyed by URL and fetched by the API.",
)
@click.option(
    "--max-inputs",
    default=2048,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most inputs in one request (the API takes at most 2048).",
)
@click.option(
    "--max-answer",
    default="96MiB",
    show_default=True,
    type=_SIZE,
    help="Largest answer one request may ask for, estimated before any work (the default "
    "fits the API's largest: 2048 float answers of 1536 dimensions).",
)
@click.option(
    "--drain-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="On SIGTERM or Ctrl-C, seconds given to requests still being read or answered "
    "before their connections are closed (fills already running still commit).",
)
@click.option(
    "--verify-interval",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="With --verify-keys, a given unknown key is checked at most once per this many seconds.",
)
@click.option(
    "--verify-rate",
    default=10.0,
    show_default=True,
    type=_SECONDS,
    help="With --verify-keys, most key checks started per second per worker; over it a new "
    "key gets a 429.",
)
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    help="Least severe log lines written to stderr; info adds one access line per request "
    "(caller's key shown only as an 8-digit hash).",
)
@click.option(
    "--access-log",
    metavar="FILE",
    help="Append one access line per request to FILE ('-': stderr), whatever --log-level.",
)
@team_options
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Once bound, also print one JSON line on stdout: url, host, port, upstream, "
    "cache_dir, shared, offline, workers (for scripts that start it with --port 0).",
)
@pass_cli
def serve(
    cli: CliContext,
    host: str,
    port: int,
    upstream: str | None,
    token: str | None,
    allow_keys: Path | None,
    verify_keys: bool,
    verdict_ttl: float,
    admin_token: str | None,
    offline: bool | None,
    batch_size: int | None,
    max_concurrency: int,
    no_coalesce: bool,
    rendered_memory: str,
    old_memory: str | None,
    workers: int,
    tei_model: str,
    tei_task: str,
    rerank_model: str,
    idle_timeout: float,
    header_timeout: float,
    body_timeout: float,
    send_timeout: float,
    max_connections: int,
    max_body: int,
    max_body_memory: int,
    fetch_images_from: tuple[str, ...],
    max_inputs: int,
    max_answer: int,
    drain_timeout: float,
    verify_interval: float,
    verify_rate: float,
    log_level: str,
    access_log: str | None,
    budget_tokens: int | None,
    budget_window: float,
    budgets_file: Path | None,
    price_per_million: float,
    request_log: str | None,
    request_log_max_size: int,
    request_log_backups: int,
    as_json: bool,
) -> None:
    """Run a Jina-compatible caching proxy: POST /v1/embeddings, GET /v1/models, GET /health,
    GET /metrics.

    Also TEI's POST /embed and GET /info, answered with --tei-model and --tei-task, and
    reranking: Jina's POST /v1/rerank, TEI's and vLLM's POST /rerank and Cohere's
    POST /v2/rerank (answered with --rerank-model unless they name a Jina reranker).

    Point any Jina client at http://HOST:PORT/v1/embeddings. Text requests are answered
    from the cache, misses fetched with the client's own key (its Authorization header) or
    the server's JINAAI_API_KEY / JINA_API_KEY. Images and PDFs are cached by content (or by
    URL); options the cache does not cover are forwarded uncached. Ctrl-C or SIGTERM
    finishes in-flight fetches first.

    Needs the serve extra: pip install 'embedcache[serve]'.
    """
    # No ClickException here: cli.main turns a MissingDependencyError into its one-line error.
    with requires("serve"):
        from ..proxy.app import Proxy, ProxySettings
        from ..proxy.budgets import load_policy
        from ..proxy.http import ServerLimits
        from ..proxy.metrics import Board
        from ..proxy.requestlog import check_writable
        from ..proxy.server import serve_forever
    from ..assembly import Assembly
    from ..upstream.float_style import FloatStyle

    try:  # a TEI model or task the API would refuse is an error now, not on every request
        resolve_options(tei_model, tei_task)
    except InvalidInputError as exc:
        raise click.BadParameter(str(exc), param_hint="--tei-model/--tei-task") from None
    try:
        check_rerank_model(rerank_model)
    except InvalidInputError as exc:
        raise click.BadParameter(str(exc), param_hint="--rerank-model") from None
    if max_body_memory < max_body:
        raise click.BadParameter(
            f"{max_body_memory} bytes is less than --max-body ({max_body}): no body that "
            "large could ever be read",
            param_hint="--max-body-memory",
        )
    memory_flag = "--rendered-memory"
    if old_memory is not None:
        source = click.get_current_context().get_parameter_source("rendered_memory")
        if source is not ParameterSource.DEFAULT:
            raise click.UsageError("--memory is the old name of --rendered-memory: give one")
        click.echo(
            "warning: --memory is now --rendered-memory (the old name still works)",
            err=True,
        )
        rendered_memory, memory_flag = old_memory, "--memory"
    try:
        rendered_bytes = parse_size(rendered_memory) or 0
    except click.BadParameter as exc:
        raise click.BadParameter(exc.message, param_hint=memory_flag) from None
    try:
        budgets = load_policy(
            budgets_file, tokens=budget_tokens, window=budget_window,
            price_per_million=price_per_million,
        )  # fmt: skip
    except InvalidInputError as exc:
        raise click.BadParameter(str(exc), param_hint="--budgets") from None
    allowed = _read_keys(allow_keys) if allow_keys else ()
    if request_log is not None:
        try:  # a file that cannot be written is an error now, not a warning per request
            check_writable(request_log)
        except OSError as exc:
            message = f"cannot append to {request_log}: {exc.strerror or exc}"
            raise click.BadParameter(message, param_hint="--request-log") from None
    if not _is_loopback(host) and not (token or allowed or verify_keys):
        click.echo(
            f"warning: serving on {host} without --token, --allow-keys or --verify-keys: "
            "anyone who can reach this port can read the cache and spend the server's API key",
            err=True,
        )
    cache = cli.settings(
        base_url=upstream or cli.base_url,
        offline=resolve_offline(offline),
        batch_size=batch_size,
        max_concurrency=max_concurrency,
        coalesce=not no_coalesce,
    )
    settings = ProxySettings(
        cache=cache,
        token=token or None,
        rendered_bytes=rendered_bytes,
        allowed_keys=allowed,
        verify_keys=verify_keys,
        verdict_ttl=verdict_ttl,
        admin_token=admin_token or None,
        tei_model=tei_model,
        tei_task=tei_task,
        rerank_model=rerank_model,
        max_inputs=max_inputs,
        max_answer_bytes=max_answer,
        fetch_images_from=frozenset(host.lower() for host in fetch_images_from),
        verify_interval=verify_interval,
        verify_rate=verify_rate,
        budgets=budgets,
        price_per_million=price_per_million,
        request_log=request_log,
        request_log_max_bytes=request_log_max_size,
        request_log_backups=request_log_backups,
    )
    limits = ServerLimits(
        idle_timeout=idle_timeout,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        send_timeout=send_timeout,
        max_connections=max_connections,
        max_body=max_body,
        max_body_memory=max_body_memory,
    )
    # Opened here, and closed before any worker starts: a cache directory that cannot be
    # used is a one-line error now, not a worker dying later.
    with Assembly(cache) as parts:
        # Shown without any user:password the URL carries (banner, --json).
        upstream_url, directory = redact_url(parts.client.base_url), parts.store.directory
        shared = parts.shared.location if parts.shared is not None else None
        cached_as = parts.upstream_id
    where = (
        f"{upstream_url} (cache {directory}"
        + (f", cached as {cached_as}" if cached_as != upstream_id(upstream_url) else "")
        + (f", shared {shared}" if shared else "")
    )

    # Made before the workers fork: what one learns of the upstream's float style, all write.
    float_style = FloatStyle(across_fork=True)

    def make_proxy(board: Board, worker: int) -> Proxy:
        return Proxy(settings, board=board, worker=worker, float_style=float_style)

    def announce(port: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}{EMBEDDINGS_PATH}"
        click.echo(
            f"embedcache proxy: {url} -> {where}"
            f"{', offline' if cache.offline else ''}"
            f"{f', {workers} workers' if workers > 1 else ''})",
            err=True,
        )
        click.echo(
            f"  and reranks at /v1/rerank (Jina), /rerank (TEI, vLLM) and /v2/rerank (Cohere),"
            f" these last with {rerank_model}",
            err=True,
        )
        if as_json:  # echoed and flushed before any worker is forked: printed once
            echo_json(
                {"url": url, "host": host, "port": port, "upstream": upstream_url,
                 "cached_as": cached_as, "cache_dir": str(directory), "shared": shared,
                 "offline": cache.offline, "workers": workers},
                compact=True,
            )  # fmt: skip

    serve_forever(
        make_proxy,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        limits=limits,
        drain_seconds=drain_timeout,
        access_log=access_log,
        on_bound=announce,
    )
