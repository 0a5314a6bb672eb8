"""Images as the emulator sees them: the format by its magic bytes, the size from its header,
the tokens its tiles cost, and small valid PNGs for tests.

No image library is needed: the emulator never looks at pixels, only at the few header bytes
that give the width and height (PNG ``IHDR``, JPEG ``SOFn``, GIF's logical screen, WEBP's
``VP8 ``/``VP8L``/``VP8X`` chunk). Usage follows the reference (§3.1): jina-clip-v2 and
jina-embeddings-v4 cost 4,000 tokens per 512x512 tile, jina-clip-v1 1,000 per 224x224 tile,
and a partial tile counts as a full one (v4 like clip-v2 is the lead's choice: the sources
give no figure for it).

>>> data = png(600, 100, seed=1)
>>> image_size(data)
(600, 100)
>>> image_tokens(600, 100, "jina-clip-v2")  # 2 x 1 tiles of 512 px
8000
>>> image_tokens(600, 100, "jina-clip-v1")  # 3 x 1 tiles of 224 px
3000
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = ["IMAGE_FORMATS", "TILES", "image_format", "image_size", "image_tokens", "png"]

#: The formats the emulator recognises, by their magic bytes.
IMAGE_FORMATS = ("png", "jpeg", "gif", "webp")
#: Per model taking images: (tile side in pixels, tokens per tile).
TILES: dict[str, tuple[int, int]] = {
    "jina-clip-v1": (224, 1000),
    "jina-clip-v2": (512, 4000),
    "jina-embeddings-v4": (512, 4000),
}

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) share the
# range but are not frames.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # markers without a length


def image_format(data: bytes) -> str | None:
    """``"png"``, ``"jpeg"``, ``"gif"`` or ``"webp"`` by the magic bytes, else ``None``."""
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def image_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` read from the image's header.

    :raises ValueError: not one of :data:`IMAGE_FORMATS`, a header cut short, or a zero
        width or height.
    """
    kind = image_format(data)
    if kind is None:
        raise ValueError("not a PNG, JPEG, GIF or WEBP image")
    try:
        if kind == "png":
            size = _png_size(data)
        elif kind == "jpeg":
            size = _jpeg_size(data)
        elif kind == "gif":
            size = struct.unpack("<HH", data[6:10])
        else:
            size = _webp_size(data)
    except (struct.error, IndexError):
        size = None
    if size is None:
        raise ValueError(f"a {kind.upper()} image whose header gives no size")
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1:
        raise ValueError(f"a {kind.upper()} image of {width}x{height} pixels")
    return width, height


def image_tokens(width: int, height: int, model: str) -> int:
    """Usage tokens of one ``width`` x ``height`` image on ``model``: its tiles (partial
    tiles count as full) times the model's tokens per tile.

    :raises KeyError: a model that takes no images (not in :data:`TILES`).
    """
    side, per_tile = TILES[model]
    return -(-width // side) * -(-height // side) * per_tile


def png(width: int, height: int, seed: int = 0) -> bytes:
    """A valid RGB PNG of ``width`` x ``height`` pixels, the same bytes for the same
    arguments, different ones for another ``seed``.

    The first row is random (from ``seed``) and every later row repeats it (PNG's ``Up``
    filter makes those rows all zeros, which compress to almost nothing), so even a
    4096x4096 image is a few kilobytes: tests can send images of many tiles cheaply.

    :raises ValueError: a width or height below 1.
    """
    if width < 1 or height < 1:
        raise ValueError(f"a PNG needs at least 1x1 pixels, got {width}x{height}")
    row = np.random.default_rng(seed).integers(0, 256, width * 3, dtype=np.uint8).tobytes()
    same_as_above = b"\x02" + bytes(width * 3)  # filter 2 (Up): every byte as the row above
    raw = b"\x00" + row + same_as_above * (height - 1)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        _PNG_MAGIC
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    at = 2  # after SOI
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker in _JPEG_STANDALONE:
            at += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before
            return None
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return int(width), int(height)
        at += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: a frame tag, then 0x9d 0x01 0x2a, then 14-bit sizes
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature 0x2f, then 14 bits each of size - 1
        if data[20] != 0x2F:
            return None
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24 bits each of size - 1 after 4 bytes of flags
        if len(data) < 30:
            return None
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None
