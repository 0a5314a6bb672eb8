"""The API's success answers, decoded: rows ordered by ``index`` and checked, the tokens
charged, and what float answers show of the upstream's float style (see
:mod:`~embedcache.upstream.float_style`). Anything off is a :class:`ResponseFormatError`: a bad
answer is never cached.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from ..errors import ResponseFormatError
from ..models import RequestOptions
from .float_style import FloatStyle, classify_floats
from .protocol import UpstreamResult

__all__ = ["answer_items", "learn_from", "no_usage", "parse", "total_tokens", "usage"]


def usage(response: httpx.Response) -> int:
    """The tokens a forwarded success says it charged (0 when it does not say)."""
    try:
        payload: Any = response.json()
    except ValueError:
        return 0
    return total_tokens(payload)


def no_usage(response: httpx.Response) -> int:
    """0, without reading the answer: for a forwarded answer whose usage nothing needs."""
    return 0


def total_tokens(payload: object) -> int:
    """``usage.total_tokens`` of a decoded answer, or 0 when it has none that makes sense."""
    spent = payload.get("usage") if isinstance(payload, dict) else None
    tokens = spent.get("total_tokens") if isinstance(spent, dict) else None
    return tokens if isinstance(tokens, int) and tokens >= 0 else 0


def learn_from(response: httpx.Response, floats: FloatStyle) -> None:
    """Learn the float style from a passthrough answer's float embeddings, if it has any
    (lists of JSON floats, alone or as the ``float`` of several encodings); an answer that
    does not tell, or whose floats are not float32 values, teaches nothing."""
    try:
        payload: Any = response.json()
    except ValueError:
        return
    data = payload.get("data") if isinstance(payload, dict) else None
    rows: list[NDArray[np.float64]] = []
    for item in data if isinstance(data, list) else ():
        value = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(value, dict):
            value = value.get("float")
        # Only JSON floats: binary and ubinary embeddings are lists of integers.
        if isinstance(value, list) and value and all(isinstance(x, float) for x in value):
            rows.append(np.asarray(value, dtype=np.float64))
    try:
        style = classify_floats(rows)
    except ResponseFormatError:
        return
    if style is not None:
        floats.learned(style)


def parse(
    response: httpx.Response,
    expected: int,
    floats: FloatStyle | None = None,
    options: RequestOptions | None = None,
) -> UpstreamResult:
    """Decode a success response into rows ordered by ``index``; reject anything off.

    With ``floats`` (float text was asked for, to learn from), list embeddings must be
    float32 values; the style their text shows is passed to ``floats``. With ``options``
    that are not :attr:`~embedcache.models.RequestOptions.plain`, each item is decoded
    into a payload (:func:`_decode_payload`).
    """
    payload, data = answer_items(response, "data", expected, ("texts", "embeddings"))
    rows: list[NDArray[Any] | None] = [None] * expected
    payloads = options is not None and not options.plain
    for item in data:
        index = item.get("index") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < expected or rows[index] is not None:
            raise ResponseFormatError(f"response indexes do not cover 0..{expected - 1} once each")
        if payloads:
            assert options is not None
            rows[index] = _decode_payload(item, index, options, floats is not None)
        else:
            rows[index] = _decode_embedding(item.get("embedding"), index, floats is not None)
    request_id = payload.get("request_id") or response.headers.get("x-request-id")
    if payloads:
        if floats is not None:
            rows = _narrowed(rows, floats)
        empty = np.empty((0, 0), dtype=np.float32)
        return UpstreamResult(empty, total_tokens(payload), request_id, rows)  # type: ignore[arg-type]
    if floats is not None:
        rows = _narrowed(rows, floats)
    dims = {len(row) for row in rows if row is not None}
    if len(dims) > 1:
        raise ResponseFormatError(f"embeddings of different lengths in one response: {dims}")
    vectors = np.stack(rows) if rows else np.empty((0, 0), dtype=np.float32)  # type: ignore[arg-type]
    return UpstreamResult(vectors, total_tokens(payload), request_id)


def answer_items(
    response: httpx.Response, field: str, expected: int, nouns: tuple[str, str]
) -> tuple[dict[str, Any], list[Any]]:
    """A success answer's JSON object and its list ``field``, checked to hold ``expected``
    items (``nouns``: what was sent and what came back, for the message).

    :raises ResponseFormatError: not JSON, no such list, another count.
    """
    try:
        payload: Any = response.json()
    except ValueError:
        raise ResponseFormatError(
            f"HTTP {response.status_code} response is not valid JSON "
            f"({len(response.content)} bytes)"
        ) from None
    items = payload.get(field) if isinstance(payload, dict) else None
    if not isinstance(items, list):
        raise ResponseFormatError(f"response has no {field!r} list")
    if len(items) != expected:
        sent, received = nouns
        raise ResponseFormatError(f"sent {expected} {sent} but received {len(items)} {received}")
    return payload, items


def _narrowed(rows: list[NDArray[Any] | None], floats: FloatStyle) -> list[NDArray[Any] | None]:
    """Float text read as float64 (``_decode_embedding(..., wide=True)``), checked to be
    float32 values, then as float32; its style is taught to ``floats``."""
    # A multi-vector answer's rows are checked as rows.
    wide = [
        row
        for array in rows
        if array is not None and array.dtype == np.float64
        for row in (array if array.ndim == 2 else [array])
    ]
    try:
        style = classify_floats(wide)
    except ResponseFormatError as exc:
        floats.give_up(str(exc))
        raise
    if style is not None:
        floats.learned(style)
    with np.errstate(over="ignore"):  # nothing beyond float32's range among the checked
        return [row.astype(np.float32, copy=False) if row is not None else None for row in rows]


def _decode_embedding(value: object, index: int, wide: bool = False) -> NDArray[Any]:
    """One embedding as float32; ``wide``: float text as float64, as a JSON parser read it
    (to be checked by :func:`_narrowed`)."""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ResponseFormatError(f"embedding {index} is not valid base64") from None
        if len(raw) % 4:
            raise ResponseFormatError(
                f"embedding {index} has {len(raw)} bytes, not a whole number of float32"
            )
        return np.frombuffer(raw, dtype="<f4").astype(np.float32, copy=False)
    if isinstance(value, list) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in value
    ):
        return np.asarray(value, dtype=np.float64 if wide else np.float32)
    raise ResponseFormatError(f"embedding {index} is neither base64 nor a list of numbers")


#: The integer range of each packed-bits type, and the dtype it is kept as.
_BITS: dict[str, tuple[int, int, str]] = {"binary": (-128, 127, "i1"), "ubinary": (0, 255, "u1")}


def _decode_payload(
    item: dict[str, Any], index: int, options: RequestOptions, wide: bool
) -> NDArray[Any]:
    """One item of an answer that is not one float vector: a multi-vector item's
    ``embeddings`` (a list of rows: each base64 or a list of numbers, or packed bits) as a
    2-D array, or one vector of packed bits (``binary``: int8, ``ubinary``: uint8) as a
    1-D array. Rows are checked to be of one width; values of packed bits to be integers
    in their type's range."""
    bits = _BITS.get(options.embedding_type)
    if not options.multivector:
        assert bits is not None  # not plain, not multi-vector: packed bits
        return _decode_bits(item.get("embedding"), index, bits)
    value = item.get("embeddings")
    if not isinstance(value, list) or not value:
        raise ResponseFormatError(f"embedding {index} has no 'embeddings' rows")
    if bits is not None:
        rows = [_decode_bits(row, index, bits) for row in value]
    else:
        rows = [_decode_embedding(row, index, wide) for row in value]
    if len({len(row) for row in rows}) > 1:
        raise ResponseFormatError(f"embedding {index} has rows of different lengths")
    return np.stack(rows)


def _decode_bits(value: object, index: int, bits: tuple[int, int, str]) -> NDArray[Any]:
    low, high, dtype = bits
    if (
        not isinstance(value, list)
        or not value
        or not all(type(x) is int and low <= x <= high for x in value)
    ):
        raise ResponseFormatError(
            f"embedding {index} is not a list of integers from {low} to {high}"
        )
    return np.array(value, dtype=dtype)
