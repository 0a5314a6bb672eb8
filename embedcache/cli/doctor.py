"""``embedcache doctor``: what this embedcache would use, and whether it works, in one place.

Everything is resolved as the other commands resolve it (the same global options, the same
environment variables), and each setting says where it came from. Nothing is sent to the
upstream, so a fully offline machine gets a complete report; the one connection made is a
``PING`` to a configured Redis. A cache is looked at only where one exists: none is
created. Secrets never appear: an API key is shown as its prefix and at most its last 4
characters, URLs through :func:`~embedcache.config.redact_url`.

Exit code 1 when a check fails (each failure one line with a hint), 0 otherwise; warnings
(no API key, say) are listed but do not fail.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal

import click

from ..config import (
    API_KEY_ENV_VARS,
    BASE_URL_ENV,
    CACHE_DIR_ENV,
    CONCURRENT_REQUESTS_ENV,
    ENVIRONMENT,
    OFFLINE_ENV,
    OLD_CONCURRENT_REQUESTS_ENV,
    REDIS_URL_ENV,
    RPM_ENV,
    TIER_ENV,
    TPM_ENV,
    UPSTREAM_AS_ENV,
    VERSION,
    redact_url,
    resolve_base_url,
    resolve_cache_dir,
    resolve_offline,
    resolve_redis_url,
    resolve_upstream_id,
    upstream_id,
)
from ..errors import EmbedcacheError
from ..extras import EXTRAS
from ..upstream.limiter import Limits, resolve_limits
from .options import GIVEN_BEFORE, CliContext, Command, echo_json, json_option, take_given
from .output import plural
from .units import format_bytes

__all__ = ["doctor", "mask_key"]

#: How long a configured Redis has to answer ``PING``: long enough for a remote server,
#: short enough that a dead one does not stall the report.
PING_TIMEOUT_SECONDS = 1.0
_GIVEN = "embedcache.doctor.given"
_EXTRA = re.compile(r"""extra\s*==\s*['"]([^'"]+)['"]""")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_FALSE = {"", "0", "false", "no", "off"}

Level = Literal["fail", "warn"]


@dataclasses.dataclass(frozen=True)
class Finding:
    """A check that failed (``fail``: exit 1) or deserves attention (``warn``)."""

    check: str
    level: Level
    message: str
    hint: str

    def line(self) -> str:
        return f"{self.level.upper()}  {self.check}: {self.message} ({self.hint})"


def mask_key(key: str) -> str:
    """An API key as it may be shown: Jina's ``jina_`` prefix (not a secret) and at most its
    last 4 characters, only when at least 12 others stay hidden.

    >>> mask_key("jina_" + "x" * 60 + "abcd")
    'jina_…abcd'
    >>> mask_key("short")
    '…'
    """
    prefix = "jina_" if key.startswith("jina_") else ""
    rest = key[len(prefix) :]
    return f"{prefix}…{rest[-4:] if len(rest) >= 16 else ''}"


class _Doctor(Command):
    """A command whose global options never fail before it runs: a bad ``$EMBEDCACHE_TIER``
    is one of doctor's findings, where every other command stops at it."""

    def invoke(self, ctx: click.Context) -> Any:
        given = {**ctx.meta.get(GIVEN_BEFORE, {}), **take_given(ctx)}
        names = {f.name for f in dataclasses.fields(CliContext)} - {"limits"}
        fields = {"cache_dir": None, "base_url": None, **given}
        ctx.obj = CliContext(**{name: fields[name] for name in names if name in fields})
        ctx.meta[_GIVEN] = given
        return super(Command, self).invoke(ctx)  # past Command's own limits resolution


@click.command(cls=_Doctor)
@json_option
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check the setup: version, cache directory and its health, upstream, API key
    (masked), offline mode, Redis (answers a PING?), rate limits and installed extras.

    Sends nothing upstream, creates no cache. Exits 1 when a check fails, naming it.
    """
    cli: CliContext = ctx.obj
    given: Mapping[str, Any] = ctx.meta[_GIVEN]
    findings: list[Finding] = []
    report: dict[str, Any] = {
        "version": VERSION,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cache": _cache(cli, findings),
        "upstream": _upstream(cli, findings),
        "api_key": _api_key(findings),
        "offline": _offline(),
        "redis": _redis(cli, findings),
        "rate_limits": _rate_limits(given, findings),
        "extras": _extras(),
        "environment": _set_variables(),
    }
    if report["api_key"]["variable"] is None and not report["offline"]["enabled"]:
        findings.append(
            Finding("api key", "warn", "none set: cache hits work, misses fail",
                    f"set {' or '.join(API_KEY_ENV_VARS)}")
        )  # fmt: skip
    failed = any(f.level == "fail" for f in findings)
    report["ok"] = not failed
    report["problems"] = [dataclasses.asdict(f) for f in findings]
    if as_json:
        echo_json(report)
    else:
        _echo(report, findings)
    if failed:
        ctx.exit(1)


# As tuples of names, so a check of every variable read can tell which ones these are.
_VARIABLES = tuple(ENVIRONMENT)
_CONCURRENCY_VARIABLES = (CONCURRENT_REQUESTS_ENV, OLD_CONCURRENT_REQUESTS_ENV)


def _source(given: object, env: str) -> str:
    option = "--" + env.removeprefix("EMBEDCACHE_").lower().replace("_", "-")
    if given is not None:
        return option
    return f"${env}" if os.environ.get(env, "").strip() else "default"


def _cache(cli: CliContext, findings: list[Finding]) -> dict[str, Any]:
    from ..storage.store import MARKER_NAME, Store

    directory = resolve_cache_dir(cli.cache_dir)
    found: dict[str, Any] = {
        "directory": str(directory),
        "source": "--cache-dir" if cli.cache_dir is not None else _source(None, CACHE_DIR_ENV),
        "exists": Store.exists(directory),
        "size_limit_option": cli.size_limit,
        **dict.fromkeys(("format_version", "key_version", "entries", "bytes_on_disk",
                         "vector_bytes", "size_limit", "writable")),
    }  # fmt: skip

    def fail(message: str, hint: str) -> dict[str, Any]:
        findings.append(Finding("cache", "fail", message, hint))
        return found

    if not found["exists"]:
        elsewhere = "point --cache-dir or $EMBEDCACHE_DIR elsewhere"
        if directory.exists() and not directory.is_dir():
            return fail(f"{directory} is not a directory", elsewhere)
        if directory.is_dir() and any(not _temporary(p.name) for p in directory.iterdir()):
            return fail(f"{directory} is not empty and holds no {MARKER_NAME}", elsewhere)
        ancestor = next(p for p in (directory, *directory.parents) if p.exists())
        if not os.access(ancestor, os.W_OK | os.X_OK):
            return fail(f"{directory} cannot be created: {ancestor} is not writable", elsewhere)
        return found  # no cache yet: the first command that writes makes it
    try:
        marker = json.loads((directory / MARKER_NAME).read_text(encoding="utf-8"))
        found.update({name: marker.get(name) for name in ("format_version", "key_version")})
        with Store(directory) as store:
            found.update(
                entries=len(store), bytes_on_disk=store.volume(),
                vector_bytes=store.vector_bytes(), size_limit=store.size_limit,
                writable=not store.read_only,
            )  # fmt: skip
    except (EmbedcacheError, OSError, ValueError) as exc:
        return fail(str(exc), "see the message; `embedcache verify` checks every entry")
    if not found["writable"]:
        findings.append(
            Finding("cache", "warn", f"{directory} is read-only: hits only, misses fail",
                    "fine for a shared team cache; else check its permissions")
        )  # fmt: skip
    if found["size_limit"] and found["vector_bytes"] > found["size_limit"]:
        findings.append(
            Finding("cache", "warn", "its vectors exceed its size limit",
                    "the next write evicts the oldest; `embedcache limit` shows how many")
        )  # fmt: skip
    return found


def _temporary(name: str) -> bool:
    """Whether ``name`` is a marker being written (not something that makes the directory
    "not empty" to a store that creates its cache there)."""
    from ..storage.store import MARKER_NAME

    return name.startswith(f".{MARKER_NAME}.") and name.endswith(".tmp")


def _upstream(cli: CliContext, findings: list[Finding]) -> dict[str, Any]:
    url = resolve_base_url(cli.base_url)
    parts = urllib.parse.urlsplit(url)
    source = "--base-url" if cli.base_url else _source(None, BASE_URL_ENV)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        findings.append(
            Finding("upstream", "fail", f"{redact_url(url)!r} is not an http(s) URL",
                    f"fix {'--base-url' if cli.base_url else '$' + BASE_URL_ENV}")
        )  # fmt: skip
    # Shown, never contacted: a doctor must work on a machine with no network.
    cached_as = resolve_upstream_id(cli.base_url, cli.upstream_as)
    return {"url": redact_url(url), "source": source, "cached_as": cached_as}


def _set_variables() -> list[str]:
    """embedcache's variables that are set (names only)."""
    found = []
    for name in _VARIABLES:
        if os.environ.get(name):
            found.append(name)
    return sorted(found)


def _api_key(findings: list[Finding]) -> dict[str, Any]:
    found: list[tuple[str, str]] = []
    for name in API_KEY_ENV_VARS:
        if value := os.environ.get(name, "").strip():
            found.append((name, value))
    if not found:
        return {"variable": None, "masked": None}
    (name, value), ignored = found[0], found[1:]
    if ignored and ignored[0][1] != value:
        findings.append(
            Finding("api key", "warn", f"{name} and {ignored[0][0]} differ: {name} is used",
                    f"unset {ignored[0][0]} to avoid surprises")
        )  # fmt: skip
    return {"variable": name, "masked": mask_key(value)}


def _offline() -> dict[str, Any]:
    enabled = resolve_offline(None)
    raw = os.environ.get(OFFLINE_ENV, "").strip()
    return {"enabled": enabled, "source": f"${OFFLINE_ENV}" if raw else "default"}


def _redis(cli: CliContext, findings: list[Finding]) -> dict[str, Any]:
    url = resolve_redis_url(cli.redis_url)
    found: dict[str, Any] = {
        "url": redact_url(url) if url else None,
        "source": None if not url else "--redis-url" if cli.redis_url else f"${REDIS_URL_ENV}",
        "prefix": cli.redis_prefix,
        "ping": None,
    }
    if not url:
        return found
    from ..storage.shared import RedisStore

    hint = f"start it, or fix {'--redis-url' if cli.redis_url else '$' + REDIS_URL_ENV}"
    try:
        shared = RedisStore(url, prefix=cli.redis_prefix, timeout=PING_TIMEOUT_SECONDS, strict=True)
        try:
            found["ping"] = shared.ping()
        finally:
            shared.close()
    except ImportError as exc:  # MissingDependencyError: the message names the extra
        found["ping"] = False
        findings.append(Finding("redis", "fail", str(exc), "install the extra"))
    except EmbedcacheError as exc:  # SharedCacheError, InvalidInputError: redacted already
        found["ping"] = False
        findings.append(
            Finding(
                "redis", "fail", f"no PING answer within {PING_TIMEOUT_SECONDS:g} s: {exc}", hint
            )
        )
    return found


def _rate_limits(given: Mapping[str, Any], findings: list[Finding]) -> dict[str, Any]:
    sources = [
        _source(given.get("tier"), TIER_ENV),
        _source(given.get("rpm"), RPM_ENV),
        _source(given.get("tpm"), TPM_ENV),
    ]
    for env in _CONCURRENCY_VARIABLES:
        if os.environ.get(env, "").strip():
            sources.append(f"${env}")
    if os.environ.get(OLD_CONCURRENT_REQUESTS_ENV, "").strip():
        findings.append(
            Finding("rate limits", "warn", f"${OLD_CONCURRENT_REQUESTS_ENV} is an old name",
                    f"rename it {CONCURRENT_REQUESTS_ENV}")
        )  # fmt: skip
    tier = given.get("tier") or os.environ.get(TIER_ENV, "").strip() or None
    try:
        limits = resolve_limits(tier=given.get("tier"), rpm=given.get("rpm"), tpm=given.get("tpm"))
    except EmbedcacheError as exc:
        named = [s for s in sources if s != "default"]
        findings.append(Finding("rate limits", "fail", str(exc), f"fix {' or '.join(named)}"))
        limits = Limits()
    return {
        "tier": tier,
        "rpm": limits.rpm,
        "tpm": limits.tpm,
        "concurrent_requests": limits.concurrent_requests,
        "sources": [s for s in sources if s != "default"],
    }


def _extras() -> dict[str, Any]:
    """Each extra of embedcache's package metadata: installed or not, with the version of
    each package it brings (``None``: missing). A package needed only on other platforms
    (uvloop on Windows) does not make its extra missing."""
    try:
        requirements = importlib.metadata.requires("embedcache") or []
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return {name: None for name in EXTRAS}
    extras: dict[str, Any] = {name: {"installed": True, "packages": {}} for name in EXTRAS}
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        extra, name = _EXTRA.search(marker), _NAME.match(spec.strip())
        if extra is None or name is None or extra.group(1) not in extras:
            continue
        try:
            version: str | None = importlib.metadata.version(name.group(0))
        except importlib.metadata.PackageNotFoundError:
            version = None
        conditional = re.sub(r"\band\b|[()\s]", "", _EXTRA.sub("", marker))
        if version is None and conditional:
            continue
        entry = extras[extra.group(1)]
        entry["packages"][name.group(0)] = version
        entry["installed"] = entry["installed"] and version is not None
    return extras


def _echo(report: dict[str, Any], findings: list[Finding]) -> None:
    def row(label: str, text: str) -> None:
        click.echo(f"{label:<13}{text}")

    row("embedcache", f"{report['version']} (Python {report['python']}, {report['platform']})")
    cache = report["cache"]
    row("cache dir", f"{cache['directory']} ({cache['source']})")
    if cache["entries"] is not None:
        limit = format_bytes(cache["size_limit"]) if cache["size_limit"] else "none"
        entries = plural(cache["entries"], "entry", "entries")
        row("cache", f"{entries}, {format_bytes(cache['bytes_on_disk'])} on disk, format "
            f"{cache.get('format_version')}, key version {cache.get('key_version')}"
            + ("" if cache["writable"] else ", read-only"))  # fmt: skip
        row("size limit", f"{limit} ({format_bytes(cache['vector_bytes'])} of vectors held)")
    elif not cache["exists"]:
        row("cache", "none yet: the first command that writes (prewarm, get, rerank, "
            "serve) makes it")  # fmt: skip
    if cache["size_limit_option"] is not None:
        row("", f"--size-limit {format_bytes(cache['size_limit_option'])} is set when a "
            "command writes (doctor does not)")  # fmt: skip
    upstream = report["upstream"]
    row("upstream", f"{upstream['url']} ({upstream['source']}; not contacted)")
    if upstream["cached_as"] != upstream_id(upstream["url"]):
        row("cached as", f"{upstream['cached_as']} (--upstream-as, ${UPSTREAM_AS_ENV})")
    key = report["api_key"]
    row("api key", f"{key['variable']} = {key['masked']}" if key["variable"] else "none set")
    offline = report["offline"]
    row("offline", ("on" if offline["enabled"] else "off") + f" ({offline['source']})")
    redis = report["redis"]
    if redis["url"] is None:
        row("redis", "none (no shared tier)")
    else:
        answer = "answers PING" if redis["ping"] else "no answer"
        row("redis", f"{redis['url']} ({redis['source']}, prefix {redis['prefix']}): {answer}")
    row("rate limits", _limits_text(report["rate_limits"]))
    for number, line in enumerate(_extras_lines(report["extras"])):
        row("" if number else "extras", line)
    shown = report["environment"]
    row("environment", ", ".join(shown) + " set" if shown else "none of embedcache's variables set")
    click.echo()
    for finding in findings:
        click.echo(finding.line())
    if not findings:
        click.echo("all checks passed")
    elif report["ok"]:
        click.echo("no check failed")


def _limits_text(limits: dict[str, Any]) -> str:
    paced = [
        f"{limits[name]:,} {unit}"
        for name, unit in (("rpm", "requests/min"), ("tpm", "tokens/min"),
                           ("concurrent_requests", "at once"))
        if limits[name]
    ]  # fmt: skip
    if not paced:
        return "none (requests are not paced)"
    tier = f"tier {limits['tier']}: " if limits["tier"] else ""
    return f"{tier}{', '.join(paced)} ({', '.join(limits['sources'])})"


def _extras_lines(extras: dict[str, Any]) -> list[str]:
    if all(value is None for value in extras.values()):
        return ["unknown (embedcache is not installed as a package)"]
    return [
        f"{name:<12}"
        + (", ".join(f"{p} {v}" for p, v in extra["packages"].items()) if extra["installed"]
           else f"not installed: pip install 'embedcache[{name}]'")
        for name, extra in extras.items()
    ]  # fmt: skip
