"""Who may read from a proxy's cache, and whose key pays for its misses.

A cached vector must not be served to a client whose key the upstream would refuse: on a
shared proxy a hit would otherwise be free embeddings for anyone who can reach the port.
The policies, from :class:`Access`'s settings:

- **token**: clients present the proxy's own token; the server's key pays for every miss.
- **allowlist**: only listed client keys are served; each pays for its own misses.
- **verify**: a client key not listed is checked against the upstream once (one tiny
  embedding request), and the verdict is remembered for ``verdict_ttl`` seconds. If the
  upstream cannot say (down, rate-limited), the request is refused with a 503: fail closed.
  Whatever the outcome, a key is asked about at most once per ``verify_interval`` seconds
  (so a stream of requests with a key the upstream cannot judge is not a stream of probes).
- **open** (none of the above): any client is served; its key, else the server's, pays.

Keys are compared and remembered by their SHA-256 only, never kept in the clear here.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["Access", "Decision", "KeyRefused", "KeyUnverifiable", "digest", "key_name", "matches"]

_MAX_VERDICTS = 10_000


class KeyRefused(Exception):
    """The upstream refused a client key (401/402/403) while verifying it."""


class KeyUnverifiable(Exception):
    """The upstream could not be asked about a key (unreachable, rate-limited, 5xx)."""


def digest(secret: str) -> bytes:
    """The SHA-256 a key is remembered by."""
    return hashlib.sha256(secret.encode()).digest()


def key_name(secret: str) -> str:
    """How a caller's key is shown where people read it (budgets files, their ledger, the
    request log): ``k_`` + the first 12 hex digits of its :func:`digest`."""
    return "k_" + digest(secret).hex()[:12]


def matches(bearer: str, expected: bytes | None) -> bool:
    """Whether ``bearer`` is the secret whose :func:`digest` is ``expected``, compared in
    constant time; never when either is missing."""
    return bool(bearer) and expected is not None and hmac.compare_digest(digest(bearer), expected)


@dataclass(frozen=True)
class Decision:
    """What to do with one request.

    :ivar status: 0 to serve it, else the HTTP status to refuse it with.
    :ivar detail: the refusal's message (never containing the key).
    :ivar key: the key that pays for misses; ``None``: the server's.
    :ivar retry_after: for a 429, the seconds after which asking again may succeed.
    """

    status: int
    detail: str = ""
    key: str | None = None
    retry_after: int = 0


class _Verdict(NamedTuple):
    """What the upstream said of a key (0: accepted, else the refusal's status and
    detail), and until when it stands."""

    status: int
    detail: str
    until: float


class Access:
    """A proxy's access policy (see the module docstring).

    :param token: the proxy's client token (the *token* policy).
    :param allowed_keys: client keys served without asking the upstream.
    :param verify: ``verify(key)`` asks the upstream about a key, returning normally when it
        accepts it and raising :class:`KeyRefused` or :class:`KeyUnverifiable` otherwise;
        ``None`` refuses every key not listed (when a list is given).
    :param verdict_ttl: seconds a verification's verdict is remembered.
    :param verify_interval: a key is asked about at most once per this many seconds,
        whatever the outcome: an accepted or refused verdict stands at least this long, and
        an unverifiable one (answered 503) exactly this long.
    :param clock: the monotonic clock verdicts are timed with (a test's own).
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        allowed_keys: Iterable[str] = (),
        verify: Callable[[str], None] | None = None,
        verdict_ttl: float = 300.0,
        verify_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token = digest(token) if token else None
        self._allowed = frozenset(digest(key) for key in allowed_keys)
        self._verify = verify
        self.verdict_ttl = verdict_ttl
        self.verify_interval = verify_interval
        self._clock = clock
        self._verdicts: OrderedDict[bytes, _Verdict] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def checks_keys(self) -> bool:
        """Whether client keys are checked (allowlist or verify), not merely forwarded."""
        return bool(self._allowed) or self._verify is not None

    @property
    def takes_token(self) -> bool:
        """Whether clients present the proxy's own token (the *token* policy), so the
        server's key pays for every miss and a client has no Jina key to send."""
        return self._token is not None

    @property
    def open(self) -> bool:
        """Whether every request is served, whatever it sends (no token, no key checks)."""
        return self._token is None and not self.checks_keys

    def decide(self, bearer: str, *, verify: bool = True) -> Decision | None:
        """The decision for a request whose ``Authorization: Bearer`` value is ``bearer``
        (empty when absent). With ``verify`` it may call the upstream (run it off the event
        loop); without, it returns ``None`` when it would have to."""
        if self._token is not None:
            if matches(bearer, self._token):
                return Decision(0)
            return Decision(401, "this proxy needs its token: send Authorization: Bearer <token>")
        if not self.checks_keys:
            return Decision(0, key=bearer or None)
        if not bearer:
            return Decision(
                401,
                "this proxy serves only known Jina API keys: send yours in the "
                "Authorization: Bearer header",
            )
        key_digest = digest(bearer)
        if key_digest in self._allowed:
            return Decision(0, key=bearer)
        if self._verify is None:
            return Decision(401, "this API key is not on the proxy's list")
        verdict = self._remembered(key_digest)
        if verdict is None:
            return self.verify(bearer) if verify else None
        return (
            Decision(0, key=bearer)
            if not verdict.status
            else Decision(verdict.status, verdict.detail)
        )

    def verify(self, bearer: str) -> Decision:
        """Ask the upstream about ``bearer`` now (blocking: run it off the event loop) and
        remember its verdict; the decision it gives."""
        assert self._verify is not None
        try:
            self._verify(bearer)
        except KeyRefused:
            decision = _REFUSED
        except KeyUnverifiable as exc:
            detail = f"cannot verify this API key with the upstream now ({exc})"
            decision = Decision(503, detail)
        else:
            decision = Decision(0, key=bearer)
        self._remember(digest(bearer), decision)
        return decision

    def forget(self) -> None:
        """Drop every remembered verdict (keys are verified again on next use)."""
        with self._lock:
            self._verdicts.clear()

    def _remembered(self, key_digest: bytes) -> _Verdict | None:
        """The upstream's verdict on a key, while it stands."""
        with self._lock:
            verdict = self._verdicts.get(key_digest)
        if verdict is None or verdict.until < self._clock():
            return None
        return verdict

    def _remember(self, key_digest: bytes, decision: Decision) -> None:
        # Never the key itself: an accepted verdict is given back with the bearer it is for.
        seconds = self.verify_interval
        if decision.status != 503:
            seconds = max(seconds, self.verdict_ttl)
        verdict = _Verdict(decision.status, decision.detail, self._clock() + seconds)
        with self._lock:
            self._verdicts[key_digest] = verdict
            self._verdicts.move_to_end(key_digest)
            while len(self._verdicts) > _MAX_VERDICTS:
                self._verdicts.popitem(last=False)


_REFUSED = Decision(401, "the upstream refuses this API key")
