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
  ``key = sha256(fingerprint || media || identity)[:16]``, where the identity is its kind and
  the SHA-256 of its bytes, or its kind and URL. A cryptographic hash over the full digest:
  a key made to collide with another caller's image would poison a shared cache, and the
  kind in the key keeps a text and an image apart.
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
from .models import RequestOptions

__all__ = ["Fingerprint", "encode_text", "fingerprint", "group_keys", "media_key", "text_keys"]

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


def fingerprint(options: RequestOptions, upstream: str = DEFAULT_UPSTREAM_ID) -> Fingerprint:
    """Fingerprint the request fields of ``options`` under the current key version, as
    answered by ``upstream`` (an :func:`~embedcache.config.upstream_id`)."""
    described: dict[str, object] = {"key_version": KEY_VERSION, "request": options.body_fields()}
    if upstream != DEFAULT_UPSTREAM_ID:
        described["upstream"] = upstream
    canonical = json.dumps(
        described,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return Fingerprint.from_canonical(canonical)


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
    """The key of an image's or a PDF's entry (see the module's docstring)."""
    return hashlib.sha256(fp.prefix + b"media\x00" + media.identity).digest()[:16]


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
