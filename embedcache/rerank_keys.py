"""Cache keys of rerank scores: a fingerprint of the model, then one 16-byte key per score.

The fingerprint is :class:`~embedcache.cache_keys.Fingerprint`'s, over
``{"key_version", "output": "score", "request": {"model"}}`` (plus ``"upstream"`` unless it
is Jina's API, as for embeddings): ``top_n`` and ``return_documents`` only shape the answer,
never a score, so they are not in it; ``"output"`` keeps a score's fingerprint apart from
any embedding request's.

* A pointwise model (:data:`~embedcache.models.RERANK_POINTWISE_MODELS`): one entry per
  (query, document), ``key = xxh3_128(fingerprint || query || document)``, each part
  length-prefixed, so the same pair hits in any candidate list.
* A listwise model (jina-reranker-v3, and any model not known to be pointwise): a score
  depends on the whole ordered list, so ``key = xxh3_128(fingerprint || list hash ||
  position)``, the list hash covering the query and every document in order (as
  :func:`~embedcache.cache_keys.group_keys` does for late chunking).
* With an image (:class:`~embedcache.inputs.Media`, jina-reranker-m0) among the parts, the
  image enters as its kind and the SHA-256 of its bytes or its URL (its ``identity``), and
  the key is a truncated SHA-256 under the fingerprint with ``"input": "image"``
  (:meth:`~embedcache.cache_keys.Fingerprint.for_input`, the one its entry is stored under:
  :func:`stored_under`), as :func:`~embedcache.cache_keys.media_key`'s: a pair made to
  collide with another caller's would poison a shared cache. Each part is tagged text or
  media, so a text and an image never share a key.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import xxhash

from .cache_keys import Fingerprint, KeyFingerprints, MixedFingerprints, fingerprint_of
from .config import DEFAULT_UPSTREAM_ID
from .errors import InvalidInputError
from .inputs import Input, Media
from .models import is_listwise

__all__ = ["list_keys", "pair_keys", "rerank_fingerprint", "rerank_keys", "stored_under"]

_LENGTH = struct.Struct("<Q")
_POSITION = struct.Struct("<I")


def rerank_fingerprint(model: str, upstream: str = DEFAULT_UPSTREAM_ID) -> Fingerprint:
    """The fingerprint of ``model``'s scores as answered by ``upstream`` (an
    :func:`~embedcache.config.upstream_id`)."""
    return fingerprint_of({"model": model}, upstream, output="score")


def rerank_keys(
    fp: Fingerprint, model: str, query: Input, documents: Sequence[Input]
) -> list[bytes]:
    """One key per document, in order: per pair for a pointwise ``model``, per position of
    the whole list for a listwise one (:func:`~embedcache.models.is_listwise`)."""
    if is_listwise(model):
        return list_keys(fp, query, documents)
    return pair_keys(fp, query, documents)


def pair_keys(fp: Fingerprint, query: Input, documents: Sequence[Input]) -> list[bytes]:
    """The key of each (query, document) pair's score."""
    asked = _part(query, "query")
    media = isinstance(query, Media)
    text_head, image_head = fp.prefix + asked, fp.for_input("image").prefix + asked
    keys = []
    for index, document in enumerate(documents):
        part = _part(document, f"documents[{index}]")
        if media or isinstance(document, Media):
            keys.append(hashlib.sha256(image_head + part).digest()[:16])
        else:
            keys.append(xxhash.xxh3_128_digest(text_head + part))
    return keys


def list_keys(fp: Fingerprint, query: Input, documents: Sequence[Input]) -> list[bytes]:
    """The key of each position's score in the whole ordered list (another list, or the
    same document at another position, is another key)."""
    parts = [_part(query, "query")]
    parts += [_part(document, f"documents[{i}]") for i, document in enumerate(documents)]
    whole = b"".join(parts)
    media = isinstance(query, Media) or any(isinstance(doc, Media) for doc in documents)
    if media:
        base = fp.for_input("image").prefix + hashlib.sha256(whole).digest()
        return [
            hashlib.sha256(base + _POSITION.pack(i)).digest()[:16] for i in range(len(documents))
        ]
    base = fp.prefix + xxhash.xxh3_128_digest(whole)
    return [xxhash.xxh3_128_digest(base + _POSITION.pack(i)) for i in range(len(documents))]


def _part(item: Input, where: str) -> bytes:
    """``item`` as it enters a key: tagged text or media, length-prefixed.

    :raises InvalidInputError: a text that is not valid Unicode, naming ``where``.
    """
    if isinstance(item, Media):
        return b"m" + _LENGTH.pack(len(item.identity)) + item.identity
    try:
        data = item.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{where} is not valid Unicode ({exc.reason} at character {exc.start})"
        ) from None
    return b"t" + _LENGTH.pack(len(data)) + data


def stored_under(
    fp: Fingerprint,
    query: Input,
    documents: Sequence[Input],
    keys: list[bytes],
    listwise: bool,
) -> KeyFingerprints:
    """What each score's entry (of ``keys``, in document order) is stored under: ``fp``,
    or, for a score an image took part in (the query, its document, or any document of a
    listwise list), ``fp`` with ``"input": "image"``, the fingerprint its key was made
    under, so ``ls`` and ``stats`` tell them apart as they do embeddings."""
    asked = isinstance(query, Media)
    images = [asked or isinstance(document, Media) for document in documents]
    if not any(images):
        return fp
    image = fp.for_input("image")
    if listwise or all(images):
        return image
    return MixedFingerprints(
        fp, {key: image for key, took in zip(keys, images, strict=True) if took}
    )
