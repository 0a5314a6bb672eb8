"""Per-caller token budgets (``serve --budget-tokens N --budget-window SECONDS``,
``serve --budgets FILE``): who may spend how many upstream tokens per window, reserved
and settled in a ledger every worker and proxy process shares.

A caller is the key it sends (``Authorization: Bearer``), named by ``k_`` and the first 12
hex digits of its SHA-256 (:func:`key_name`), so a budgets file holds no secret. Requests
without a key are one caller (``k_e3b0c44298fc``, the name of the empty key).

Windows are fixed, aligned on the Unix epoch (a 3600 s window starts on the hour, UTC), so
every process agrees on them without talking. The spending is kept in a ledger
(:mod:`~embedcache.storage.ledgers`): the shared tier's Redis when the proxy has one, so
proxies on several machines share the budgets; else ``budgets.db`` in the cache directory,
shared by its workers and processes. Both survive a restart. While a Redis ledger cannot be
reached, a request with misses is refused (503), never sent unmetered.

Admission: a request's misses are estimated (the same tokenizer-free estimate the rate
limiter paces by) and reserved before anything is sent; over the budget, nothing is sent
and the caller gets a 429 with ``Retry-After`` (the seconds until the next window, absent
when the request needs more than a whole window holds). Once answered, the reservation is
replaced by what the upstream charged. Cached texts cost nothing: a request that is all
hits is always served. A request that fails upstream is charged nothing.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..embedding.embedder import CachedEmbedder
from ..errors import CacheError, InvalidInputError
from ..models import RequestOptions
from ..storage.ledgers import Ledger, SqliteLedger
from .access import key_name
from .budget_state import Refresher, budget_report

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "BUDGET_HEADER",
    "Budget",
    "BudgetPolicy",
    "Budgets",
    "Over",
    "Reservation",
    "charged_tokens",
    "key_name",
    "load_policy",
    "over_budget_body",
    "over_budget_headers",
]

#: Response header: tokens the caller's budget has left in the current window.
BUDGET_HEADER = "X-Embedcache-Budget-Remaining"
_KEY_NAME = re.compile(r"k_[0-9a-f]{12}")
# Age at which the figure the hit path shows is read again, in a thread (the hit path never
# waits for the ledger; admissions and settlements always go to it).
_SHOWN_SECONDS = 1.0
# Callers whose budget (and what is left of it) a proxy remembers at most.
_REMEMBERED_KEYS = 10_000

log = logging.getLogger("embedcache")


@dataclass(frozen=True)
class Budget:
    """One budget: ``tokens`` per ``window`` seconds, kept under ``name`` in the ledger (a
    key's name, or ``group:NAME`` for keys sharing one)."""

    name: str
    tokens: int
    window: float


@dataclass(frozen=True)
class BudgetPolicy:
    """Which budget each caller spends from.

    :param listed: a key's name and its budget (``None``: the key has no budget).
    :param default: the tokens and window of every key not listed (``None``: unlimited).
    """

    listed: Mapping[str, Budget | None] = field(default_factory=dict)
    default: tuple[int, float] | None = None

    def budget_of(self, secret: str) -> Budget | None:
        """The budget the caller sending ``secret`` spends from, if any."""
        name = key_name(secret)
        if name in self.listed:
            return self.listed[name]
        if self.default is None:
            return None
        return Budget(name, *self.default)

    def named(self, name: str) -> Budget | None:
        """The budget kept under ``name`` in a ledger: a listed key's or group's, else the
        default budget of a key not listed (``None``: no such budget now)."""
        found = self.by_name.get(name)
        if found is not None or name in self.listed or self.default is None:
            return found
        return Budget(name, *self.default) if _KEY_NAME.fullmatch(name) else None

    @functools.cached_property
    def by_name(self) -> dict[str, Budget]:
        """The listed budgets (keys' and groups'), by the name a ledger keeps them under."""
        return {budget.name: budget for budget in self.listed.values() if budget is not None}


def load_policy(
    path: Path | None,
    *,
    tokens: int | None = None,
    window: float = 3600.0,
    price_per_million: float = 0.0,
) -> BudgetPolicy | None:
    """The policy of ``serve --budgets FILE --budget-tokens N --budget-window SECONDS``
    (``None``: no budgets at all). The flags give the default for keys the file does not
    list, and win over the file's ``[default]``.

    :raises InvalidInputError: naming the file and the entry that is wrong.
    """
    if path is None:
        return None if tokens is None else BudgetPolicy({}, (tokens, window))
    data = _read(path)
    where = str(path)
    flag_window, window = window, _seconds(data.get("window", window), f"{where}: window")
    usd_rate = price_per_million / 1e6
    default = None
    if "default" in data:
        found = _budget("default", data["default"], window, usd_rate, f"{where}: [default]")
        default = (found.tokens, found.window) if found else None
    if tokens is not None:
        default = (tokens, flag_window)
    listed: dict[str, Budget | None] = {}
    for name, entry in _table(data.get("keys", {}), f"{where}: [keys]").items():
        # Named by its hash, never as written: a key may be written out in the file.
        named = _named(name, f"{where}: [keys]")
        label = f"{where}: [keys] {named}"
        listed[named] = _budget(named, entry, window, usd_rate, label)
    for group, entry in _table(data.get("groups", {}), f"{where}: [groups]").items():
        label = f"{where}: [groups.{group}]"
        entry = _table(entry, label)
        members = entry.get("keys")
        if not isinstance(members, list) or not members:
            raise InvalidInputError(f"{label}: keys must be a list of key names (k_...)")
        rest = {k: v for k, v in entry.items() if k != "keys"}
        budget = _budget(f"group:{group}", rest, window, usd_rate, label)
        for member in members:
            listed[_named(member, label)] = budget
    unknown = sorted(set(data) - {"window", "default", "keys", "groups"})
    if unknown:
        raise InvalidInputError(f"{where}: unknown setting {unknown[0]!r}")
    return BudgetPolicy(listed, default)


@dataclass(frozen=True)
class Reservation:
    """Tokens set aside for one request, and what its budget has left after them."""

    budget: Budget
    window_start: float
    tokens: float
    remaining: int


@dataclass(frozen=True)
class Over:
    """A request refused for its budget, and what to tell the caller."""

    budget: Budget
    needed: int
    remaining: int
    cached: int
    retry_after: int | None

    @property
    def message(self) -> str:
        """The refusal, in the caller's terms."""
        cached = f"{self.cached} of its texts are cached (free); " if self.cached else ""
        text = (
            f"token budget exceeded: this request's uncached texts need about {self.needed} "
            f"tokens and {self.budget.name}'s budget has {self.remaining} of "
            f"{self.budget.tokens} left in its {self.budget.window:g} s window; {cached}"
        )
        if self.retry_after is None:
            return text + "the request needs more than a whole window holds: send fewer texts"
        return text + f"retry in {self.retry_after} s"


def over_budget_body(over: Over, dialect: str) -> bytes:
    """The 429's body in the caller's dialect (``jina``, ``openai`` or ``tei``), with the
    figures as fields too: texts cached, tokens the misses need, tokens left."""
    figures = {
        "cached_texts": over.cached,
        "tokens_needed": over.needed,
        "tokens_remaining": over.remaining,
    }
    message = over.message
    if dialect == "openai":
        error = {"message": message, "type": "budget_exceeded", "param": None}
        return orjson.dumps({"error": {**error, "code": "budget_exceeded", **figures}})
    if dialect == "tei":
        return orjson.dumps({"error": message, "error_type": "overloaded", **figures})
    return orjson.dumps({"detail": message, "code": "budget_exceeded", **figures})


def charged_tokens(answer: bytes) -> float:
    """What an upstream answer says it charged (its ``usage.total_tokens``; 0 if none)."""
    try:
        usage = orjson.loads(answer).get("usage") or {}
        return float(usage.get("total_tokens") or 0)
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 0.0


def over_budget_headers(over: Over) -> dict[str, str]:
    """The 429's headers: the tokens left, and ``Retry-After`` when waiting can help."""
    headers = {BUDGET_HEADER: str(over.remaining)}
    if over.retry_after is not None:
        headers["Retry-After"] = str(over.retry_after)
    return headers


class Budgets:
    """Spending against a policy, kept in a :class:`~embedcache.storage.ledgers.Ledger`:
    the shared tier's Redis when the proxy has one, else ``budgets.db`` in the cache
    directory (a directory given here means that file).

    :raises CacheError: ``budgets.db`` cannot be opened (a read-only cache directory).
    """

    def __init__(self, policy: BudgetPolicy, ledger: Ledger | Path) -> None:
        self.policy = policy
        self._ledger = SqliteLedger(ledger) if isinstance(ledger, Path) else ledger
        self._budgets: dict[str, Budget | None] = {}  # by key: no hash per request
        # What the hit path shows of each budget: (when read, remaining, the budget).
        self._shown: dict[str, tuple[float, int, Budget]] = {}
        self._refresher = Refresher(self._refresh)

    @property
    def ledger(self) -> Ledger:
        """Where the spending is kept."""
        return self._ledger

    def budget_of(self, secret: str) -> Budget | None:
        """The caller's budget (remembered per key: no hash on each request)."""
        try:
            return self._budgets[secret]
        except KeyError:
            if len(self._budgets) > _REMEMBERED_KEYS:
                self._budgets.clear()  # bounded: an unverified proxy sees any key
            found = self._budgets[secret] = self.policy.budget_of(secret)
            return found

    def reserve(self, budget: Budget, tokens: float, cached: int = 0) -> Reservation | Over:
        """Set ``tokens`` aside in ``budget``'s window, or say why not (nothing set aside).

        :raises CacheError: the ledger cannot be reached (nothing is sent unmetered); a
            request with nothing to spend is never refused for that.
        """
        now = time.time()
        start = math.floor(now / budget.window) * budget.window
        if tokens <= 0:  # all cached: only read, and served even when the ledger is not there
            return Reservation(budget, start, 0, self._remaining_or_known(budget))
        made, spent = self._ledger.reserve(budget.name, start, budget.window, tokens, budget.tokens)
        if not made:
            remaining = max(0, int(budget.tokens - spent))
            wait = math.ceil(start + budget.window - now) if tokens <= budget.tokens else None
            self._show(budget, remaining)
            return Over(budget, math.ceil(tokens), remaining, cached, wait)
        return self._noted(Reservation(budget, start, tokens, int(budget.tokens - spent - tokens)))

    def settle(self, reservation: Reservation, charged: float) -> int:
        """Replace the reservation by what the upstream ``charged`` (in the window it was
        made in, while that window lasts); returns the tokens left. A correction the ledger
        cannot take is logged and dropped: the reservation, an estimate, stays spent."""
        budget = reservation.budget
        start = reservation.window_start
        delta = charged - reservation.tokens
        try:
            if delta and self._current(budget) == start:
                spent = self._ledger.settle(budget.name, start, budget.window, delta)
            else:
                spent = self._ledger.spent(budget.name, start)
        except CacheError as exc:
            log.warning("budgets: %s's spending not corrected by %+g tokens: %s",
                        budget.name, delta, exc)  # fmt: skip
            return max(0, reservation.remaining)
        remaining = max(0, int(budget.tokens - spent))
        self._show(budget, remaining)
        return remaining

    def remaining(self, budget: Budget) -> int:
        """Tokens ``budget`` has left in the current window, read from the ledger.

        :raises CacheError: the ledger cannot be read.
        """
        spent = self._ledger.spent(budget.name, self._current(budget))
        remaining = max(0, int(budget.tokens - spent))
        self._show(budget, remaining)
        return remaining

    def shown(self, budget: Budget) -> int:
        """:meth:`remaining` as the hit path shows it, without waiting: the last figure
        known, a fresh one asked of a thread when it is over a second old. Only a budget
        this process never saw is read here, once (one ``GET`` with a Redis ledger; the
        figure every answer shows later is kept fresh by admissions, settlements and that
        thread). While the ledger is failing it is not read here at all, and a budget never
        seen shows 0 (while the ledger is out of reach no miss can be paid for)."""
        seen = self._shown.get(budget.name)
        if seen is None:
            if self._ledger.healthy:
                return self._remaining_or_known(budget)
            self._refresher.ask(budget)  # never the call that waits out a failing tier
            return 0
        if time.monotonic() - seen[0] >= _SHOWN_SECONDS:
            self._refresher.ask(budget)
        return seen[1]

    def admit(
        self,
        budget: Budget,
        embedder: CachedEmbedder,
        requests: Iterable[tuple[Sequence[str], RequestOptions]],
        least: int = 0,
    ) -> Reservation | Over:
        """Reserve what ``requests``' uncached texts are estimated to cost (nothing is
        read but presence; cached texts are free), or say why not. ``least``: reserve at
        least that many (a request passed through, whose cost is unknown, needs one left).

        :raises CacheError: the ledger cannot be reached and there are misses to pay for.
        """
        needed, cached = 0, 0
        for texts, options in requests:
            report = embedder.warm(texts, options, dry_run=True)
            needed += report.estimated_tokens
            cached += report.cached
        return self.reserve(budget, max(needed, least), cached)

    def report(self, limit: int = 100) -> dict[str, Any]:
        """The budgets' state for ``/admin/stats``: the default budget, and the budgets
        with spending in their current window, most spent first (at most ``limit``), with
        the keys and groups the budgets file lists even when they spent nothing. When the
        ledger cannot be read, the figures this process saw last."""
        return budget_report(self.policy, self._spending, limit)

    def close(self) -> None:
        """Stop the refresher and close the ledger."""
        self._refresher.close()
        self._ledger.close()

    def _spending(self) -> Iterable[tuple[Budget, float]]:
        """Each budget's spending in its current window (see :meth:`report`)."""
        try:
            found = list(self._ledger.spending())
        except CacheError as exc:
            log.warning("budgets: the ledger cannot be read for a report: %s", exc)
            return [(b, b.tokens - left) for _, left, b in list(self._shown.values())]
        now = time.time()
        out = []
        for name, start, spent in found:
            budget = self.policy.named(name)
            if budget is not None and start == self._current(budget, now):
                out.append((budget, spent))
        return out

    def _remaining_or_known(self, budget: Budget) -> int:
        """:meth:`remaining`, or when the ledger cannot be read the last figure known
        (0 if none)."""
        try:
            return self.remaining(budget)
        except CacheError:
            seen = self._shown.get(budget.name)
            return seen[1] if seen is not None else 0

    def _refresh(self, budget: Budget) -> None:
        with contextlib.suppress(CacheError):  # the last figure stays; the ledger logs
            self.remaining(budget)

    def _noted(self, reservation: Reservation) -> Reservation:
        self._show(reservation.budget, max(0, reservation.remaining))
        return reservation

    def _show(self, budget: Budget, remaining: int) -> None:
        if len(self._shown) > _REMEMBERED_KEYS:
            self._shown.clear()  # bounded, as _budgets: a default budget is one per key
        self._shown[budget.name] = (time.monotonic(), remaining, budget)

    @staticmethod
    def _current(budget: Budget, now: float | None = None) -> float:
        return math.floor((time.time() if now is None else now) / budget.window) * budget.window


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise InvalidInputError(f"{path}: not valid {kind}: {exc}") from None
    return _table(data, str(path))


def _table(value: object, label: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInputError(f"{label}: expected a table of settings")
    return value


def _named(name: object, label: str) -> str:
    """A key as the file gives it: its ``k_`` name, or (discouraged) the key itself."""
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"{label}: a key must be a non-empty string")
    return name if _KEY_NAME.fullmatch(name) else key_name(name)


def _seconds(value: object, label: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InvalidInputError(f"{label}: expected a number of seconds above 0, got {value!r}")
    return float(value)


def _budget(name: str, entry: object, window: float, usd_rate: float, label: str) -> Budget | None:
    """One entry: ``tokens``, ``usd`` (at the price), ``window``; the lower of tokens and
    usd applies; neither: no budget."""
    entry = _table(entry, label)
    unknown = sorted(set(entry) - {"tokens", "usd", "window"})
    if unknown:
        raise InvalidInputError(f"{label}: unknown setting {unknown[0]!r} (tokens, usd, window)")
    limits = []
    for kind in ("tokens", "usd"):
        value = entry.get(kind)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise InvalidInputError(f"{label}: {kind} must be a number of at least 0")
        if kind == "usd":
            if usd_rate <= 0:
                raise InvalidInputError(f"{label}: usd needs a price above 0 (--price-per-million)")
            value = value / usd_rate
        limits.append(int(value))
    if not limits:
        return None
    return Budget(name, min(limits), _seconds(entry.get("window", window), f"{label}: window"))
