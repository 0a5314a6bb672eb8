"""``POST /v1/rerank``'s success answers, decoded: every document's score back in document
order, checked. Anything off (not JSON, no ``results`` list, a missing, repeated or
out-of-range ``index``, a score that is no finite number, another count than sent) is a
:class:`ResponseFormatError`: a bad answer is never cached.
"""

from __future__ import annotations

import math
from typing import Any

import httpx

from ..errors import ResponseFormatError
from .answers import total_tokens
from .protocol import UpstreamScores

__all__ = ["parse_scores"]


def parse_scores(response: httpx.Response, expected: int) -> UpstreamScores:
    """The scores of the ``expected`` documents sent, in document order."""
    try:
        payload: Any = response.json()
    except ValueError:
        raise ResponseFormatError(
            f"HTTP {response.status_code} rerank response is not valid JSON "
            f"({len(response.content)} bytes)"
        ) from None
    results = payload.get("results") if isinstance(payload, dict) else None
    if not isinstance(results, list):
        raise ResponseFormatError("rerank response has no 'results' list")
    if len(results) != expected:
        raise ResponseFormatError(f"sent {expected} documents but received {len(results)} scores")
    scores: list[float | None] = [None] * expected
    for item in results:
        index = item.get("index") if isinstance(item, dict) else None
        if (
            not isinstance(index, int)
            or isinstance(index, bool)
            or not 0 <= index < expected
            or scores[index] is not None
        ):
            raise ResponseFormatError(f"rerank indexes do not cover 0..{expected - 1} once each")
        assert isinstance(item, dict)
        score = item.get("relevance_score")
        if (
            not isinstance(score, (int, float))
            or isinstance(score, bool)
            or not math.isfinite(score)
        ):
            raise ResponseFormatError(f"document {index}'s relevance_score is not a finite number")
        scores[index] = float(score)
    request_id = payload.get("request_id") or response.headers.get("x-request-id")
    return UpstreamScores([s for s in scores if s is not None], total_tokens(payload), request_id)
