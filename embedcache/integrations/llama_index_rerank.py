"""``JinaRerank``: a LlamaIndex node postprocessor over the rerank cache (the ``llama-index``
extra).

``llama_index.postprocessor.jinaai_rerank.JinaRerank`` posts every node on every query; this
one asks :class:`~embedcache.JinaRerankFunction`, which keeps each score on disk (per
(query, document) for the pointwise models, per whole list for the listwise
jina-reranker-v3), so a query engine asked the same question again sends nothing, and an
overlapping set of retrieved nodes sends only the nodes it has not scored.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from ..config import DEFAULT_RERANK_MODEL
from ..embedding.counters import Stats
from ..extras import requires
from ..function import settings_of
from ..rerank_function import JinaRerankFunction, RerankResult

with requires("llama-index"):
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload

    # Re-exported there from llama_index_instrumentation without __all__, as the jinaai
    # package imports it.
    from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

__all__ = ["JinaRerank"]

dispatcher = get_dispatcher(__name__)


class JinaRerank(BaseNodePostprocessor):
    """A LlamaIndex node postprocessor reranking with the Jina API, with embedcache's disk
    cache in front: pass it in ``node_postprocessors`` (``index.as_query_engine(...)``) where
    ``llama_index.postprocessor.jinaai_rerank.JinaRerank`` goes. Its first arguments are
    that class's, in its order; it keeps the ``top_n`` best nodes, best first, each scored
    by the reranker, and emits the same ``ReRankStartEvent``/``ReRankEndEvent`` and
    ``RERANKING`` callback event. The async path (``apostprocess_nodes``) awaits the
    function's async twin: a cancelled await sends no new batch.

    :param top_n: how many nodes to keep; ``None``: all, reordered.
    :param model: Jina reranker model id; default JinaRerankFunction's
        (jina-reranker-v2-base-multilingual), not the jinaai package's v1, which Jina no
        longer lists.
    :param base_url: API root; else ``EMBEDCACHE_BASE_URL``, else ``https://api.jina.ai``.
        The jinaai package's form, ending in ``/v1`` (its default
        ``https://api.jina.ai/v1``), is taken too: that ``/v1`` is the API's path, not
        part of the root.
    :param api_key: else ``JINAAI_API_KEY`` or ``JINA_API_KEY``, read only when something
        is not cached. Never kept in a field, so never in ``repr``, ``to_dict`` or
        LlamaIndex's payloads.
    :param callback_manager: LlamaIndex's callbacks.
    :param cache_dir: cache directory; else ``EMBEDCACHE_DIR``, else the user cache dir.
    :param offline: raise :class:`~embedcache.CacheMissError` on any miss.
    :param options: any other keyword-only option of ``JinaRerankFunction`` (``redis_url``,
        ``tier``, ...).
    """

    model: str = Field(default=DEFAULT_RERANK_MODEL, description="The Jina reranker model id.")
    top_n: int | None = Field(default=2, description="Top N nodes to return (None: all).")

    _function: JinaRerankFunction = PrivateAttr()

    def __init__(
        self,
        top_n: int | None = 2,
        model: str = DEFAULT_RERANK_MODEL,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        callback_manager: CallbackManager | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        offline: bool | None = None,
        **options: Any,
    ) -> None:
        settings = settings_of(type(self).__name__, options)
        # Passed as one mapping: mypy sees only BaseNodePostprocessor's fields.
        fields: dict[str, Any] = {"top_n": top_n, "model": model}
        if callback_manager is not None:
            fields["callback_manager"] = callback_manager
        super().__init__(**fields)
        if base_url is not None:
            base_url = base_url.rstrip("/").removesuffix("/v1")
        self._function = JinaRerankFunction(
            model, api_key, base_url=base_url, cache_dir=cache_dir, offline=offline, **settings
        )

    @classmethod
    def class_name(cls) -> str:
        return "EmbedcacheJinaRerank"

    def close(self) -> None:
        """Release the cache and its threads (after any call still committing)."""
        self._function.close()

    def __enter__(self) -> JinaRerank:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def rerank_function(self) -> JinaRerankFunction:
        """The :class:`~embedcache.JinaRerankFunction` underneath, for the same cache from
        pymilvus-style code."""
        return self._function

    @property
    def stats(self) -> Stats:
        """Hits, misses, requests and tokens since this object was created."""
        return self._function.stats

    @property
    def cache_dir(self) -> str:
        """The cache directory in use."""
        return self._function.cache_dir

    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        with self._reranking(nodes, query_bundle) as call:
            if call.texts:
                call.keep(self._function(call.query, call.texts, top_k=call.top_n))
        return call.nodes

    async def _apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        with self._reranking(nodes, query_bundle) as call:
            if call.texts:
                call.keep(await self._function.acall(call.query, call.texts, top_k=call.top_n))
        return call.nodes

    @contextlib.contextmanager
    def _reranking(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None
    ) -> Iterator[_Call]:
        """One rerank, sync or async, told to LlamaIndex as the jinaai package tells it:
        the start event, the callback event around the call, the end event."""
        top_n = len(nodes) if self.top_n is None else self.top_n
        dispatcher.event(
            ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=top_n, model_name=self.model)
        )
        if query_bundle is None:
            raise ValueError("Missing query bundle in extra info.")
        if not nodes:
            yield _Call(query_bundle.query_str, [], top_n, nodes)
            return
        payload: dict[str, Any] = {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.model,
            EventPayload.QUERY_STR: query_bundle.query_str,
            EventPayload.TOP_K: top_n,
        }
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
            # The text LlamaIndex embeds a node by, metadata included, as the jinaai package.
            texts = [node.node.get_content(metadata_mode=MetadataMode.EMBED) for node in nodes]
            call = _Call(query_bundle.query_str, texts, top_n, nodes)
            yield call
            event.on_end(payload={EventPayload.NODES: call.nodes})
        dispatcher.event(ReRankEndEvent(nodes=call.nodes))


class _Call:
    """One rerank's query and texts, and the nodes it keeps: set from the function's
    results, best first."""

    def __init__(self, query: str, texts: list[str], top_n: int, given: list[NodeWithScore]):
        self.query, self.texts, self.top_n = query, texts, top_n
        self._given = given
        self.nodes: list[NodeWithScore] = []

    def keep(self, found: list[RerankResult]) -> None:
        self.nodes = [
            NodeWithScore(node=self._given[result.index].node, score=result.score)
            for result in found
        ]
