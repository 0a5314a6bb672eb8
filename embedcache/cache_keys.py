"""Cache keys: a canonical fingerprint of the request fields, then one 16-byte key per vector.

The fingerprint is derived from :meth:`RequestOptions.body_fields`, the very dict that is
sent upstream, so a field that reaches the API cannot be missing from the key. Absent fields
are absent from the fingerprint, which keeps "not sent" apart from any explicit value.

The upstream that answers is part of the fingerprint too (:func:`~embedcache.config.upstream_id`),
so a vector from the emulator, a staging server or a self-hosted model is never a hit for
another upstream. Jina's API is the exception that keeps old caches whole: its fingerprint
has no upstream field, exactly as every fingerprint had before upstreams were recorded, so
entries written then are read as Jina's.

* Ordinary request: ``key = xxh3_128(fingerprint || utf-8 text)``. The fingerprint is JSON
  ending in a NUL byte, which neither JSON nor the separator can contain elsewhere, so the
  boundary between fingerprint and text is unambiguous.
* An image or a PDF (:class:`~embedcache.inputs.Media`):
  ``key = sha256(media fingerprint || identity)[:16]``, where the media fingerprint is the
  request's with ``"input": "image"`` (or ``"pdf"``) added (:meth:`Fingerprint.for_input`),
  and the identity is its kind and the SHA-256 of its bytes, or its kind and URL. A
  cryptographic hash over the full digest: a key made to collide with another caller's
  image would poison a shared cache. The entry is stored under that fingerprint, so
  ``ls``, ``stats`` and ``export`` tell an image's entry from a text's, and the kind in
  the key keeps a text and an image apart.
* Late chunking: every vector depends on the whole ordered input list, so
  ``key = xxh3_128(fingerprint || group hash || position)``, where the group hash covers the
  length-prefixed UTF-8 bytes of every text in order.
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import xxhash

from .config import DEFAULT_UPSTREAM_ID, KEY_VERSION
from .errors import InvalidInputError
from .inputs import Input, Media
from .models import UPSTREAM_EMBEDDING_TYPE, RequestOptions, spec_for

__all__ = [
    "Fingerprint",
    "KeyFingerprints",
    "MixedFingerprints",
    "call_fingerprints",
    "canonical_json",
    "encode_text",
    "fingerprint",
    "fingerprint_of",
    "group_keys",
    "media_key",
    "text_keys",
]

_LENGTH = struct.Struct("<Q")
_POSITION = struct.Struct("<I")


@dataclass(frozen=True)
class Fingerprint:
    """The canonical encoding of everything but the input that shapes a vector.

    :ivar canonical: compact, key-sorted JSON of the key version, the request fields and
        (unless it is Jina's API) the upstream.
    :ivar prefix: ``canonical`` as UTF-8 plus a NUL separator; hashed in front of every text.
    :ivar id: 64-bit hash of ``canonical``; stored with each entry so entries can be grouped
        by request settings without the text.
    """

    canonical: str
    prefix: bytes
    id: int

    @classmethod
    def from_canonical(cls, canonical: str) -> Fingerprint:
        """The fingerprint whose canonical JSON is ``canonical`` (as stored next to entries,
        so entries copied between caches keep their settings).

        :raises InvalidInputError: ``canonical`` is not ASCII.
        """
        try:
            raw = canonical.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidInputError("a canonical fingerprint is ASCII JSON") from None
        return cls(canonical, raw + b"\x00", xxhash.xxh3_64_intdigest(raw))

    @property
    def fields(self) -> dict[str, object]:
        """The request fields this fingerprint covers."""
        fields: dict[str, object] = json.loads(self.canonical)["request"]
        return fields

    @functools.cached_property
    def upstream(self) -> str:
        """The upstream whose answers these entries are (Jina's API when none is recorded)."""
        return str(json.loads(self.canonical).get("upstream", DEFAULT_UPSTREAM_ID))

    @functools.cached_property
    def input(self) -> str:
        """What its entries were made from: ``"text"`` (none recorded), ``"image"``,
        ``"pdf"``."""
        return str(json.loads(self.canonical).get("input", "text"))

    @functools.cached_property
    def output(self) -> str:
        """What each of its entries holds: ``"float"`` (one vector), ``"binary"`` or
        ``"ubinary"`` (packed bits), ``"multi-vector"`` (a row per token; of packed bits,
        ``"multi-vector-binary"``/``"-ubinary"``), or another kind recorded as
        ``"output"`` (a reranker's ``"score"``): ``export --kind``'s words."""
        described = json.loads(self.canonical)
        if "output" in described:
            return str(described["output"])
        fields = described.get("request", {})
        kind = str(fields.get("embedding_type", UPSTREAM_EMBEDDING_TYPE))
        bits = "" if kind == UPSTREAM_EMBEDDING_TYPE else kind
        spec = spec_for(str(fields.get("model", "")))
        if fields.get("return_multivector") or (spec is not None and spec.multivector == "only"):
            return f"multi-vector-{bits}" if bits else "multi-vector"
        return bits or "float"

    def for_input(self, kind: str) -> Fingerprint:
        """This fingerprint for entries made from an ``"image"`` or a ``"pdf"``: the same
        request fields, with the input's kind recorded beside them."""
        made = self._for_input.get(kind)
        if made is None:
            described = json.loads(self.canonical)
            described["input"] = kind
            made = self._for_input[kind] = Fingerprint.from_canonical(canonical_json(described))
        return made

    @functools.cached_property
    def _for_input(self) -> dict[str, Fingerprint]:
        return {}


@dataclass(frozen=True)
class MixedFingerprints:
    """The fingerprints of one call's keys when its inputs are of more than one kind
    (texts with images or PDFs): each media key's own (:meth:`Fingerprint.for_input`), the
    request's for the rest.

    :ivar text: the request's fingerprint (its texts' entries).
    :ivar media: each image's or PDF's key, and the fingerprint its entry is stored under.
    """

    text: Fingerprint
    media: dict[bytes, Fingerprint]

    def groups(self, keys: Sequence[bytes]) -> list[tuple[Fingerprint, list[int]]]:
        """The positions of ``keys`` under each fingerprint, in first-seen order."""
        groups: dict[int, tuple[Fingerprint, list[int]]] = {}
        for i, key in enumerate(keys):
            fp = self.media.get(key, self.text)
            groups.setdefault(fp.id, (fp, []))[1].append(i)
        return list(groups.values())


#: What the storage tiers are told entries were made under: one fingerprint for all, or
#: one per key.
KeyFingerprints = Fingerprint | MixedFingerprints


def fingerprint(options: RequestOptions, upstream: str = DEFAULT_UPSTREAM_ID) -> Fingerprint:
    """Fingerprint the request fields of ``options`` under the current key version, as
    answered by ``upstream`` (an :func:`~embedcache.config.upstream_id`)."""
    return fingerprint_of(options.body_fields(), upstream)


def fingerprint_of(
    request: dict[str, object], upstream: str = DEFAULT_UPSTREAM_ID, **described: str
) -> Fingerprint:
    """The fingerprint of entries made by ``request`` (the fields that shape them) under
    the current key version, as answered by ``upstream`` (recorded unless it is Jina's
    API), with ``described``'s top-level fields (a reranker's ``output="score"``)."""
    whole: dict[str, object] = {"key_version": KEY_VERSION, "request": request, **described}
    if upstream != DEFAULT_UPSTREAM_ID:
        whole["upstream"] = upstream
    return Fingerprint.from_canonical(canonical_json(whole))


def canonical_json(described: dict[str, object]) -> str:
    """Compact, key-sorted, ASCII JSON: one text for one meaning."""
    return json.dumps(described, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def call_fingerprints(
    fp: Fingerprint, texts: Sequence[Input], keys: list[bytes]
) -> KeyFingerprints:
    """What each of a call's ``keys`` (of ``texts``, in order) is stored under: ``fp``
    itself when every input is a text."""
    if set(map(type, texts)) <= {str}:  # the common case, at C speed
        return fp
    media = {
        key: fp.for_input(item.kind)
        for key, item in zip(keys, texts, strict=True)
        if isinstance(item, Media)
    }
    return MixedFingerprints(fp, media) if media else fp


def encode_text(text: str, index: int) -> bytes:
    """UTF-8 bytes of ``text``.

    :raises InvalidInputError: for strings that are not valid Unicode (lone surrogates).
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"texts[{index}] is not valid Unicode ({exc.reason} at character {exc.start})"
        ) from None


def text_keys(fp: Fingerprint, texts: Sequence[Input]) -> list[bytes]:
    """One key per input (a text, or an image or PDF) for a request without late
    chunking."""
    prefix = fp.prefix
    digest = xxhash.xxh3_128_digest
    try:
        return [digest(prefix + text.encode("utf-8")) for text in texts]  # type: ignore[union-attr]
    except AttributeError:  # an image or a PDF among the texts: each keyed as it is
        return [
            media_key(fp, item) if isinstance(item, Media) else text_keys(fp, [item])[0]
            for item in texts
        ]
    except UnicodeEncodeError:
        # Slow path only to name the offending text.
        for index, text in enumerate(texts):
            if isinstance(text, str):
                encode_text(text, index)
        raise


def media_key(fp: Fingerprint, media: Media) -> bytes:
    """The key of an image's or a PDF's entry, under the request's fingerprint ``fp`` (see
    the module's docstring)."""
    return hashlib.sha256(fp.for_input(media.kind).prefix + media.identity).digest()[:16]


def group_keys(fp: Fingerprint, texts: Sequence[str]) -> list[bytes]:
    """One key per position of a late-chunking group: the same text at another position,
    or in another group, gets another key."""
    group = xxhash.xxh3_128()
    for index, text in enumerate(texts):
        data = encode_text(text, index)
        group.update(_LENGTH.pack(len(data)))
        group.update(data)
    base = fp.prefix + group.digest()
    return [xxhash.xxh3_128_digest(base + _POSITION.pack(i)) for i in range(len(texts))]
