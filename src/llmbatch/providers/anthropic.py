"""Anthropic Messages: POST {base_url}/v1/messages with `x-api-key` and `anthropic-version`.

Translation: system (and developer) messages become the top-level `system` string; `max_tokens` is always
sent (the API requires it); image parts become image blocks (data URIs as base64 sources, http(s) URLs as url
sources). Temperature is clamped to 1.0, Anthropic's maximum (our neutral range goes to 2).

Structured output: Messages has no JSON-schema response format, and forcing one through a tool call would
change the answer's shape and add tokens. The extract prompt already carries the schema and the engine
validates the reply, so no format parameter is sent.

Usage, mapped to our convention: Anthropic's input_tokens excludes cache traffic, so
input = input_tokens + cache_creation_input_tokens + cache_read_input_tokens, cached = cache_read_input_tokens,
cache_write = cache_creation_input_tokens, output = output_tokens (thinking included).
"""

from __future__ import annotations

from typing import Any, Mapping

from ..catalog import ModelInfo
from ..models import ChatRequest, Completion, Usage
from .base import Adapter, completion_cap, request_id, str_or_none, tokens
from .classify import ErrorDetail
from .content import image_url_of, parse_data_uri, split_system

ANTHROPIC_VERSION = "2023-06-01"
MAX_TEMPERATURE = 1.0


def _image_block(url: str) -> dict[str, Any]:
    data_uri = parse_data_uri(url)
    if data_uri is not None:
        mime, data = data_uri
        return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _content(content: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    blocks: list[dict[str, Any]] = []
    for part in content:
        if part.get("type") == "text":
            if part["text"]:  # the API rejects empty text blocks
                blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            blocks.append(_image_block(image_url_of(part)))
    return blocks


def parse_usage(usage: Mapping[str, Any]) -> Usage:
    cache_write = tokens(usage.get("cache_creation_input_tokens"))
    cache_read = tokens(usage.get("cache_read_input_tokens"))
    return Usage(
        input_tokens=tokens(usage["input_tokens"]) + cache_write + cache_read,
        cached_tokens=cache_read,
        cache_write_tokens=cache_write,
        output_tokens=tokens(usage["output_tokens"]),
        reasoning_tokens=0,  # thinking tokens are inside output_tokens and not reported apart
    )


class AnthropicAdapter(Adapter):
    api = "anthropic"

    def endpoint(self, model: ModelInfo) -> str:
        return f"{self.provider.base_url.rstrip('/')}/v1/messages"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION}

    def build_body(self, model: ModelInfo, request: ChatRequest) -> dict:
        system, messages = split_system(request.messages)
        body: dict[str, Any] = {
            "model": model.model,
            "max_tokens": completion_cap(model, request),
            "messages": [{"role": m["role"], "content": _content(m["content"])} for m in messages],
        }
        if system and request.cache_prefix_messages:
            # The shared system prompt as a prompt-cache breakpoint (cache/prompt.py decides when it pays).
            body["system"] = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
        elif system:
            body["system"] = system
        if request.temperature is not None and not model.quirks.get("fixed_temperature"):
            body["temperature"] = min(request.temperature, MAX_TEMPERATURE)
        return body

    def parse_completion(self, model: ModelInfo, data: dict, headers: Mapping[str, str]) -> Completion:
        blocks = data["content"]
        if not isinstance(blocks, list):
            raise TypeError("content is not a list")
        text = "".join(b["text"] for b in blocks if b.get("type") == "text")
        usage = parse_usage(data["usage"])
        stop = str_or_none(data.get("stop_reason"))
        if stop == "refusal":
            raise self.filtered(model, f"stop_reason refusal {text!r}", usage)
        return Completion(
            text=text,
            usage=usage,
            finish_reason=stop,
            provider_request_id=request_id(headers, data, "id"),
            served_model=str_or_none(data.get("model")),
        )

    def error_detail(self, body: Any) -> ErrorDetail | None:
        if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
            return None
        err = body["error"]
        details = err.get("details")
        # A spend-limit 429 shares the rate-limit type; only details.error_code tells them apart.
        specific = str_or_none(details.get("error_code")) if isinstance(details, dict) else None
        return ErrorDetail(
            message=str(err.get("message") or ""),
            code=specific or str_or_none(err.get("type")),
            reason=str_or_none(err.get("type")),
        )
