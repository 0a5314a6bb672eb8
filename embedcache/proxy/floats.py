"""How the proxy writes ``float`` answers: in its upstream's own style.

A float client parses the JSON numbers into float64, so a hit matches a direct call only if
its text is in the style the upstream writes (reference §12; see
:mod:`~embedcache.upstream.floats`). The client learns the style from the upstream's float
answers (:meth:`~embedcache.upstream.jina.JinaClient.learn_float_style`: this process's
first misses are asked for as float text), and it is kept in the cache directory per
upstream URL. So every worker process on the directory, and every restart, writes the same
style from its first answer, even a pure hit before it ever fetched; until anything is
learned, the default (:data:`~embedcache.upstream.floats.DEFAULT_FLOAT_STYLE`).

It is kept under the upstream's name as the cache keys its entries
(:func:`~embedcache.config.upstream_id`: no credentials, so none reaches the disk; and an
upstream declared with ``--upstream-as`` shares the style of the one it stands for). A style
an older version kept under a URL with ``***@`` credentials is not read: it is learned
again from the first miss.
"""

from __future__ import annotations

import logging

from ..errors import CacheError
from ..storage.store import Store
from ..upstream.floats import DEFAULT_FLOAT_STYLE, FLOAT_STYLES
from ..upstream.jina import JinaClient
from .metrics import Board

__all__ = ["UpstreamFloatStyle", "setting_name"]

log = logging.getLogger("embedcache")


def setting_name(upstream: str) -> str:
    """The cache directory's setting that holds the float style of ``upstream`` (an
    :func:`~embedcache.config.upstream_id`, as the entries it answered are keyed)."""
    return f"float_style {upstream}"


class UpstreamFloatStyle:
    """The float style to write, for one store and the client that fills it from
    ``upstream`` (its :func:`~embedcache.config.upstream_id`).

    Starts the client learning. :attr:`style` is what this process learned, else what the
    directory holds (read until some process has stored one, then kept: the store is not
    read on every hit), else the default. Each process learns once for itself, so an
    upstream that changed its style is followed from each process's first miss on.
    """

    def __init__(self, store: Store, client: JinaClient, board: Board, upstream: str) -> None:
        self._store = store
        self._client = client
        self._board = board
        self._name = setting_name(upstream)
        self._stored: str | None = None
        client.learn_float_style(self._remember)

    @property
    def style(self) -> str:
        """``"float64"`` or ``"float32"``: how ``float`` answers are written now."""
        learned = self._client.float_style or self._board.float_style
        if learned is not None:
            return learned
        if self._stored is None:
            # Read again on every answer until some process has stored a style: exactness
            # first (this server's workers learn it from the board at once; the read is for
            # other servers on the directory), and once found it is never read again.
            self._stored = self._read()
        return self._stored or DEFAULT_FLOAT_STYLE

    def _read(self) -> str | None:
        try:
            value = self._store.setting(self._name)
        except CacheError:
            return None  # answered in the default style; the next answer reads again
        return value if value in FLOAT_STYLES else None

    def _remember(self, style: str) -> None:
        """Tell this server's other workers what the client learned (at once, through the
        board), and keep it for the directory's later processes (called in a fill thread:
        a failure is logged, never raised into the fill)."""
        self._board.float_style = style
        try:
            self._store.set_setting(self._name, style)
        except CacheError as exc:
            log.warning("embedcache proxy: cannot record the upstream's float style: %s", exc)
