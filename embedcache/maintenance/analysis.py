"""What a request log, or a file of captured request bodies, says about waste and savings.

The figures behind ``embedcache analyze``, as pure functions over parsed JSON lines (no
file, no HTTP, no proxy import): :class:`Analysis` takes one decoded line at a time and
:meth:`Analysis.report` sums them up.

Two kinds of line are read, told apart by their fields:

* a **request-log line** (``serve --request-log``): what the proxy did, already counted
  (hits, misses, tokens spent and saved). It names no text, but a line that fetched anything
  carries its request's ``digest``: the same digest on a later line that fetched again is a
  request the cache had answered once and did not keep (pruned, evicted, another cache
  directory, passed through), what it could still save;
* a **request body** (one ``/v1/embeddings`` body, Jina's or OpenAI's dialect): what a
  cache *would* have done. Each text is keyed exactly as the cache keys it
  (:func:`~embedcache.cache_keys.text_keys` under the fingerprint of the resolved options),
  and a key seen before in any file is a text the cache would have served; its tokens are
  the estimate ``prewarm --dry-run`` shows (:func:`~embedcache.inputs.estimate_input`).
  Keys are held in :class:`~embedcache.embedding.distinct.DistinctKeys` (16 bytes a key;
  a second set, of keys seen twice, tells the misses that repeat later);
* a **rerank body** (``query`` with ``documents``, or TEI's ``texts``): each document's
  score keyed as the cache keys it (:func:`~embedcache.rerank_keys.rerank_keys`: per pair
  for a pointwise model, per position of the whole list for a listwise one), its tokens
  the query's and the document's, as the reranker estimates what a hit saved.

Reranks are counted beside embeddings in the totals (both are tokens paid for) and apart
in :meth:`Analysis.report`'s ``by_kind``; a rerank's "texts" are its documents.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, cast

from ..cache_keys import fingerprint, group_keys, text_keys
from ..config import DEFAULT_RERANK_MODEL, DEFAULT_UPSTREAM_ID, RERANK_ROUTES
from ..embedding.distinct import DistinctKeys
from ..embedding.reranker import check_rerank
from ..errors import EmbedcacheError, InvalidInputError
from ..inputs import Input, Media, estimate_input, parse_item
from ..models import names_jina_reranker, resolve_options, spec_for
from ..rerank_keys import rerank_fingerprint, rerank_keys

__all__ = ["Analysis", "Tally"]

# An input item that is an image or a PDF, in the API's forms.
_MEDIA_KEYS = frozenset({"image", "pdf", "url", "bytes"})
#: The request-log fields analyze needs, with the types each may take (schema25.md).
_LOG_FIELDS: dict[str, tuple[type, ...]] = {
    "time": (str,),
    "route": (str,),
    "key": (str, type(None)),
    "model": (str, type(None)),
    "task": (str, type(None)),
    "dimensions": (int, type(None)),
    "texts": (int,),
    "hits": (int,),
    "misses": (int,),
    "tokens_spent": (int,),
    "tokens_saved": (int,),
    "status": (int,),
}
#: A request-log line's ``digest`` (``r_`` and 16 hex digits).
_DIGEST = re.compile(r"r_[0-9a-f]{16}")
#: Body fields that change no vector's key but its encoding (float and base64 are the same
#: entry; binary and ubinary are outputs of their own, see _output) or nothing (``user`` is
#: OpenAI's end-user id): read as the proxy reads them.
_UNKEYED = frozenset({"embedding_type", "encoding_type", "encoding_format", "user"})
_KEYED = frozenset({"model", "input", "task", "dimensions", "normalized", "late_chunking",
                    "truncate", "return_multivector", "input_type"})  # fmt: skip
#: The encodings the proxy caches: float and base64 (one entry), binary, ubinary.
_OUTPUTS = frozenset({"float", "base64", "binary", "ubinary"})
#: What a number of tokens costs, in dollars.
Dollars = Callable[[float], float]
#: How many request settings the report lists, most repeated first.
TOP_SETTINGS = 10
#: What a request is, as ``by_kind`` reports it.
EMBEDDINGS, RERANK = "embeddings", "rerank"


@dataclass
class Tally:
    """Counts of one group of requests (all of them, one key, one model, one setting)."""

    requests: int = 0
    texts: int = 0
    #: Texts the cache served (a log's hits: distinct texts of each request) or would have
    #: served (a body's texts it would not fetch: seen before, or earlier in the request).
    hits: int = 0
    misses: int = 0
    tokens_spent: int = 0
    tokens_saved: int = 0
    #: Requests the proxy refused (status not 200): counted, never spent nor saved.
    refused: int = 0

    def add(self, other: Tally) -> None:
        for name in (f.name for f in fields(self)):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self, dollars: Dollars) -> dict[str, Any]:
        """The counts, the repeat rate and what the tokens cost (``dollars(tokens)``)."""
        served = self.hits + self.misses
        return {
            "requests": self.requests,
            "texts": self.texts,
            "hits": self.hits,
            "misses": self.misses,
            "refused": self.refused,
            "repeat_rate": round(self.hits / served, 6) if served else 0.0,
            "tokens_spent": self.tokens_spent,
            "tokens_saved": self.tokens_saved,
            "usd_spent": dollars(self.tokens_spent),
            "usd_saved": dollars(self.tokens_saved),
        }


class Analysis:
    """The running totals of every line read so far.

    :param upstream: the upstream whose cache keys request bodies are keyed as (an
        :func:`~embedcache.config.upstream_id`; Jina's API by default).
    :param rerank_model: the model of a rerank body that names no Jina reranker (TEI's and
        vLLM's send none), as ``serve --rerank-model`` reranks it.
    """

    def __init__(
        self, upstream: str = DEFAULT_UPSTREAM_ID, rerank_model: str = DEFAULT_RERANK_MODEL
    ) -> None:
        self.upstream = upstream
        self.rerank_model = rerank_model
        self.total = Tally()
        self.by_kind: dict[str, Tally] = {}
        self.log_lines = 0
        self.body_lines = 0
        #: Bodies the proxy would pass through uncached (images, unknown fields).
        self.uncacheable = 0
        self.by_key: dict[str | None, Tally] = {}
        self.by_model: dict[str | None, Tally] = {}
        self.by_settings: dict[tuple[str | None, str | None, int | None], Tally] = {}
        self._seen = DistinctKeys()
        self._repeated = DistinctKeys()
        #: Misses of request bodies whose text is asked for again later: what a cache
        #: prewarmed with these texts would also have served.
        self.repeating_misses = 0
        self.repeating_tokens = 0
        #: Log lines with a request digest, and those whose request had been fetched before
        #: (its misses and tokens: fetched again).
        self.digested_lines = 0
        self.refetched_misses = 0
        self.refetched_tokens = 0
        self._digests = DistinctKeys()

    def add(self, line: object) -> None:
        """Count one decoded JSON line.

        :raises InvalidInputError: it is neither kind of line, saying why.
        """
        if not isinstance(line, dict):
            raise InvalidInputError("not a JSON object")
        if "route" in line and "input" not in line:
            self._add_log(line)
        elif "input" in line:
            self._add_body(line)
        elif "query" in line and ("documents" in line or "texts" in line):
            self._add_rerank_body(line)
        else:
            raise InvalidInputError(
                "neither a request-log line (route, hits, ...) nor a body (input, or query "
                "and documents)"
            )

    def _add_log(self, line: Mapping[str, Any]) -> None:
        for name, kinds in _LOG_FIELDS.items():
            value = line.get(name)
            if name not in line or isinstance(value, bool) or not isinstance(value, kinds):
                raise InvalidInputError(f"request-log line without a valid {name!r}")
        refused = line["status"] != 200
        tally = Tally(
            requests=1,
            texts=line["texts"],
            hits=0 if refused else line["hits"],
            misses=0 if refused else line["misses"],
            tokens_spent=line["tokens_spent"],
            tokens_saved=0 if refused else line["tokens_saved"],
            refused=int(refused),
        )
        self.log_lines += 1
        digest = line.get("digest")
        if isinstance(digest, str) and _DIGEST.fullmatch(digest):
            self.digested_lines += 1
            # 8 bytes of digest in DistinctKeys' 16-byte keys.
            fresh = self._digests.add([bytes.fromhex(digest[2:]) + bytes(8)])[0]
            if not fresh and not refused:
                self.refetched_misses += line["misses"]
                self.refetched_tokens += line["tokens_spent"]
        kind = RERANK if line["route"] in RERANK_ROUTES else EMBEDDINGS
        self._count(tally, kind, line["key"], line["model"], line["task"], line["dimensions"])

    def _add_body(self, body: Mapping[str, Any]) -> None:
        value = body.get("input")
        if isinstance(value, list) and any(isinstance(item, (int, list)) for item in value):
            raise InvalidInputError("input holds token ids, which no Jina model takes")
        texts = _texts(value)
        model = body.get("model")
        output = _output(body)
        if (
            not isinstance(model, str)
            or texts is None
            or output is None
            or not body.keys() <= _KEYED | _UNKEYED
        ):
            # What the proxy forwards as it is and never stores: it costs what it costs.
            self.uncacheable += 1
            self.body_lines += 1
            self.total.requests += 1
            self.by_kind.setdefault(EMBEDDINGS, Tally()).requests += 1
            return
        model, task = _model_and_task(model, body.get("task"))
        try:
            options = resolve_options(
                model,
                task,
                body.get("dimensions"),
                late_chunking=bool(body.get("late_chunking")),
                normalized=body.get("normalized"),
                truncate=body.get("truncate"),
                embedding_type=output,
                return_multivector=bool(body.get("return_multivector")),
                input_type=body.get("input_type"),
            )
            for index, item in enumerate(texts):
                if isinstance(item, Media):
                    options.check_media(item, f"input[{index}]")
            fp = fingerprint(options, self.upstream)
            if options.late_chunking:  # texts only: check_media refused any image
                keys = group_keys(fp, cast("list[str]", texts))
            else:
                keys = text_keys(fp, texts)
        except EmbedcacheError as exc:  # the API would refuse it: no cache saves anything
            raise InvalidInputError(f"a body the API would refuse: {exc}") from None
        tokens = [estimate_input(text) for text in texts]
        self._count(
            self._tally(keys, tokens), EMBEDDINGS, None, model, options.task, options.dimensions
        )

    def _add_rerank_body(self, body: Mapping[str, Any]) -> None:
        model = body.get("model")
        if not names_jina_reranker(model):
            model = self.rerank_model  # as the proxy reads TEI's, vLLM's and Cohere's
        assert isinstance(model, str)
        given = body.get("documents", body.get("texts"))
        try:
            query = _rerank_item(body.get("query"), "query")
            if isinstance(given, list):
                given = [_rerank_item(item, f"documents[{i}]") for i, item in enumerate(given)]
            documents = check_rerank(model, query, given)
            asked = cast("Input", query)  # check_rerank refused anything else
            keys = rerank_keys(rerank_fingerprint(model, self.upstream), model, asked, documents)
        except EmbedcacheError as exc:  # the API would refuse it: no cache saves anything
            raise InvalidInputError(f"a rerank body the API would refuse: {exc}") from None
        cost = estimate_input(asked)
        tokens = [cost + estimate_input(document) for document in documents]
        self._count(self._tally(keys, tokens), RERANK, None, model, None, None)

    def _tally(self, keys: list[bytes], tokens: list[int]) -> Tally:
        """One body's counts, its inputs' ``keys`` (with their ``tokens``) looked up among
        every key seen so far, and added to them."""
        tally = Tally(requests=1, texts=len(keys))
        # The proxy fetches a text once per request however often it is listed: a repeat
        # within one request is served too (a body's hits are its texts not fetched).
        unique = list(dict.fromkeys(keys))
        fresh = dict(zip(unique, self._seen.add(unique).tolist(), strict=True))
        again = [key for key in unique if not fresh[key]]
        # Seen before, and for the first time again: its earlier fetch is a miss that repeats.
        first_repeat = dict(zip(again, self._repeated.add(again).tolist(), strict=True))
        for key, cost in zip(keys, tokens, strict=True):
            if fresh.pop(key, False):
                tally.misses += 1
                tally.tokens_spent += cost
                continue
            if first_repeat.pop(key, False):
                self.repeating_misses += 1
                self.repeating_tokens += cost
            tally.hits += 1
            tally.tokens_saved += cost
        self.body_lines += 1
        return tally

    def _count(
        self,
        tally: Tally,
        kind: str,
        key: str | None,
        model: str | None,
        task: str | None,
        dims: int | None,
    ) -> None:
        self.total.add(tally)
        self.by_kind.setdefault(kind, Tally()).add(tally)
        self.by_key.setdefault(key, Tally()).add(tally)
        self.by_model.setdefault(model, Tally()).add(tally)
        self.by_settings.setdefault((model, task, dims), Tally()).add(tally)

    def report(self, dollars: Dollars) -> dict[str, Any]:
        """Every figure, as ``analyze --json`` prints it; ``dollars(tokens)`` prices tokens
        (the CLI's, at ``--price-per-million``)."""
        top = sorted(
            self.by_settings.items(),
            key=lambda item: (-item[1].hits, -item[1].tokens_saved, str(item[0])),
        )[:TOP_SETTINGS]
        could = None
        if self.body_lines or self.digested_lines or not self.log_lines:
            tokens = self.repeating_tokens + self.refetched_tokens
            could = {
                "texts": self.repeating_misses + self.refetched_misses,
                "tokens": tokens,
                "usd": dollars(tokens),
                # Texts fetched once and asked for again later (bodies: a prewarm would
                # save them), and texts fetched again (logs: the cache did not keep them).
                "asked_again": {"texts": self.repeating_misses, "tokens": self.repeating_tokens},
                "fetched_again": {
                    "texts": self.refetched_misses,
                    "tokens": self.refetched_tokens,
                },
            }
        return {
            **self.total.summary(dollars),
            "log_lines": self.log_lines,
            "body_lines": self.body_lines,
            "uncacheable": self.uncacheable,
            # A log without digests (an older one) cannot tell what repeats: None.
            "could_still_save": could,
            "by_kind": [
                {"kind": kind, **self.by_kind[kind].summary(dollars)}
                for kind in (EMBEDDINGS, RERANK)
                if kind in self.by_kind
            ],
            "top_settings": [
                {"model": m, "task": t, "dimensions": d, **tally.summary(dollars)}
                for (m, t, d), tally in top
            ],
            "by_key": [
                {"key": key, **tally.summary(dollars)} for key, tally in _by_saving(self.by_key)
            ],
            "by_model": [
                {"model": model, **tally.summary(dollars)}
                for model, tally in _by_saving(self.by_model)
            ],
        }


def _by_saving(groups: Mapping[Any, Tally]) -> list[tuple[Any, Tally]]:
    return sorted(groups.items(), key=lambda item: (-item[1].tokens_saved, str(item[0])))


def _texts(value: object) -> list[Input] | None:
    """The inputs of a body's ``input`` (a string, strings, ``{"text": ...}`` objects,
    images and PDFs in any of the API's forms), or ``None`` when it holds anything else
    (token ids), which the proxy forwards.

    :raises InvalidInputError: an image or PDF the API would refuse (bad base64).
    """
    items = value if isinstance(value, list) else [value]
    texts: list[Input] = []
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.keys() == {"text"}:
            item = item["text"]
        if isinstance(item, dict) and len(item) == 1 and item.keys() <= _MEDIA_KEYS:
            texts.append(parse_item(item, f"input[{index}]"))
            continue
        if not isinstance(item, str):
            return None
        texts.append(item)
    return texts or None


def _rerank_item(item: object, where: str) -> object:
    """A query or document as the reranker takes it: a string as it is, an object in the
    API's forms (``{"text"}``, ``{"image"}``) parsed; anything else for check_rerank to name."""
    return parse_item(item, where) if isinstance(item, dict) else item


def _output(body: Mapping[str, Any]) -> str | None:
    """The output a body asks for (``float`` for float and base64: one entry), or ``None``
    when the proxy forwards it uncached (a list of types, fields that disagree)."""
    given = [body[name] for name in sorted(_UNKEYED - {"user"}) if body.get(name)]
    if not given:
        return "float"
    value = given[0]
    if not isinstance(value, str) or value not in _OUTPUTS or any(v != value for v in given):
        return None
    return "float" if value == "base64" else value


def _model_and_task(model: str, task: object) -> tuple[str, Any]:
    """``jina-embeddings-v3:retrieval.query`` is that model with that task, as the proxy
    reads it (for clients that let a user set nothing but the model)."""
    base, colon, suffix = model.rpartition(":")
    if not colon or spec_for(base) is None or task not in (None, suffix):
        return model, task
    return base, suffix
