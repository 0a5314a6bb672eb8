"""The old import path of :class:`~embedcache.function.JinaEmbeddingFunction` (pymilvus's
class name, whose drop-in it is): the class lives in :mod:`embedcache.function`, and
``from embedcache import JinaEmbeddingFunction`` is the documented way to import it."""

from __future__ import annotations

from ..function import JinaEmbeddingFunction

__all__ = ["JinaEmbeddingFunction"]
