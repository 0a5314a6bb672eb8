"""Jina's error vocabulary: status codes, ``code`` strings and the error body shape.

Codes and messages follow the 2026 API description (reference §5.2; the same table is in
tryAGI/Jina ``src/libs/Jina/Generated/Jina.JinaClient.g.cs``): every failure carries
``detail``, ``code`` and ``request_id``. Codes the sources do not name are marked as
emulator choices where they are defined.
"""

from __future__ import annotations

import secrets
from typing import Any

__all__ = [
    "ApiError",
    "error_payload",
    "fault_error",
    "new_request_id",
    "validation_error",
]

AUTH_MISSING_API_KEY = "AUTH_MISSING_API_KEY"
AUTH_INVALID_API_KEY = "AUTH_INVALID_API_KEY"
INPUT_MODEL_NOT_FOUND = "INPUT_MODEL_NOT_FOUND"
INPUT_TOKEN_LIMIT_EXCEEDED = "INPUT_TOKEN_LIMIT_EXCEEDED"  # noqa: S105 (an error code)
RESOURCE_NOT_FOUND = "RESOURCE_NOT_FOUND"
INTERNAL_ERROR = "INTERNAL_ERROR"
# Choice: the spec gives 422 bodies no code and the 2048-items 400 only a ``detail``; the
# emulator still sends a code so that every error body has the same three keys.
INPUT_VALIDATION_ERROR = "INPUT_VALIDATION_ERROR"
INPUT_ITEM_LIMIT_EXCEEDED = "INPUT_ITEM_LIMIT_EXCEEDED"

#: What an injected ``Fault(status=...)`` answers: (code, detail) per status, after the
#: spec's table; other statuses get ``HTTP_<status>`` (a choice).
_FAULT_ERRORS: dict[int, tuple[str, str]] = {
    400: (INPUT_VALIDATION_ERROR, "Invalid request (injected fault)"),
    401: (AUTH_INVALID_API_KEY, "Invalid API key. Please get a new one at https://jina.ai"),
    403: ("AUTHZ_INSUFFICIENT_BALANCE", "Insufficient account balance"),
    404: (RESOURCE_NOT_FOUND, "Resource not found or access denied"),
    409: ("CONFLICT_RESOURCE_BUSY", "Resource is currently being modified"),
    429: (
        "RATE_REQUEST_LIMIT_EXCEEDED",
        "Request rate limit exceeded: 501/500 requests per minute",
    ),
    500: (INTERNAL_ERROR, "An unexpected error occurred"),
    503: (
        "SERVICE_UNAVAILABLE",
        "Service temporarily unavailable, please retry with exponential backoff",
    ),
    504: ("SERVICE_TIMEOUT", "Request timed out after 60 seconds"),
}


class ApiError(Exception):
    """An error answer: raised while serving a request, turned into a JSON error body.

    :param status: HTTP status.
    :param code: Jina's machine-readable code.
    :param detail: the human-readable message (never contains the API key).
    :param errors: per-field entries for 422 answers, as in the spec's validation error.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors


def validation_error(field: str, message: str, kind: str = "value_error") -> ApiError:
    """A 422 for one field, with ``detail`` naming the field (clients only read ``detail``)."""
    return ApiError(
        422,
        INPUT_VALIDATION_ERROR,
        f"{field}: {message}",
        errors=[{"field": field, "message": message, "type": kind}],
    )


def fault_error(status: int) -> ApiError:
    """The error an injected ``Fault(status=...)`` answers."""
    code, detail = _FAULT_ERRORS.get(status, (f"HTTP_{status}", f"HTTP {status} (injected fault)"))
    return ApiError(status, code, detail)


def new_request_id() -> str:
    """16 hex characters, like the ``request_id`` in the spec's examples."""
    return secrets.token_hex(8)


def error_payload(error: ApiError, request_id: str) -> dict[str, Any]:
    """The JSON body of an error answer."""
    payload: dict[str, Any] = {
        "code": error.code,
        "detail": error.detail,
        "request_id": request_id,
    }
    if error.errors is not None:
        payload["errors"] = error.errors
    return payload
