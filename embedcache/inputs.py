"""Inputs that are not text: an image or a PDF, given by its bytes or by a URL.

Jina's multimodal models (jina-clip-v1, jina-clip-v2, jina-embeddings-v4; PDFs on v4) take
``{"image": URL or base64}`` and ``{"pdf": URL or base64}`` items, and older clients still send
``{"url": URL}`` and ``{"bytes": base64}`` (reference §2.3). Every form becomes one
:class:`Media`, which is what the caching core keys, estimates and sends:

* by **content** (base64, bytes, a file): keyed by the SHA-256 of the decoded bytes, so the
  same image sent as base64 in any spelling, as bytes or read from a file is one entry; sent
  as the base64 of those bytes;
* by **URL**: keyed by the URL as written, and sent as it is: the API fetches it, so new
  content at an old URL is not seen (fetch it yourself and pass the bytes to key by content).

A text and an image never share an entry: their keys are made differently
(:func:`~embedcache.cache_keys.input_keys`), with the kind of input in a media key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import os
import re
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .config import redact_url
from .errors import InvalidInputError
from .tokens import estimate_tokens

__all__ = [
    "IMAGE_TILE_PIXELS",
    "IMAGE_TILE_TOKENS",
    "MAX_MEDIA_BYTES",
    "MEDIA_KINDS",
    "Input",
    "Media",
    "decode_base64",
    "estimate_input",
    "image_size",
    "load_media",
    "media_bytes",
    "media_url",
    "parse_item",
]

#: The kinds of non-text input, as the API's item keys name them.
MEDIA_KINDS = ("image", "pdf")
#: The API's size limit for one image or PDF (reference §2.1: "up to 8MB").
MAX_MEDIA_BYTES = 8 * 1024 * 1024
#: How an image's tokens are estimated before the API says: tiles of this many pixels a
#: side, each this many tokens, a partial tile counting whole (jina-clip-v2's rule; the API's
#: ``usage`` is what is recorded).
IMAGE_TILE_PIXELS = 512
IMAGE_TILE_TOKENS = 4000
# A PDF's estimate before the API says: one image's worth (its pages are not counted here).
_PDF_TOKENS = IMAGE_TILE_TOKENS
# A URL's scheme (a path never starts with one).
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# The older item keys of an image, still sent by LangChain and LlamaIndex.
_LEGACY_IMAGE_KEYS = {"url": True, "bytes": False}  # key -> holds a URL


@dataclass(frozen=True, eq=False)
class Media:
    """An image or a PDF: ``data`` (its bytes) or ``url``, exactly one.

    :ivar kind: ``"image"`` or ``"pdf"``.
    :ivar data: the decoded bytes, when given by content.
    :ivar url: the ``http(s)`` URL, when given by URL.
    """

    kind: str
    data: bytes | None = None
    url: str | None = None
    _sent: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if (self.data is None) == (self.url is None):
            raise ValueError("a Media holds either data or a url")

    def __repr__(self) -> str:
        # A URL's credentials (user:password@, token=) are never shown.
        held = f"{len(self.data)} bytes" if self.data is not None else redact_url(str(self.url))
        return f"Media({self.kind}, {held})"

    @cached_property
    def identity(self) -> bytes:
        """What the cache key covers: the kind, and the SHA-256 of the bytes or the URL."""
        if self.data is not None:
            return b"%s\x00sha256\x00%s" % (self.kind.encode(), hashlib.sha256(self.data).digest())
        assert self.url is not None
        return b"%s\x00url\x00%s" % (self.kind.encode(), self.url.encode("utf-8"))

    @property
    def noun(self) -> str:
        """``an image`` or ``a PDF``, for messages."""
        return "an image" if self.kind == "image" else "a PDF"

    @property
    def tokens(self) -> int:
        """The tokens it is estimated to cost (tiles of an image whose size can be read
        from its header; one tile otherwise)."""
        if self.kind != "image":
            return _PDF_TOKENS
        size = image_size(self.data) if self.data is not None else None
        if size is None:
            return IMAGE_TILE_TOKENS
        tiles = math.ceil(size[0] / IMAGE_TILE_PIXELS) * math.ceil(size[1] / IMAGE_TILE_PIXELS)
        return max(1, tiles) * IMAGE_TILE_TOKENS

    def wire(self) -> dict[str, str]:
        """The item as the request body sends it: ``{"image": URL or base64}``."""
        if self.url is not None:
            return {self.kind: self.url}
        if not self._sent:  # encoded once however many batches retry it
            assert self.data is not None
            self._sent.append(base64.b64encode(self.data).decode("ascii"))
        return {self.kind: self._sent[0]}


#: One input of a request: a text, or an image or PDF.
Input = str | Media


def load_media(value: object, where: str, kind: str = "image") -> Media:
    """An image (or PDF) as the library takes it: ``bytes``; an ``http(s)`` URL (sent as
    it is: the API fetches it); a ``data:`` URI; or a file's path (``str`` or
    ``os.PathLike``), read now.

    :raises InvalidInputError: naming ``where`` (``images[2]``) and what is wrong.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return media_bytes(kind, bytes(value), where)
    if isinstance(value, str) and _SCHEME.match(value):
        return media_url(kind, value, where)  # http(s), or refused naming the schemes taken
    if isinstance(value, str) and value.startswith("data:"):
        return media_bytes(kind, decode_base64(value, where), where)
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        try:
            size = path.stat().st_size
            data = path.read_bytes() if size <= MAX_MEDIA_BYTES else b""
        except OSError as exc:
            raise InvalidInputError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
        if size > MAX_MEDIA_BYTES:  # not read: it would be refused anyway
            raise InvalidInputError(
                f"{where} ({path}): {size:,} bytes; the API takes at most {MAX_MEDIA_BYTES:,}"
            )
        return media_bytes(kind, data, f"{where} ({path})")
    raise InvalidInputError(
        f"{where} must be bytes, a file path, or an http(s) or data: URL, got "
        f"{type(value).__name__}"
    )


def estimate_input(item: Input) -> int:
    """An input's estimated tokens: a text's (:func:`~embedcache.tokens.estimate_tokens`),
    or an image's or PDF's (:attr:`Media.tokens`)."""
    return estimate_tokens(item) if isinstance(item, str) else item.tokens


def parse_item(value: object, where: str) -> Input:
    """One ``input`` item in any of the API's forms: a string or ``{"text": s}``;
    ``{"image": URL or base64}`` or the older ``{"url": URL}`` / ``{"bytes": base64}``;
    ``{"pdf": URL or base64}``. ``where`` names it in errors (``input[3]``).

    :raises InvalidInputError: an item of no known form, base64 that does not decode, a URL
        that is not ``http(s)``, or bytes over :data:`MAX_MEDIA_BYTES`.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((name, content),) = value.items()
        if name == "text" and isinstance(content, str):
            return content
        if name in MEDIA_KINDS or name in _LEGACY_IMAGE_KEYS:
            if not isinstance(content, str) or not content:
                raise InvalidInputError(f"{where}.{name} must be a non-empty string")
            kind = name if name in MEDIA_KINDS else "image"
            holds_url = _LEGACY_IMAGE_KEYS.get(name)
            if holds_url is None:  # image/pdf: a URL or base64, told apart by the scheme
                holds_url = bool(_SCHEME.match(content))
            if holds_url:
                return media_url(kind, content, f"{where}.{name}")
            return media_bytes(kind, decode_base64(content, f"{where}.{name}"), f"{where}.{name}")
    raise InvalidInputError(
        f"{where} must be a string or an object with one of text, image, pdf (or the older "
        "url, bytes)"
    )


def media_url(kind: str, url: str, where: str) -> Media:
    """A :class:`Media` by URL, which must be ``http://`` or ``https://``."""
    if not _looks_like_url(url):
        raise InvalidInputError(
            f"{where}: only http:// and https:// URLs are taken, got {redact_url(url)!r:.60}"
        )
    return Media(kind, url=url)


def media_bytes(kind: str, data: bytes, where: str) -> Media:
    """A :class:`Media` by content, within :data:`MAX_MEDIA_BYTES` and not empty."""
    if not data:
        raise InvalidInputError(f"{where}: the {kind} is empty")
    if len(data) > MAX_MEDIA_BYTES:
        raise InvalidInputError(
            f"{where}: the {kind} is {len(data):,} bytes; the API takes at most {MAX_MEDIA_BYTES:,}"
        )
    return Media(kind, data=data)


def decode_base64(text: str, where: str) -> bytes:
    """The bytes of ``text``, standard base64 (line breaks and a ``data:`` URI prefix
    allowed), checked: a typo is caught here, not paid for."""
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise InvalidInputError(f"{where}: a data: URI must be base64 (data:...;base64,...)")
    # The API decodes base64 with its line breaks; so do we (after the size bound).
    if len(text) > MAX_MEDIA_BYTES * 4 // 3 + 8192:
        raise InvalidInputError(f"{where}: over {MAX_MEDIA_BYTES:,} bytes, the API's limit")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{where}: not a URL and not valid base64") from None
    return data


def image_size(data: bytes) -> tuple[int, int] | None:
    """An image's width and height from its header (PNG, JPEG, GIF, WEBP), or ``None``
    when it is none of them or the header cannot be read."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            width, height = struct.unpack(">II", data[16:24])
            return width, height
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
            return width, height
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
    except struct.error:
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 < len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            at += 2
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        # Start-of-frame markers (not DHT, JPG, DAC) hold height then width.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _looks_like_url(text: str) -> bool:
    head = text[:8].lower()
    return head.startswith("http://") or head.startswith("https://")
