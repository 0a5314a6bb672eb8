"""Small images for tests: valid PNGs made in memory, and their base64."""

from __future__ import annotations

import base64
import struct
import zlib


def png(width: int, height: int, shade: int = 0) -> bytes:
    """A small valid PNG of one colour."""
    row = b"\x00" + bytes([shade, 255 - shade, 128]) * width
    raw = zlib.compress(row * height)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
