"""What one request may ask of the proxy: how many inputs, and how big an answer.

Checked before any work (no key computed, nothing read or fetched), from the request's
count of inputs, the vector length its model and ``dimensions`` give, and its encoding: a
request over a limit is answered 413 in the client's own dialect, naming the limit and the
``embedcache serve`` option that sets it. Without them one request of 100,000 short texts
made a worker hold gigabytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import InvalidInputError
from ..inputs import Input
from ..models import RequestOptions
from ..tokens import estimate_tokens

__all__ = ["RequestLimits", "answer_bytes", "refuse_overlong"]

#: The vector length assumed for a model embedcache does not know.
FALLBACK_DIMENSIONS = 1024
# The most bytes one vector value takes in an answer: float text in float64 style (up to 17
# significant digits, a sign, an exponent, a comma) or float32 style (up to 9 digits);
# base64 of a float32 is 4/3 of its 4 bytes.
_VALUE_BYTES = {"float64": 24.0, "float32": 16.0, "base64": 4 * 4 / 3}
# Per embedding: its object's fixed text ({"object":"embedding","index":N,"embedding":...}).
_ITEM_BYTES = 64
# Characters of a long text estimated at once (about 1 ms): the estimate is one C call
# holding the GIL, about 4 s over a 50 MB text, during which no other thread, the event loop
# included, would run.
_SLICE = 16_384


def answer_bytes(count: int, dimensions: int | None, embedding_type: str, style: str) -> int:
    """An upper estimate of the answer body for ``count`` embeddings of ``dimensions``
    values (``None``: :data:`FALLBACK_DIMENSIONS`) in ``embedding_type`` (``float`` text
    written in ``style``, or ``base64``)."""
    per_value = _VALUE_BYTES["base64" if embedding_type == "base64" else style]
    values = dimensions or FALLBACK_DIMENSIONS
    return int(count * (values * per_value + _ITEM_BYTES))


@dataclass(frozen=True)
class RequestLimits:
    """The limits, each with the message of a request over it.

    :param max_inputs: most inputs in one request (``--max-inputs``).
    :param max_answer_bytes: largest estimated answer body (``--max-answer``).
    """

    max_inputs: int
    max_answer_bytes: int

    def inputs_problem(self, count: int) -> str | None:
        """Why a request of ``count`` inputs is refused, or ``None``."""
        if count <= self.max_inputs:
            return None
        return (
            f"this request has {count} inputs; this proxy takes at most {self.max_inputs} in "
            f"one request (embedcache serve --max-inputs): send them in several requests"
        )

    def answer_problem(self, estimate: int) -> str | None:
        """Why a request whose answer is estimated at ``estimate`` bytes is refused, or
        ``None``."""
        if estimate <= self.max_answer_bytes:
            return None
        return (
            f"the answer to this request would be about {_size(estimate)}; this proxy "
            f"answers at most {_size(self.max_answer_bytes)} to one request (embedcache "
            f"serve --max-answer): send fewer inputs, fewer dimensions or base64"
        )


def refuse_overlong(
    texts: Sequence[Input],
    options: RequestOptions,
    field: Callable[[int], str] = "input[{}]".format,
) -> None:
    """Refuse a request holding a text over its model's token limit, estimated a slice at
    a time and stopping as soon as the limit is passed: for a huge text, in microseconds
    rather than the seconds the library's own check (one estimate of the whole text, the
    GIL held throughout) would stall the worker. Texts it does not refuse are checked again
    by the library, exactly.

    :param field: the request field ``texts[i]`` came from, as the client wrote it.
    :raises InvalidInputError: naming the first text over the limit by its field.
    """
    limit = options.input_limit
    if limit is None:
        return
    for index, text in enumerate(texts):
        if not isinstance(text, str) or len(text) <= limit:
            continue  # an image; or every estimated token spans at least one character
        counted = 0
        for start in range(0, len(text), _SLICE):
            counted += estimate_tokens(text[start : start + _SLICE])
            if start:
                counted -= 1  # a lower bound: a boundary splits at most one run in two
            if counted > limit:
                raise InvalidInputError(
                    f"{field(index)} is over the {limit}-token limit of {options.model} "
                    f"(more than {limit} tokens by estimate); shorten it or send "
                    f"truncate: true"
                )


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"
