"""Gemini generateContent: POST {base_url}/v1beta/models/{model}:generateContent with `x-goog-api-key`.

The key travels in the header, never as `?key=`: URLs end up in access logs and exception messages.

Translation: system (and developer) text -> systemInstruction; user/assistant -> contents with roles
"user"/"model"; image parts -> inlineData for data URIs, fileData for URLs; generationConfig carries
maxOutputTokens and temperature; a JSON schema -> responseMimeType "application/json" + responseJsonSchema
(the field that takes standard JSON Schema; responseSchema takes only an OpenAPI subset). A model whose API
does not accept it can opt out with the `no_response_format` quirk.

Usage: promptTokenCount already includes cachedContentTokenCount; candidatesTokenCount excludes
thoughtsTokenCount, so output = candidates + thoughts and reasoning = thoughts.

Blocked answers: promptFeedback.blockReason (the prompt was refused) or a finishReason of SAFETY and its kin
become a content_filter reroute; the prompt tokens are still billed, so the usage rides along.
"""

from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import quote

from ..backoff import parse_duration
from ..catalog import ModelInfo
from ..models import ChatRequest, Completion, Usage
from .base import Adapter, completion_cap, request_id, str_or_none, tokens
from .classify import ErrorDetail
from .content import guess_image_mime, image_url_of, parse_data_uri, split_system

_FILTER_FINISH = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"})


def _image_part(url: str) -> dict[str, Any]:
    data_uri = parse_data_uri(url)
    if data_uri is not None:
        mime, data = data_uri
        return {"inlineData": {"mimeType": mime, "data": data}}
    return {"fileData": {"mimeType": guess_image_mime(url), "fileUri": url}}


def _parts(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    parts: list[dict[str, Any]] = []
    for part in content:
        if part.get("type") == "text":
            parts.append({"text": part["text"]})
        elif part.get("type") == "image_url":
            parts.append(_image_part(image_url_of(part)))
    return parts


def parse_usage(meta: Mapping[str, Any]) -> Usage:
    thoughts = tokens(meta.get("thoughtsTokenCount"))
    return Usage(
        # Required (KeyError -> malformed_response). Gemini leaves out zero-valued counts, so the
        # candidates/cached/thoughts counts may be missing and mean 0.
        input_tokens=tokens(meta["promptTokenCount"]),
        cached_tokens=tokens(meta.get("cachedContentTokenCount")),
        cache_write_tokens=0,
        output_tokens=tokens(meta.get("candidatesTokenCount")) + thoughts,
        reasoning_tokens=thoughts,
    )


class GeminiAdapter(Adapter):
    api = "gemini"

    def endpoint(self, model: ModelInfo) -> str:
        return f"{self.provider.base_url.rstrip('/')}/v1beta/models/{quote(model.model, safe='-._~')}:generateContent"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-goog-api-key": api_key}

    def build_body(self, model: ModelInfo, request: ChatRequest) -> dict:
        system, messages = split_system(request.messages)
        contents = [
            {"role": "model" if m["role"] == "assistant" else "user", "parts": _parts(m["content"])} for m in messages
        ]
        config: dict[str, Any] = {"maxOutputTokens": completion_cap(model, request)}
        if request.temperature is not None and not model.quirks.get("fixed_temperature"):
            config["temperature"] = request.temperature
        if request.json_schema is not None and model.has("json_schema") and not model.quirks.get("no_response_format"):
            config["responseMimeType"] = "application/json"
            config["responseJsonSchema"] = request.json_schema
        body: dict[str, Any] = {"contents": contents, "generationConfig": config}
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        return body

    def parse_completion(self, model: ModelInfo, data: dict, headers: Mapping[str, str]) -> Completion:
        usage = parse_usage(data["usageMetadata"])
        blocked = str_or_none((data.get("promptFeedback") or {}).get("blockReason"))
        if blocked:
            raise self.filtered(model, f"prompt blocked ({blocked})", usage)
        candidate = data["candidates"][0]
        finish = str_or_none(candidate.get("finishReason"))
        parts = (candidate.get("content") or {}).get("parts") or []
        # Parts flagged `thought` are thinking summaries, not the answer.
        text = "".join(p.get("text") or "" for p in parts if not p.get("thought"))
        if finish in _FILTER_FINISH:
            raise self.filtered(model, f"finishReason {finish}", usage)
        return Completion(
            text=text,
            usage=usage,
            finish_reason=finish,
            provider_request_id=request_id(headers, data, "responseId"),
            served_model=str_or_none(data.get("modelVersion")),
        )

    def error_detail(self, body: Any) -> ErrorDetail | None:
        if isinstance(body, list) and body:  # some Google front ends wrap the error in a list
            body = body[0]
        if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
            return None
        err = body["error"]
        retry_after: float | None = None
        reason: str | None = None
        for item in err.get("details") or ():
            if not isinstance(item, dict):
                continue
            kind = str(item.get("@type", ""))
            if kind.endswith("google.rpc.RetryInfo"):
                retry_after = parse_duration(str(item.get("retryDelay", "")))
            elif kind.endswith("google.rpc.ErrorInfo"):
                reason = str_or_none(item.get("reason"))
        return ErrorDetail(
            message=str(err.get("message") or ""),
            code=str_or_none(err.get("status")),
            reason=reason,
            retry_after=retry_after,
        )
