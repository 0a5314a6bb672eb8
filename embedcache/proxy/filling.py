"""Requests the hit path could not answer, through the caching core: each text's embedding
written as JSON text in the upstream's float style, and kept for the hit path.

Small all-hit requests are answered on the event loop (a thread hop would cost more than
the work, :data:`INLINE_TEXTS` and :data:`INLINE_BODY_BYTES`); anything else runs in one of
the fill threads, so one big or slow request never stalls the worker's other clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import NamedTuple, TypeVar

from ..embedding.counters import Stats
from ..embedding.embedder import CachedEmbedder
from ..inputs import Media
from ..upstream.float_style import FloatStyle
from ..upstream.jina import JinaClient
from ..upstream.media_fetch import MediaFetcher
from .rendered import RenderedAnswers, variant
from .wire import EmbeddingsRequest, render_payload, render_vector

__all__ = ["INLINE_BODY_BYTES", "INLINE_TEXTS", "Filler", "Rendered"]

#: Most texts of a request tried on the event loop, from memory and local disk only.
INLINE_TEXTS = 32
#: Largest request body parsed on the event loop: a bigger one is parsed, checked and
#: keyed in a fill thread (parsing 50 MB takes about a second).
INLINE_BODY_BYTES = 64 * 1024

_T = TypeVar("_T")


class Rendered(NamedTuple):
    """A request's embeddings as JSON text, what the caching core found and spent, and
    the entry keys asked for (for the request log's digest)."""

    texts: list[bytes]
    stats: Stats
    keys: list[bytes]


class Filler:
    """The caching core as the routes use it, and the threads its fills run in.

    :param embedder: the caching core.
    :param rendered: where answers' text is kept for the hit path.
    :param float_style: how ``float`` answers are written.
    :param threads: most requests filling at once.
    :param fetcher: fetches images and PDFs given by URL on the hosts it allows, to key them
        by content (``serve --fetch-images-from``; ``None``: none is fetched).
    """

    def __init__(
        self,
        embedder: CachedEmbedder,
        rendered: RenderedAnswers,
        float_style: FloatStyle,
        threads: int,
        fetcher: MediaFetcher | None = None,
    ) -> None:
        self.embedder = embedder
        self.fetcher = fetcher
        self.rendered = rendered
        self._float_style = float_style
        self._threads = ThreadPoolExecutor(threads, "embedcache-fill")

    @property
    def float_style(self) -> str:
        """``"float64"`` or ``"float32"``: how ``float`` answers are written now."""
        return self._float_style.current

    def render(
        self, parsed: EmbeddingsRequest, upstream: JinaClient, cached_only: bool = False
    ) -> Rendered | None:
        """Each text's embedding as JSON text, in the upstream's float style and kept for
        the hit path, and what the caching core found and spent; ``None`` when
        ``cached_only`` and something is missing (blocking unless ``cached_only``).

        Multi-vector and packed-bits answers are rendered from the entries as stored, and
        not kept: the hit path answers plain vectors only."""
        if not parsed.options.plain:
            return self._render_payloads(parsed, upstream, cached_only)
        result = self.embedder.embed_detailed(
            parsed.texts, parsed.options, upstream=upstream, cached_only=cached_only
        )
        if result is None:
            return None
        style = self.float_style
        kind = variant(parsed.embedding_type, style)
        texts = [render_vector(row, parsed.embedding_type, style) for row in result.vectors]
        if not parsed.options.late_chunking:  # the hit path answers single texts only
            self.rendered.put(result.keys, kind, texts, result.tokens.tolist())
        return Rendered(texts, result.stats, result.keys)

    def _render_payloads(
        self, parsed: EmbeddingsRequest, upstream: JinaClient, cached_only: bool
    ) -> Rendered | None:
        found = self.embedder.embed_payloads(
            parsed.texts, parsed.options, upstream=upstream, cached_only=cached_only
        )
        if found is None:
            return None
        style, kind = self.float_style, parsed.embedding_type
        texts = [render_payload(payload, kind, style) for payload in found.payloads]
        return Rendered(texts, found.stats, found.keys)

    def needs_fetch(self, parsed: EmbeddingsRequest) -> bool:
        """Whether ``parsed`` holds an image or PDF to fetch before it can be keyed (never
        on the event loop: the hit path and the inline answer leave it to a fill thread)."""
        fetcher = self.fetcher
        if fetcher is None:
            return False
        return any(isinstance(item, Media) and fetcher.fetches(item) for item in parsed.texts)

    def by_content(self, parsed: EmbeddingsRequest) -> EmbeddingsRequest:
        """``parsed`` with its images and PDFs to fetch fetched (in a fill thread).

        :raises InvalidInputError: a URL that answered an error, or content too large.
        :raises TransportError: a URL that did not answer in time.
        """
        fetcher = self.fetcher
        if fetcher is None or not self.needs_fetch(parsed):
            return parsed
        where = "input[{}]".format if len(parsed.texts) > 1 else lambda _: "input"
        texts = fetcher.fetch_all(parsed.texts, where)
        return replace(parsed, texts=texts)

    async def in_thread(self, work: Callable[[], _T]) -> _T:
        """``work()``, run in a fill thread."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, work)

    def close(self) -> None:
        """Wait for the fills in flight (each batch is committed), then stop the threads."""
        self._threads.shutdown(wait=True)
        if self.fetcher is not None:
            self.fetcher.close()
