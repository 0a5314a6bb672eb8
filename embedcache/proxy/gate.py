"""Who is served, decided from a request's headers before its body is read
(:attr:`~embedcache.proxy.http.Handlers.admit`), and by the routes from the same memory.

The policy is :class:`~embedcache.proxy.access.Access`'s. A token, a listed key or a key
whose verdict is remembered is decided at once, on the event loop. A key that must be
verified with the upstream is verified in a thread while its connection waits: concurrent
requests with the same new key share that one verification (single flight), and a worker
starts at most ``verify_rate`` verifications a second (:class:`~.keys.VerifyBudget`); over
it the answer is a 429 with ``Retry-After``.

A refusal made before the body is read cannot know the client's dialect: its body carries
Jina's ``detail`` and OpenAI's ``error`` at once (on TEI's path, TEI's error shape). Health,
metrics, the admin endpoints and ``/info`` are not gated here: they have their own rules.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from starlette.requests import Request
from starlette.responses import Response

from ..errors import AuthenticationError, EmbedcacheError
from . import tei
from .access import Access, Decision, digest
from .http import Refusal
from .http import Request as HttpRequest
from .keys import VerifyBudget
from .wire import render_refusal

__all__ = ["Gate", "bearer_of", "bearer_value", "refusal_response"]

#: Paths admitted whatever the credentials (each answers by its own rules).
EXEMPT_PATHS = frozenset({b"/health", b"/metrics", b"/admin/stats", b"/admin/flush", b"/info"})
_TEI_PATH = tei.TEI_PATH.encode()
_JSON = (b"content-type", b"application/json")

#: Runs blocking work in a thread and gives its result.
RunInThread = Callable[[Callable[[], Decision]], Awaitable[Decision]]

log = logging.getLogger("embedcache")


class Gate:
    """Access decisions for a worker: at the headers (:meth:`admit`) and in the routes
    (:meth:`decision`, which finds what :meth:`admit` settled without asking again).

    :param access: the policy and its remembered verdicts.
    :param verify_rate: most key verifications this worker starts a second.
    :param run: runs a verification in a thread (the proxy's fill threads).
    """

    def __init__(self, access: Access, verify_rate: float, run: RunInThread) -> None:
        self.access = access
        self._budget = VerifyBudget(verify_rate)
        self._run = run
        # Verifications in flight, by key digest: later requests with the key wait for it.
        self._pending: dict[bytes, asyncio.Future[Decision]] = {}

    def admit(self, request: HttpRequest) -> Refusal | Awaitable[Refusal | None] | None:
        """``None`` to read the request's body and serve it, a :class:`Refusal`, or an
        awaitable of either while the key is verified."""
        path = request.path
        if path in EXEMPT_PATHS:
            return None
        on_tei = path == _TEI_PATH
        found = self._decide(bearer_value(request.authorization))
        if isinstance(found, Decision):
            return _refusal(found, on_tei) if found.status else None
        return self._admit_when_verified(found, on_tei)

    def in_clients_terms(self, exc: EmbedcacheError) -> EmbedcacheError:
        """``exc`` worded for this proxy's clients: the library's "no Jina API key" names a
        Python argument (``api_key=``), where a client acts on the ``Authorization: Bearer``
        header, and the proxy's operator on its environment. Any other error as it is."""
        if not (isinstance(exc, AuthenticationError) and exc.variables):
            return exc
        variables = " or ".join(exc.variables)
        if self.access.takes_token:  # the bearer is the proxy's token: only the server pays
            detail = (
                "this proxy has no Jina API key to fetch what it has not cached: start "
                f"embedcache serve with {variables} set (clients send the proxy's token in "
                "the Authorization: Bearer header, not a Jina key)"
            )
        else:
            detail = (
                "no Jina API key to fetch what this proxy has not cached: send yours in the "
                f"Authorization: Bearer header (the proxy has none of its own: {variables} "
                "is not set where embedcache serve runs)"
            )
        return AuthenticationError(detail, variables=exc.variables)

    async def decision(self, bearer: str) -> Decision:
        """The decision for a route's request (``bearer`` as sent): from memory when
        :meth:`admit` settled it, else as :meth:`admit` would have decided."""
        found = self._decide(bearer)
        if isinstance(found, Decision):
            return found
        return await asyncio.shield(found)

    def _decide(self, bearer: str) -> Decision | asyncio.Future[Decision]:
        decision = self.access.decide(bearer, verify=False)
        if decision is not None:
            return decision
        key_digest = digest(bearer)
        pending = self._pending.get(key_digest)
        if pending is None:
            wait = self._budget.take()
            if wait:
                rate = f"{self._budget.rate:g}"
                detail = (
                    f"too many new API keys to verify: this proxy verifies at most {rate} a "
                    f"second (embedcache serve --verify-rate); retry in {wait} s"
                )
                return Decision(429, detail, retry_after=wait)
            pending = asyncio.ensure_future(self._verify(bearer, key_digest))
            self._pending[key_digest] = pending
        return pending

    async def _verify(self, bearer: str, key_digest: bytes) -> Decision:
        try:
            return await self._run(partial(self.access.verify, bearer))
        except Exception:  # the threads are gone (shutting down), or a bug: fail closed
            log.exception("embedcache proxy: verifying a key failed")
            return Decision(503, "cannot verify this API key now")
        finally:
            del self._pending[key_digest]

    async def _admit_when_verified(
        self, pending: asyncio.Future[Decision], on_tei: bool
    ) -> Refusal | None:
        # Shielded: a connection that goes away must not cancel others' verification.
        decision = await asyncio.shield(pending)
        return _refusal(decision, on_tei) if decision.status else None


def bearer_value(authorization: bytes) -> str:
    """The token of a raw ``Authorization: Bearer <token>`` value (empty for any other)."""
    scheme, _, value = authorization.partition(b" ")
    return value.strip().decode("latin-1") if scheme.lower() == b"bearer" else ""


def bearer_of(request: Request) -> str:
    """:func:`bearer_value` of a Starlette request."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _body(decision: Decision, on_tei: bool) -> bytes:
    if on_tei:
        return tei.render_error(decision.detail, tei.error_type(decision.status))
    return render_refusal(decision.detail, decision.status)


def _refusal(decision: Decision, on_tei: bool) -> Refusal:
    headers = [_JSON]
    if decision.retry_after:
        headers.append((b"retry-after", b"%d" % decision.retry_after))
    return Refusal(decision.status, _body(decision, on_tei), tuple(headers))


def refusal_response(decision: Decision, on_tei: bool = False) -> Response:
    """A route's answer to a refused request, as :meth:`Gate.admit` would have given it."""
    headers = {"retry-after": str(decision.retry_after)} if decision.retry_after else None
    return Response(_body(decision, on_tei), decision.status, headers, "application/json")
