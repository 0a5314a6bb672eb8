"""Answers already written: each served embedding's JSON text, kept so a repeat hit is
parse + hash + lookup + concatenate, with no vector read and no float rendered; and each
served rerank score (its float64's 8 bytes, :mod:`.rerank_routes`), so a repeated rerank
reads no store either.

An embedding's text depends on its entry (the key covers every field that changes the
vector), on how it is encoded (``float`` or ``base64``) and, for ``float``, on the
upstream's float style; the three make the lookup key. What is kept is what the API
returned for that request, written as the upstream writes it, so it never goes stale. An
entry removed from disk by another process may still be served from here until it ages
out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["RenderedAnswers", "variant"]

#: Bytes counted per kept text beyond its own length: the dict slot, the key and the tuple.
_OVERHEAD = 120


def variant(embedding_type: str, float_style: str) -> bytes:
    """What tells apart the texts of one entry: base64, or float text in one style."""
    if embedding_type == "base64":
        return b"b"
    return b"d" if float_style == "float64" else b"f"


class RenderedAnswers:
    """Least-recently-used embedding texts and the tokens each entry cost, within
    ``max_bytes``; thread-safe.

    :param max_bytes: the memory budget, counted as text bytes plus a fixed overhead each.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._texts: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._texts)

    @property
    def bytes_held(self) -> int:
        """Memory counted against the budget right now."""
        return self._bytes

    def get_all(self, keys: Sequence[bytes], kind: bytes) -> list[tuple[bytes, float]] | None:
        """Every key's text and tokens, or ``None`` unless all are kept: a partial answer
        would still need the store."""
        texts = self._texts
        found = []
        with self._lock:
            for key in keys:
                entry = texts.get(key + kind)
                if entry is None:
                    return None
                texts.move_to_end(key + kind)
                found.append(entry)
        return found

    def put(
        self, keys: Sequence[bytes], kind: bytes, texts: Sequence[bytes], tokens: Sequence[float]
    ) -> None:
        """Keep the texts of ``keys`` (one each, in order), evicting the oldest over budget."""
        if self.max_bytes <= 0:
            return
        with self._lock:
            for key, text, cost in zip(keys, texts, tokens, strict=True):
                name = key + kind
                if name in self._texts:
                    self._texts.move_to_end(name)
                    continue
                self._texts[name] = (text, cost)
                self._bytes += len(text) + _OVERHEAD
            while self._bytes > self.max_bytes and self._texts:
                _, (text, _) = self._texts.popitem(last=False)
                self._bytes -= len(text) + _OVERHEAD

    def clear(self) -> None:
        """Forget every text kept."""
        with self._lock:
            self._texts.clear()
            self._bytes = 0
