"""The response-cache key: a digest of everything that determines the answer.

That is the provider, the model and the exact request body the adapter sends (messages, parameters, schema,
output cap), plus the scope (the API token, once tokens exist: the cache is never shared across them) and
whether the call goes to the simulator (a simulated answer must never answer a real request). A prompt-cache
breakpoint changes the price of a call, not its answer, so the body is built without one.
"""

from __future__ import annotations

import hashlib

import orjson

from ..catalog import Catalog, ModelInfo
from ..models import ChatRequest
from ..providers import ADAPTERS


def request_body(catalog: Catalog, model: ModelInfo, request: ChatRequest) -> dict | None:
    """The body the model's adapter would send (pure: no client, no key); None if it cannot be built."""
    provider = catalog.providers.get(model.provider)
    if provider is None:
        return None
    if request.cache_prefix_messages:
        request = request.model_copy(update={"cache_prefix_messages": 0})
    try:
        return ADAPTERS[provider.api](provider, None, None).build_body(model, request)  # type: ignore[arg-type]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None


def request_key(
    catalog: Catalog, model: ModelInfo, request: ChatRequest, *, simulate: bool, scope: str | None = None
) -> str | None:
    body = request_body(catalog, model, request)
    if body is None:
        return None
    # logprobs too: an answer cached without its confidence must not serve a quality policy that asks for it.
    blob = orjson.dumps(
        {
            "v": 1,
            "scope": scope,
            "simulate": simulate,
            "provider": model.provider,
            "model": model.model,
            "logprobs": request.logprobs,
            "body": body,
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(blob).hexdigest()
