"""A tokenizer-free token estimate.

Jina's tokenizers are not available offline, so batching by token budget, the per-input
length check and cost estimates use this heuristic. It is tuned to err low on English
(about one token per short word), so the length check never rejects a text the API would
accept; the API remains the judge of texts near the limit. The bundled emulator counts
tokens with the same function, so figures measured against it are exact there and
estimates against the real API.
"""

from __future__ import annotations

import re

__all__ = ["estimate_tokens"]

_PIECE = re.compile(r"[A-Za-z]+|[0-9]+|\S")
_LETTERS_PER_TOKEN = 6
_DIGITS_PER_TOKEN = 3


def estimate_tokens(text: str) -> int:
    """Estimated token count of one text (special tokens not included)."""
    total = 0
    for match in _PIECE.finditer(text):
        piece = match.group()
        first = piece[0]
        if first.isascii() and first.isalpha():
            total += -(-len(piece) // _LETTERS_PER_TOKEN)
        elif first.isascii() and first.isdigit():
            total += -(-len(piece) // _DIGITS_PER_TOKEN)
        else:
            total += 1
    return total
