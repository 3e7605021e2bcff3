"""Provider adapters: one per API (openai, anthropic, gemini), all over one shared httpx client.

An adapter translates a ChatRequest, calls the provider exactly once, parses the answer into a Completion
(usage in our one convention) and classifies failures. It never retries; the engine does.

Error classification (every ProviderError carries `status_code`, None when no response arrived; messages
quote the provider, with the key (in any encoding) and anything key-shaped redacted, then trimmed to ~300 characters):

| what happened                                                     | raised              | error_class        | retry_after                    |
|-------------------------------------------------------------------|---------------------|--------------------|--------------------------------|
| 429                                                               | RateLimitedError    | rate_limited       | retry-after-ms / retry-after / x-ratelimit-reset-*, else Gemini RetryInfo |
| 429 insufficient_quota, spend limit reached; 402; billing_error   | RerouteError        | quota_exhausted    | -                              |
| 408                                                               | RetryableError      | request_timeout    | retry-after(-ms) if given      |
| 409                                                               | RetryableError      | conflict           | retry-after(-ms) if given      |
| 503                                                               | RetryableError      | unavailable        | retry-after(-ms) if given      |
| 529 (Anthropic overloaded)                                        | RetryableError      | overloaded         | retry-after(-ms) if given      |
| other 5xx                                                         | RetryableError      | server_error       | retry-after(-ms) if given      |
| 400/422 context too long (context_length_exceeded, "prompt is too long", "input token count ... exceeds"); 413 | RerouteError | context_length | - |
| 404 model_not_found / "model: x" / "models/x is not found"; 400 model_decommissioned; 410 | RerouteError | model_unavailable | - |
| 400 content_filter / invalid_prompt / "flagged"; 200 finish_reason content_filter or refusal; Gemini blockReason, finishReason SAFETY etc.; Anthropic stop_reason refusal | RerouteError | content_filter | - (usage attached when billed) |
| 401; 400 API_KEY_INVALID (Gemini); no key configured              | FatalError          | auth               | -                              |
| 403                                                               | FatalError          | forbidden          | -                              |
| 404 without a model message (wrong base_url)                      | FatalError          | not_found          | -                              |
| other 4xx (400, 422, ...)                                         | FatalError          | bad_request        | -                              |
| connect error / connect timeout / pool timeout                    | RetryableError      | connect            | - (request_sent=False)         |
| read timeout, overall deadline                                    | ProviderTimeout     | timeout            | - (request_sent=True)          |
| reset, server disconnect, RemoteProtocolError, ReadError          | RetryableError      | connection_reset   | - (request_sent=True)          |
| 2xx whose body is not JSON or lacks the documented fields (usage included) | RetryableError | malformed_response | -                       |
| unsupported URL scheme / invalid base_url                         | FatalError          | bad_config         | -                              |

Reroute vs fatal: a reroute error says "this model cannot serve this request, another might"; fatal says
"this request or this provider's credentials are wrong". Quota exhaustion is a reroute because another
provider is unaffected.
"""

from __future__ import annotations

import os
from typing import Mapping

import httpx

from ..catalog import Catalog, ProviderInfo
from .anthropic import AnthropicAdapter
from .base import Adapter
from .gemini import GeminiAdapter
from .openai import OpenAIAdapter
from .redact import redact
from .transport import make_http_client

__all__ = [
    "ADAPTERS",
    "SIMULATOR_KEY",
    "Adapter",
    "AnthropicAdapter",
    "GeminiAdapter",
    "OpenAIAdapter",
    "available_credentials",
    "build_adapters",
    "make_http_client",
    "redact",
    "simulator_base_url",
]

ADAPTERS: dict[str, type[Adapter]] = {"openai": OpenAIAdapter, "anthropic": AnthropicAdapter, "gemini": GeminiAdapter}

# What adapters send to the simulator; it never checks the value, but adapters refuse to run keyless.
SIMULATOR_KEY = "sim-key"


def simulator_base_url(api: str, simulator_url: str) -> str:
    """The simulator serves every API at its usual path: OpenAI-compatible under /v1, the others at the root
    (their adapters add /v1/messages and /v1beta/... themselves)."""
    root = simulator_url.rstrip("/")
    return f"{root}/v1" if api == "openai" else root


def build_adapters(
    catalog: Catalog,
    client: httpx.AsyncClient,
    *,
    simulator_url: str | None = None,
    env: Mapping[str, str] = os.environ,
) -> dict[str, Adapter]:
    """One adapter per configured provider, keyed by provider name. Providers whose key is not set still
    get an adapter; calling it raises FatalError(auth) naming the variable to set. With `simulator_url`
    every provider points at the simulator with a fake key."""
    adapters: dict[str, Adapter] = {}
    for name, provider in catalog.providers.items():
        cls = ADAPTERS[provider.api]
        if simulator_url:
            info: ProviderInfo = provider.model_copy(
                update={"base_url": simulator_base_url(provider.api, simulator_url)}
            )
            key: str | None = SIMULATOR_KEY
        else:
            info = provider
            # Stripped: keys pasted into .env files often carry a trailing newline, which breaks the header.
            key = (env.get(provider.key_env) or "").strip() or None if provider.key_env else None
        adapters[name] = cls(info, client, key)
    return adapters


def available_credentials(catalog: Catalog, *, simulate: bool, env: Mapping[str, str] = os.environ) -> set[str]:
    """Providers that can be called: their key variable is set and non-empty, or they need no key (local
    servers). Every provider when simulating."""
    return {
        name
        for name, p in catalog.providers.items()
        if simulate or p.key_env is None or bool((env.get(p.key_env) or "").strip())
    }
