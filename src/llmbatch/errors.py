"""One root exception, with a shallow tree that follows what the caller does next.

Provider errors are split by the engine's next move:
- RetryableError: try the same model again after a backoff (429, 408, 409, 5xx, 529, timeouts, resets).
- RerouteError: this model cannot serve this request; try the next candidate (context too long,
  model not found or retired, content filter).
- FatalError: the request itself is wrong or we are not allowed; retrying anywhere is pointless
  (400, 401, 403, 404 on the endpoint).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import Usage


class LLMBatchError(Exception):
    """Root of every error llmbatch raises on purpose."""


class ConfigError(LLMBatchError):
    """Configuration is missing or invalid. The message says which setting and how to fix it."""


class InputError(LLMBatchError):
    """The input file (or a job spec) is invalid. CLI exit code 2."""


class StoreError(LLMBatchError):
    """The store is unreachable or inconsistent."""


class StoreWriteError(StoreError):
    """The store answers but cannot take writes (disk full, read-only database, locked database). Retrying does
    not help: the run stops cleanly (leases released where possible) and the message says what to fix."""


class BrokerError(LLMBatchError):
    """The broker (LLMBATCH_BROKER_URL) cannot be reached. Checked before anything is stored."""


class JobNotFound(LLMBatchError):
    """No job with that id or name in the store that was read (the message names the store)."""


class Interrupted(LLMBatchError):
    """Raised inside the engine once a run is stopping: the task goes back to the queue, nothing is recorded."""


class CatalogError(LLMBatchError):
    """A model is unknown or cannot be priced."""


class PricingError(CatalogError):
    """A usage the catalog cannot price. Never silently $0: the attempt is flagged and the report shows it."""


class ProviderError(LLMBatchError):
    """A provider call failed. `error_class` is a short stable name stored in the ledger."""

    error_class = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_class: str | None = None,
        usage: Usage | None = None,
        request_sent: bool = True,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        if error_class:
            self.error_class = error_class
        # Some failures still return usage (and so cost money); the engine prices it when present.
        self.usage = usage
        # False when we know the provider never saw the request (connect error): no charge is possible.
        self.request_sent = request_sent


class RetryableError(ProviderError):
    error_class = "retryable"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class RateLimitedError(RetryableError):
    error_class = "rate_limited"


class ProviderTimeout(RetryableError):
    """The request may have reached the provider; its outcome (and charge) is unknown."""

    error_class = "timeout"


class RerouteError(ProviderError):
    error_class = "reroute"


class FatalError(ProviderError):
    error_class = "fatal"


class BudgetExceeded(LLMBatchError):
    """A reservation did not fit under a cap. Not a provider error: the task ends `skipped` (budget)."""

    def __init__(self, message: str, *, scope: str) -> None:
        super().__init__(message)
        self.scope = scope  # "job" or "daily"
