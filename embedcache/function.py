"""``JinaEmbeddingFunction``, the library's front door: pymilvus's class of the same name, with
a disk cache in front (``from embedcache import JinaEmbeddingFunction``; the old path
``embedcache.integrations.milvus`` still imports it).

Its async methods run the one sync core in worker threads
(:class:`~embedcache.workers.Workers`): there is no second code path to keep in step, and the
core's own threads do the sending either way.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Union

import numpy as np
from numpy.typing import NDArray

from .assembly import Assembly, library_settings
from .config import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MODEL,
    DEFAULT_REDIS_PREFIX,
    DEFAULT_TIMEOUT_SECONDS,
)
from .embedding.counters import Stats
from .errors import InvalidInputError
from .inputs import Input, load_media
from .models import MODEL_DEFAULT_TASK, RequestOptions, default_task, resolve_options, spec_for
from .upstream.media_fetch import MediaFetcher
from .upstream.protocol import Upstream
from .workers import Workers

__all__ = ["ImageLike", "JinaEmbeddingFunction", "paired_tasks", "settings_of"]

#: An image as :meth:`JinaEmbeddingFunction.encode_images` takes it: its bytes, a file's
#: path, or an ``http(s)``/``data:`` URL.
ImageLike = Union[bytes, str, "os.PathLike[str]"]


def paired_tasks(
    model: str, task: str | None, query_task: str | None
) -> tuple[str | None, str | None]:
    """The document and query tasks of a LangChain or LlamaIndex class over ``model``.

    ``task`` ``None`` (or ``"default"``) is the model's document task (what
    :meth:`JinaEmbeddingFunction.encode_documents` sends: ``retrieval.passage`` on v3 and
    v4, none on v2 and jina-clip-v2; see :func:`~embedcache.models.default_task`). ``query_task``
    ``None`` is the query side of ``task``: ``X.passage`` becomes ``X.query``, the model's
    document task its query task; any other task (``text-matching``, ``classification``)
    is symmetric and used for both.

    >>> paired_tasks("jina-embeddings-v3", None, None)
    ('retrieval.passage', 'retrieval.query')
    >>> paired_tasks("jina-code-embeddings-0.5b", "qa.passage", None)
    ('qa.passage', 'qa.query')
    >>> paired_tasks("jina-embeddings-v3", "text-matching", None)
    ('text-matching', 'text-matching')
    >>> paired_tasks("jina-embeddings-v2-base-en", None, None)
    (None, None)
    """
    spec = spec_for(model)
    if task is None or task == MODEL_DEFAULT_TASK:
        task = default_task(model)
    if query_task is None:
        if task is not None and task.endswith(".passage"):
            query_task = task.removesuffix(".passage") + ".query"
        elif spec is not None and task == spec.passage_task:
            query_task = spec.query_task
        else:
            query_task = task
    return task, query_task


def settings_of(owner: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options``, checked to be keyword-only options of :class:`JinaEmbeddingFunction`
    (``cache_dir``, ``base_url``, ``offline``, ``batch_size``, ``redis_url``, ...).

    :raises TypeError: naming the first unknown one, as Python does for a bad keyword.
    """
    unknown = sorted(set(options) - _EF_OPTIONS)
    if unknown:
        raise TypeError(f"{owner}() got an unexpected keyword argument {unknown[0]!r}")
    return dict(options)


class JinaEmbeddingFunction:
    """A drop-in for ``pymilvus.model.dense.JinaEmbeddingFunction`` that caches on disk.

    The first five parameters and their defaults are pymilvus's; so are ``encode_documents``
    (task ``retrieval.passage``), ``encode_queries`` (``retrieval.query``), ``__call__`` (the
    configured task) and ``dim``. Unlike pymilvus it returns float32 arrays (what the API
    computes), batches and retries, and needs an API key only when something is not cached.

    For jina-embeddings-v3, ``task="clustering"`` (the Milvus docs' name) is sent as
    ``separation`` (the API's name) and shares its cache entries. Models without a task
    field (v2, clip-v1) get no task. Unknown models pass through unvalidated.

    ``task`` defaults to the model's own document task (``"default"``): ``retrieval.passage``
    on v3 (pymilvus's default), none on jina-clip-v2, whose one task is for queries.

    :param model_name: Jina model id.
    :param api_key: Jina API key; else ``JINAAI_API_KEY``, else ``JINA_API_KEY``. Never
        written to disk, logs or ``repr``.
    :param task: task for ``__call__`` and :meth:`embed`; ``"default"``: the model's
        document task (see :func:`~embedcache.models.default_task`); ``None``: none sent.
    :param dimensions: Matryoshka size; ``None`` sends none (the model's native size).
    :param late_chunking: embed each call's list as one late-chunking group; its vectors are
        cached under the whole ordered list, so only the same list in the same order hits.
    :param cache_dir: cache directory; else ``EMBEDCACHE_DIR``, else the user cache dir.
    :param base_url: API root; else ``EMBEDCACHE_BASE_URL``, else ``https://api.jina.ai``.
        The upstream is part of every cache key: another base URL's vectors are never hits.
    :param upstream_as: cache as if ``base_url`` were this upstream, to share entries with
        it (a gateway or proxy in front of ``https://api.jina.ai``); else
        ``EMBEDCACHE_UPSTREAM_AS``.
    :param batch_size: most texts per request (default: the model's limit, 2048 or 512).
    :param max_batch_tokens: most estimated tokens per request.
    :param max_concurrency: most requests in flight.
    :param offline: raise :class:`~embedcache.CacheMissError` on any miss; default from
        ``EMBEDCACHE_OFFLINE``.
    :param normalized: send ``normalized`` (``None``: leave it to the API, which normalises).
    :param truncate: send ``truncate`` (``None``: leave it out; too-long texts are errors).
    :param size_limit: evict oldest-stored entries above this many bytes of vectors, from now
        on for every user of the directory; ``0`` removes the limit; ``None`` (the default)
        keeps the directory's setting (a new cache has none).
    :param timeout: seconds to wait for each response.
    :param max_attempts: attempts per request for retryable failures.
    :param upstream: embed misses with this instead of the Jina API (tests, proxies).
    :param redis_url: a Redis (or Valkey) cache shared with other machines, read after the
        local cache and written with it; else ``EMBEDCACHE_REDIS_URL``, else none. Needs the
        ``redis`` extra.
    :param redis_prefix: key namespace in that Redis, so several teams can share one.
    :param redis_ttl: seconds each shared entry lives; ``None``: until Redis evicts it.
    :param tier: pace requests to a Jina account tier's limits (``"free"``, ``"1"``,
        ``"2"``); else ``EMBEDCACHE_TIER``, else no pacing. Every client of the process
        configured alike shares one limiter.
    :param rpm: requests per minute to stay under (overrides the tier; ``EMBEDCACHE_RPM``).
    :param tpm: tokens per minute to stay under (overrides the tier; ``EMBEDCACHE_TPM``).
    :param fetch_images: fetch images given by URL first, and key and send them by their
        content (new content at an old URL is then a new entry); off: keyed by the URL,
        fetched by the API.
    :param embedding_type: ``"float"``; or ``"binary"`` / ``"ubinary"``: the API's packed
        sign bits, ``ceil(d / 8)`` int8 / uint8 values a vector, cached as the API returned
        them (entries of their own, never derived from the floats).
    :param return_multivector: jina-embeddings-v4's per-token output: each input gives a
        ``(tokens, 128)`` array (not with ``dimensions`` nor ``late_chunking``). The
        ColBERT models (jina-colbert-v2, jina-colbert-v1-en) always answer so.
    :param input_type: the ColBERT models' ``"query"`` or ``"document"`` side for
        ``__call__`` and :meth:`embed` (default ``document``); :meth:`encode_documents`
        and :meth:`encode_queries` choose their own.
    :raises InvalidInputError: for options the model does not take, before any request.

    The ``encode_*`` methods and ``__call__`` return one array per input: 1-D float32; 1-D
    int8/uint8 (``binary``/``ubinary``); 2-D float32 ``(rows, width)`` (multi-vector); 2-D
    int8/uint8 (both). The ``embed*`` methods return one matrix, so they refuse a
    multi-vector output (an input's rows vary in number): use ``encode_*`` for it.

    Every embedding method has an async twin (``aencode_documents``, ``aencode_queries``,
    ``aembed``, ``aembed_documents``, ``aembed_queries``) running the same sync call in a
    worker thread. Cancelling one (``task.cancel()``, ``asyncio.timeout``) returns at once
    and sends no new batch; the batches already in flight are committed as they arrive, so
    nothing paid for is lost, and a re-run sends only what is still missing.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        api_key: str | None = None,
        task: str | None = MODEL_DEFAULT_TASK,
        dimensions: int | None = None,
        late_chunking: bool | None = False,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        base_url: str | None = None,
        upstream_as: str | None = None,
        batch_size: int | None = None,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        offline: bool | None = None,
        normalized: bool | None = None,
        truncate: bool | None = None,
        size_limit: int | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        upstream: Upstream | None = None,
        redis_url: str | None = None,
        redis_prefix: str = DEFAULT_REDIS_PREFIX,
        redis_ttl: int | None = None,
        tier: str | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        fetch_images: bool = False,
        embedding_type: str = "float",
        return_multivector: bool = False,
        input_type: str | None = None,
        **kwargs: object,
    ) -> None:
        if kwargs:
            # pymilvus accepts and ignores extra keyword arguments; say so instead of hiding it.
            warnings.warn(
                f"JinaEmbeddingFunction ignores unknown arguments: {', '.join(sorted(kwargs))}",
                stacklevel=2,
            )
        self.model_name = model_name
        if task == MODEL_DEFAULT_TASK:
            task = default_task(model_name)
        #: The task of ``__call__`` and :meth:`embed`, the model's default resolved.
        self.task = task
        self._dimensions = dimensions
        self._late_chunking = bool(late_chunking)
        self._normalized = normalized
        self._truncate = truncate
        self._output = (embedding_type, return_multivector)
        self._input_type = input_type
        self._options: dict[tuple[str | None, str | None], RequestOptions] = {}
        self._call_options = self._options_for(task)
        self._workers = Workers()
        self._fetcher = MediaFetcher(timeout=timeout) if fetch_images else None
        self._parts = Assembly(
            library_settings(
                api_key,
                tier=tier,
                rpm=rpm,
                tpm=tpm,
                offline=offline,
                cache_dir=cache_dir,
                size_limit=size_limit,
                base_url=base_url,
                upstream_as=upstream_as,
                timeout=timeout,
                max_attempts=max_attempts,
                redis_url=redis_url,
                redis_prefix=redis_prefix,
                redis_ttl=redis_ttl,
                batch_size=batch_size,
                max_batch_tokens=max_batch_tokens,
                max_concurrency=max_concurrency,
            ),
            upstream=upstream,
        )
        try:
            self._embedder = self._parts.embedder
        except BaseException:
            self._parts.close()
            raise

    def __repr__(self) -> str:
        options = self._call_options
        return (
            f"JinaEmbeddingFunction(model_name={self.model_name!r}, task={self.task!r}, "
            f"dimensions={options.dimensions!r}, late_chunking={options.late_chunking!r}, "
            f"cache_dir={str(self._parts.store.directory)!r})"
        )

    def __enter__(self) -> JinaEmbeddingFunction:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release threads, the connection pool and the database connection, once the
        calls still running have finished (a cancelled async call commits its batches in
        flight first)."""
        self._workers.close()
        if self._fetcher is not None:
            self._fetcher.close()
        self._parts.close()

    @property
    def stats(self) -> Stats:
        """Hits, misses, requests and tokens since this object was created."""
        return self._embedder.stats

    @property
    def cache_dir(self) -> str:
        """The cache directory in use."""
        return str(self._parts.store.directory)

    @property
    def dim(self) -> int:
        """The configured ``dimensions``, else the model's native size. For a model
        embedcache does not know, one empty text is embedded (once; then cached)."""
        known = self._call_options.row_width
        if known is not None:
            return known
        return int(self._encode([""], self._call_options)[0].shape[-1])

    def options(self, task: str | None = None) -> RequestOptions:
        """The validated options a call with ``task`` (``None``: the configured task)
        sends, as :meth:`embed` uses them.

        :raises InvalidInputError: for a task the model does not take.
        """
        return self._call_options if task is None else self._options_for(task)

    def embed(self, texts: Sequence[str], *, task: str | None = None) -> NDArray[Any]:
        """Embed with the configured task (or ``task``) into one ``(len(texts), d)``
        float32 array."""
        return self._embed(texts, self.options(task))

    def embed_documents(self, texts: Sequence[str]) -> NDArray[Any]:
        """Embed documents (task ``retrieval.passage``) into one ``(n, d)`` array."""
        return self._embed(texts, self._document_options())

    def embed_queries(self, texts: Sequence[str]) -> NDArray[Any]:
        """Embed queries (task ``retrieval.query``) into one ``(n, d)`` array."""
        return self._embed(texts, self._query_options())

    async def aembed(self, texts: Sequence[str], *, task: str | None = None) -> NDArray[Any]:
        """:meth:`embed`, awaited (see the class docstring for what a cancel does)."""
        return await self._aembed(texts, self.options(task))

    async def aembed_documents(self, texts: Sequence[str]) -> NDArray[Any]:
        """:meth:`embed_documents`, awaited."""
        return await self._aembed(texts, self._document_options())

    async def aembed_queries(self, texts: Sequence[str]) -> NDArray[Any]:
        """:meth:`embed_queries`, awaited."""
        return await self._aembed(texts, self._query_options())

    async def aencode_documents(self, documents: list[str]) -> list[NDArray[Any]]:
        """:meth:`encode_documents`, awaited."""
        return await self._aencode(documents, self._document_options())

    async def aencode_queries(self, queries: list[str]) -> list[NDArray[Any]]:
        """:meth:`encode_queries`, awaited."""
        return await self._aencode(queries, self._query_options())

    def encode_documents(self, documents: list[str]) -> list[NDArray[Any]]:
        """pymilvus API: one array per document, in input order (1-D float32 unless the
        output is binary or multi-vector: see the class docstring)."""
        return self._encode(documents, self._document_options())

    def encode_queries(self, queries: list[str]) -> list[NDArray[Any]]:
        """pymilvus API: one array per query, in input order (as :meth:`encode_documents`)."""
        return self._encode(queries, self._query_options())

    def encode_images(self, images: Sequence[ImageLike]) -> list[NDArray[Any]]:
        """One 1-D float32 array per image, in input order, as :meth:`encode_documents`
        gives for texts (jina-clip-v1, jina-clip-v2, jina-embeddings-v4).

        Each image is ``bytes``, a file's path (read now), a ``data:`` URI, or an ``http(s)``
        URL. By bytes or file, an image is keyed by its content: the same image however it
        was given is one entry. By URL, it is keyed by the URL and the API fetches it, so new
        content at a cached URL is not seen: pass its bytes to key it by content.

        :raises InvalidInputError: before any request: a file that cannot be read, base64
            that does not decode, a model that takes no images.
        """
        return self._encode(self._media(images), self._image_options())

    def embed_images(self, images: Sequence[ImageLike]) -> NDArray[Any]:
        """:meth:`encode_images` as one ``(n, d)`` array."""
        return self._embed(self._media(images), self._image_options())

    async def aencode_images(self, images: Sequence[ImageLike]) -> list[NDArray[Any]]:
        """:meth:`encode_images`, awaited."""
        return await self._aencode(self._media(images), self._image_options())

    def encode_pdfs(self, pdfs: Sequence[ImageLike]) -> list[NDArray[Any]]:
        """One array per PDF (jina-embeddings-v4), given as :meth:`encode_images` takes
        images and keyed the same way; each PDF is sent alone, as the API requires."""
        return self._encode(self._media(pdfs, "pdf"), self._image_options())

    def __call__(self, texts: list[str]) -> list[NDArray[Any]]:
        """pymilvus API: embed with the configured task."""
        return self._encode(texts, self.options())

    def _embed(
        self,
        texts: Sequence[Input],
        options: RequestOptions,
        stop: threading.Event | None = None,
    ) -> NDArray[Any]:
        if options.plain:
            result = self._embedder.embed_detailed(texts, options, stop=stop)
            assert result is not None  # only cached_only calls come back empty-handed
            return result.vectors
        if options.multivector:
            raise InvalidInputError(
                "a multi-vector output is one (tokens, width) array per input, of varying "
                "length: use encode_documents, encode_queries or encode_images"
            )
        payloads = self._encode(texts, options, stop)  # packed bits: one width
        return np.stack(payloads) if payloads else np.empty((0, 0), np.int8)

    def _encode(
        self,
        texts: Sequence[Input],
        options: RequestOptions,
        stop: threading.Event | None = None,
    ) -> list[NDArray[Any]]:
        if options.plain:
            return list(self._embed(texts, options, stop))
        result = self._embedder.embed_payloads(texts, options, stop=stop)
        assert result is not None  # only cached_only calls come back empty-handed
        return result.payloads

    async def _aembed(self, texts: Sequence[Input], options: RequestOptions) -> NDArray[Any]:
        # Options are resolved on the caller's thread: bad ones fail before any thread.
        return await self._workers.run(functools.partial(self._embed, texts, options))

    async def _aencode(self, texts: Sequence[Input], options: RequestOptions) -> list[NDArray[Any]]:
        return await self._workers.run(functools.partial(self._encode, texts, options))

    def _media(self, values: Sequence[ImageLike], kind: str = "image") -> list[Input]:
        """The images (or PDFs), read, checked against the model and, with fetching on,
        fetched, before anything is sent."""
        name = "images" if kind == "image" else "pdfs"
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise InvalidInputError(
                f"{name} must be a list (of bytes, paths or URLs), got {type(values).__name__}"
            )
        options = self._image_options()
        loaded: list[Input] = []
        for index, value in enumerate(values):
            where = f"{name}[{index}]"
            media = load_media(value, where, kind)
            options.check_media(media, where)
            loaded.append(media)
        if self._fetcher is None:
            return loaded
        # One at a time, each with the fetch deadline of its own: a call of the library
        # is the caller's corpus, not one client's request to bound as a whole.
        fetch = self._fetcher.fetch_all
        return [fetch([media], _named(f"{name}[{i}]"))[0] for i, media in enumerate(loaded)]

    def _image_options(self) -> RequestOptions:
        """The configured options, without late chunking (which takes texts only)."""
        options = self.options()
        return replace(options, late_chunking=False) if options.late_chunking else options

    def _document_options(self) -> RequestOptions:
        return self._options_for(default_task(self.model_name), "document")

    def _query_options(self) -> RequestOptions:
        spec = self._call_options.spec
        return self._options_for(spec.query_task if spec else "retrieval.query", "query")

    def _options_for(self, task: str | None, side: str | None = None) -> RequestOptions:
        """The options of ``task``; ``side``: the ColBERT ``input_type`` of documents or
        queries (other models take none), else the configured one."""
        input_type = self._input_type
        if side is not None and self._colbert:
            input_type = side
        options = self._options.get((task, input_type))
        if options is None:
            embedding_type, multivector = self._output
            options = self._options[task, input_type] = resolve_options(
                self.model_name,
                task,
                self._dimensions,
                late_chunking=self._late_chunking,
                normalized=self._normalized,
                truncate=self._truncate,
                embedding_type=embedding_type,
                return_multivector=multivector,
                input_type=input_type,
            )
        return options

    @property
    def _colbert(self) -> bool:
        spec = spec_for(self.model_name)
        return spec is not None and spec.multivector == "only"


#: The keyword-only options of :class:`JinaEmbeddingFunction`, which the LangChain and
#: LlamaIndex classes pass on as they are.
#: Not the output options: their classes return one float vector per input, as LangChain
#: and LlamaIndex expect.
_EF_OPTIONS = frozenset(
    name
    for name, parameter in inspect.signature(JinaEmbeddingFunction.__init__).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
) - {"embedding_type", "return_multivector", "input_type"}


def _named(where: str) -> Callable[[int], str]:
    """What an error says of the one item fetched: ``where``."""
    return lambda _: where
