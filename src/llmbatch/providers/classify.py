"""HTTP error responses -> the engine's next move (retry, reroute, give up).

Each adapter reads its provider's error body into an `ErrorDetail`; `classify_http_error` then applies one
table for every provider (the table is in the package docstring, `llmbatch.providers`). Classification looks
at the status first and only then at codes and messages, because providers reuse 400 for very different
problems (context too long, a retired model, a flagged prompt, a malformed body).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from ..backoff import parse_retry_after
from ..errors import FatalError, ProviderError, RateLimitedError, RerouteError, RetryableError
from .redact import scrub


@dataclass(frozen=True)
class ErrorDetail:
    """What a provider said about a failure, in neutral terms."""

    message: str  # the provider's own words, unredacted and untrimmed
    code: str | None = None  # OpenAI error.code, Anthropic error.type (or details.error_code), Gemini error.status
    reason: str | None = None  # a secondary tag: OpenAI error.type, Gemini ErrorInfo.reason
    retry_after: float | None = None  # a wait hint from the body (Gemini RetryInfo.retryDelay)
    from_provider: bool = True  # False when the body was not the provider's JSON (a proxy's HTML page)


# Codes that mean "the account is out of money or quota": waiting does not help, another provider might.
_QUOTA_CODES = frozenset({"insufficient_quota", "enforced_spend_limit_reached", "billing_error"})

_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_CONTEXT_RE = re.compile(
    r"context[ _-]?(length|window|limit)|maximum context|prompt is too long|input is too long"
    r"|too many (input )?tokens|input token count|exceeds? the max(imum)? (number of )?tokens"
    r"|reduce the length|max_new_tokens",
    re.IGNORECASE,
)

_MODEL_CODES = frozenset(
    {"model_not_found", "model_decommissioned", "model_retired", "model_deprecated", "invalid_model"}
)
_MODEL_RE = re.compile(
    r"model\b.*\b(does not exist|not found|decommissioned|retired|deprecated|no longer (available|supported)"
    r"|not supported for generatecontent|is not available)"
    r"|^model: \S+$"  # Anthropic's 404 body says just "model: <id>"
    r"|^models/\S+ is not found"  # Gemini's
    r"|\binvalid model\b",  # gateways (LiteLLM proxy: "Invalid model name passed in model=...")
    re.IGNORECASE,
)

_FILTER_CODES = frozenset(
    {"content_filter", "content_policy_violation", "invalid_prompt", "responsibleaipolicyviolation"}
)
_FILTER_RE = re.compile(r"content[ _](filter|policy|management)|flagged as|usage polic", re.IGNORECASE)

_AUTH_RE = re.compile(r"api key not valid|invalid api key|incorrect api key|invalid x-api-key", re.IGNORECASE)
_AUTH_REASONS = frozenset({"api_key_invalid", "invalid_api_key", "authentication_error"})

# Retryable statuses besides 429 and 5xx. 529 is Anthropic's "overloaded".
_RETRYABLE_CLASS = {408: "request_timeout", 409: "conflict", 529: "overloaded", 503: "unavailable"}


def classify_http_error(
    status: int,
    detail: ErrorDetail,
    headers: Mapping[str, str],
    *,
    where: str,
    secrets: tuple[str | None, ...] = (),
) -> ProviderError:
    """The exception for a non-2xx response. `where` names provider and model for the message."""
    code = (detail.code or "").lower()
    reason = (detail.reason or "").lower()
    msg = detail.message
    label = f" {scrub(detail.code, secrets, 60)}" if detail.code else ""
    text = f"{where}: HTTP {status}{label}: {scrub(msg, secrets) or '(empty body)'}"

    if status == 429:
        if code in _QUOTA_CODES:
            return RerouteError(text, status_code=status, error_class="quota_exhausted")
        hint = parse_retry_after(headers)
        return RateLimitedError(text, status_code=status, retry_after=hint if hint is not None else detail.retry_after)
    if status in _RETRYABLE_CLASS or status >= 500:
        # retry-after(-ms) only: on errors other than 429 the x-ratelimit-reset-* headers describe quota,
        # not the outage, so they must not become a wait.
        hint = parse_retry_after(headers, quota_resets=False)
        return RetryableError(
            text,
            status_code=status,
            error_class=_RETRYABLE_CLASS.get(status, "server_error"),
            retry_after=hint if hint is not None else detail.retry_after,
        )
    if status == 402 or code in _QUOTA_CODES:
        return RerouteError(text, status_code=status, error_class="quota_exhausted")
    if status == 413 or (status in (400, 422) and (code in _CONTEXT_CODES or _CONTEXT_RE.search(msg))):
        return RerouteError(text, status_code=status, error_class="context_length")
    if detail.from_provider and (
        status == 410
        or (status in (400, 404) and (code in _MODEL_CODES or _MODEL_RE.search(msg)))
        or (status == 404 and code in {"not_found_error", "not_found"} and "model" in msg.lower())
    ):
        return RerouteError(text, status_code=status, error_class="model_unavailable")
    if status in (400, 422) and (code in _FILTER_CODES or _FILTER_RE.search(msg)):
        return RerouteError(text, status_code=status, error_class="content_filter")
    if status == 401 or reason in _AUTH_REASONS or code in _AUTH_REASONS or _AUTH_RE.search(msg):
        return FatalError(text, status_code=status, error_class="auth")
    if status == 403:
        return FatalError(text, status_code=status, error_class="forbidden")
    if status == 404:
        return FatalError(text, status_code=status, error_class="not_found")
    return FatalError(text, status_code=status, error_class="bad_request")
