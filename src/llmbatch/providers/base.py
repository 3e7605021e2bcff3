"""The adapter seam: translate a ChatRequest, call the provider once, parse the answer, classify failures.

Adapters never retry: the engine is the one layer that does. A subclass supplies only what differs per API
(endpoint, auth headers, request body, response parsing, error-body reading); `complete` is shared so every
provider gets the same timeout, redaction and malformed-response handling.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Mapping

import httpx
import orjson

from ..catalog import ModelInfo, ProviderInfo
from ..errors import FatalError, ProviderError, RerouteError, RetryableError
from ..models import ChatRequest, Completion, Usage
from .classify import ErrorDetail, classify_http_error
from .redact import scrub
from .transport import Answer, post_json

# Exceptions that mean "the 200 body does not have the documented shape" while we pick it apart.
_SHAPE_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError)


class Adapter(abc.ABC):
    api: ClassVar[str]

    def __init__(self, provider: ProviderInfo, client: httpx.AsyncClient, api_key: str | None) -> None:
        self.provider = provider
        self.client = client
        self._api_key = api_key

    def __repr__(self) -> str:  # never the key
        return f"<{type(self).__name__} provider={self.provider.name!r} base_url={self.provider.base_url!r}>"

    # --- what each API defines ------------------------------------------------------------------------

    @abc.abstractmethod
    def build_body(self, model: ModelInfo, request: ChatRequest) -> dict:
        """The JSON body for this model. Pure: no I/O, no key."""

    @abc.abstractmethod
    def endpoint(self, model: ModelInfo) -> str:
        """The URL to POST to. Never carries the key."""

    @abc.abstractmethod
    def auth_headers(self, api_key: str) -> dict[str, str]: ...

    @abc.abstractmethod
    def error_detail(self, body: Any) -> ErrorDetail | None:
        """Read the provider's error body (parsed JSON, or None when it was not JSON); None when the body
        is not in the provider's error shape."""

    @abc.abstractmethod
    def parse_completion(self, model: ModelInfo, data: dict, headers: Mapping[str, str]) -> Completion:
        """A successful body -> Completion. May raise RerouteError for a filtered answer (use `self.filtered`);
        KeyError/TypeError/... on a wrong shape become a malformed_response error."""

    # --- shared ---------------------------------------------------------------------------------------

    @property
    def secrets(self) -> tuple[str | None, ...]:
        return (self._api_key,)

    def where(self, model: ModelInfo) -> str:
        return f"{self.provider.name}/{model.model}"

    def _headers(self, model: ModelInfo) -> dict[str, str]:
        if self._api_key:
            return self.auth_headers(self._api_key)
        if self.provider.key_env:
            raise FatalError(
                f"{self.where(model)}: no API key; set {self.provider.key_env} (or run with --simulate)",
                error_class="auth",
                request_sent=False,
            )
        return {}  # keyless local server (Ollama, vLLM)

    async def complete(self, model: ModelInfo, request: ChatRequest, *, timeout: float) -> Completion:
        where = self.where(model)
        headers = self._headers(model)
        try:
            body = self.build_body(model, request)
        except _SHAPE_ERRORS as exc:
            # A message this API cannot express (e.g. content None): no call can succeed, none was made.
            raise FatalError(
                f"{where}: cannot translate the request: {type(exc).__name__} {scrub(str(exc), self.secrets)}",
                error_class="bad_request",
                request_sent=False,
            ) from None
        response = await post_json(
            self.client, self.endpoint(model), body, headers=headers, timeout=timeout, where=where, secrets=self.secrets
        )
        if not 200 <= response.status_code < 300:
            raise self._http_error(response, where)
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise self.malformed(model, response.status_code, f"body is not JSON: {response.text!r}") from None
        if not isinstance(data, dict):
            raise self.malformed(model, response.status_code, f"body is not a JSON object: {response.text!r}")
        try:
            return self.parse_completion(model, data, response.headers)
        except ProviderError:
            raise
        except _SHAPE_ERRORS as exc:
            raise self.malformed(
                model, response.status_code, f"{type(exc).__name__} {exc} in {response.text!r}"
            ) from None

    def _http_error(self, response: Answer, where: str) -> ProviderError:
        try:
            parsed: Any = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            parsed = None
        try:
            detail = self.error_detail(parsed)
        except _SHAPE_ERRORS:
            detail = None
        if detail is None:
            # Not the provider's JSON (a gateway's HTML page, an empty body): keep the raw text for the user.
            detail = ErrorDetail(message=response.text, from_provider=False)
        return classify_http_error(response.status_code, detail, response.headers, where=where, secrets=self.secrets)

    def malformed(self, model: ModelInfo, status: int, why: str) -> RetryableError:
        return RetryableError(
            f"{self.where(model)}: malformed response (HTTP {status}): {scrub(why, self.secrets)}",
            status_code=status,
            error_class="malformed_response",
        )

    def filtered(self, model: ModelInfo, why: str, usage: Usage | None, status: int = 200) -> RerouteError:
        """A content-filter refusal that arrived as a successful response; its usage is still billed."""
        return RerouteError(
            f"{self.where(model)}: content filter: {scrub(why, self.secrets)}",
            status_code=status,
            error_class="content_filter",
            usage=usage,
        )


def tokens(value: Any) -> int:
    """A token count from a usage object: absent or null means 0; anything non-integral is a shape error."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != int(value):
        raise ValueError(f"not a token count: {value!r}")
    return int(value)


def request_id(headers: Mapping[str, str], data: Mapping[str, Any], *body_keys: str) -> str | None:
    for name in ("x-request-id", "request-id"):
        if headers.get(name):
            return headers[name]
    for key in body_keys:
        if isinstance(data.get(key), str) and data[key]:
            return data[key]
    return None


def completion_cap(model: ModelInfo, request: ChatRequest) -> int:
    """Tokens the model may generate. Reasoning models spend hidden tokens out of the same cap, so their
    reasoning budget is added; the sum never exceeds what the model accepts (a larger value is a 400)."""
    cap = request.max_output_tokens + (request.reasoning_budget_tokens if model.reasoning else 0)
    return max(1, min(cap, model.max_output_tokens))


def str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
