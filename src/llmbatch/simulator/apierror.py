"""ApiError: one failure raised anywhere in request handling, rendered by each dialect in its own shape."""

from __future__ import annotations

# Provider-neutral kinds; each dialect maps them onto its error type / status names.
INVALID = "invalid_request"
AUTH = "authentication"
NOT_FOUND = "not_found"
RATE_LIMIT = "rate_limit"
SERVER = "server"
OVERLOADED = "overloaded"


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after  # seconds; becomes Retry-After / retry-after-ms headers
