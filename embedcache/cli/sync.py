"""``embedcache sync``: copy entries between the local cache and the shared Redis tier."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ..config import REDIS_URL_ENV
from .options import SENDS_NOTHING, CliContext, Command, echo_json, json_option, pass_cli

if TYPE_CHECKING:
    from ..assembly import Assembly
    from ..maintenance.sharing import SyncReport
    from ..storage.shared import RedisStore

__all__ = ["require_shared", "sync"]

_LINE_INTERVAL_SECONDS = 5.0


def require_shared(parts: Assembly, command: str) -> RedisStore:
    """The shared tier of ``parts``, or a usage error (exit 2) when no URL is configured."""
    shared = parts.shared
    if shared is None:
        raise click.UsageError(
            f"{command} needs a shared cache: pass --redis-url URL or set {REDIS_URL_ENV}"
        )
    return shared


class _Progress:
    """Entries checked so far, on stderr: a bar on a terminal, else a line every few seconds."""

    def __init__(self, label: str, total: Callable[[], int]) -> None:
        """:param total: counts the entries to check; called only when a bar is shown."""
        self.label = label
        self.done = 0
        self.last_line = time.monotonic()
        self.bar: Any = None
        if sys.stderr.isatty():
            self.bar = click.progressbar(
                length=total(), label=label, file=sys.stderr, show_pos=True, show_eta=True,
            )  # fmt: skip
            self.bar.__enter__()

    def update(self, report: SyncReport) -> None:
        step, self.done = report.checked - self.done, report.checked
        if self.bar is not None:
            self.bar.update(step)
        elif time.monotonic() - self.last_line >= _LINE_INTERVAL_SECONDS:
            self.last_line = time.monotonic()
            click.echo(
                f"{self.label}: {report.checked:,} entries checked, {report.copied:,} copied",
                err=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@click.command(  # the global options it has no use for (see options.Command)
    cls=Command, ignores={**SENDS_NOTHING, "base_url": "it sends no request to the API"}
)
@click.option("--pull", is_flag=True, help="Copy Redis entries down to the local cache instead.")
@click.option("--dry-run", is_flag=True, help="Count what would be copied; copy nothing.")
@json_option
@pass_cli
def sync(cli: CliContext, pull: bool, dry_run: bool, as_json: bool) -> None:
    """Copy the local entries the shared Redis cache lacks up to it (or, with --pull, the
    Redis entries the local cache lacks down to it).

    Needs --redis-url (or $EMBEDCACHE_REDIS_URL); --redis-prefix picks the namespace.
    Entries move with their request settings; one whose settings are not recorded, or
    that fails its checksum, is skipped and counted. Running it again copies nothing new.
    """
    from ..maintenance import sharing

    parts = cli.open(shared_strict=True)
    shared = require_shared(parts, "sync")
    store = parts.store
    shared.ping()  # a dead Redis is an error before any work, even with nothing to copy
    if pull:
        progress = _Progress("sync down", shared.count)
        work = sharing.pull
    else:
        progress = _Progress("sync up", store.__len__)
        work = sharing.push
    try:
        report = work(store, shared, dry_run=dry_run, on_page=progress.update)
    finally:
        progress.close()
    if as_json:
        echo_json({**report.as_dict(), "location": shared.location, "prefix": shared.prefix})
        return
    where = f"{shared.location} (prefix {shared.prefix})"
    route = f"from {where} to {store.directory}" if pull else f"from {store.directory} to {where}"
    reasons = [
        f"{count:,} {why}"
        for count, why in (
            (report.damaged, "damaged"),
            (report.unknown_fingerprint, "with unrecorded request settings"),
        )
        if count
    ]
    click.echo(
        f"sync {report.direction} {route}: {report.copied:,} "
        + ("would be copied" if dry_run else "copied")
        + f", {report.present:,} already present, {report.skipped:,} skipped"
        + (f" ({', '.join(reasons)})" if reasons else "")
    )
