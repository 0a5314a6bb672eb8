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

# One match per estimated token: a run of ASCII letters counts one token per started group of
# six (so a run of L letters matches ceil(L / 6) times), digits one per three, and any other
# visible character one each. Counting matches keeps the estimate in C: prewarm and the
# emulator run it over every text they send or receive.
_TOKEN = re.compile(r"[A-Za-z]{1,6}|[0-9]{1,3}|[^\sA-Za-z0-9]")


def estimate_tokens(text: str) -> int:
    """Estimated token count of one text (special tokens not included)."""
    return _TOKEN.subn("", text)[1]
