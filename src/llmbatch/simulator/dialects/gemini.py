"""Gemini generateContent: POST /v1beta/models/{model}:generateContent (key in x-goog-api-key or ?key=).

Field names are accepted in camelCase and snake_case, as the real REST API does. Zero-valued usage
fields are omitted, as proto3 JSON does. Thinking models (gemini-2.5+) report thoughtsTokenCount, spend
it inside maxOutputTokens, and get implicit prompt caching (cachedContentTokenCount).
"""

from __future__ import annotations

import math
import random
from typing import Any

from aiohttp import web

from ..apierror import AUTH, INVALID, NOT_FOUND, OVERLOADED, RATE_LIMIT, SERVER, ApiError
from ..conversation import ConversationBuilder
from ..modelinfo import SimModel
from ..prompt_cache import implicit_cached_tokens
from ..state import SimState
from ..tokens import text_tokens
from .base import (
    Dialect,
    Parsed,
    Reply,
    answer_text,
    context_overflow,
    fit_to_cap,
    hidden_reasoning_tokens,
    is_number,
    positive_int,
)

_STATUS = {
    INVALID: "INVALID_ARGUMENT",
    AUTH: "UNAUTHENTICATED",
    NOT_FOUND: "NOT_FOUND",
    RATE_LIMIT: "RESOURCE_EXHAUSTED",
    SERVER: "INTERNAL",
    OVERLOADED: "UNAVAILABLE",
}


def _invalid(message: str) -> ApiError:
    return ApiError(400, INVALID, message)


def _get(obj: dict, camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


class GeminiDialect(Dialect):
    api = "gemini"

    def api_key(self, request: web.Request) -> str | None:
        key = request.headers.get("x-goog-api-key", "").strip()
        return key or request.query.get("key", "").strip() or None

    def model_name(self, request: web.Request, payload: dict) -> str | None:
        return request.match_info.get("model")

    # --- request validation ---------------------------------------------------------------------
    def parse(self, payload: dict, model: SimModel) -> Parsed:
        contents = payload.get("contents")
        if not isinstance(contents, list) or not contents:
            raise _invalid("* GenerateContentRequest.contents: contents is not specified")
        config = _get(payload, "generationConfig", "generation_config") or {}
        if not isinstance(config, dict):
            raise _invalid('Invalid JSON payload received. Unknown name "generationConfig": not an object.')
        max_tokens = _get(config, "maxOutputTokens", "max_output_tokens")
        if max_tokens is not None:
            if not positive_int(max_tokens) or max_tokens > model.max_output_tokens:
                raise _invalid(
                    f"Unable to submit request because it has a maxOutputTokens value of {max_tokens} "
                    f"but the supported range is from 1 (inclusive) to {model.max_output_tokens + 1} "
                    f"(exclusive). Update the value and try again."
                )
        temp = config.get("temperature")
        if temp is not None and (not is_number(temp) or not 0 <= temp <= 2):
            raise _invalid(
                f"* GenerateContentRequest.generation_config.temperature: temperature must be in the "
                f"range [0.0, 2.0], got {temp}"
            )
        builder = ConversationBuilder(model.id)
        system = _get(payload, "systemInstruction", "system_instruction")
        if isinstance(system, dict):
            builder.start("system")
            self._add_parts(builder, "system_instruction", system.get("parts"), model)
        for i, content in enumerate(contents):
            if not isinstance(content, dict):
                raise _invalid(f"* GenerateContentRequest.contents[{i}]: must be an object")
            role = content.get("role") or "user"
            if role not in ("user", "model"):
                raise _invalid("Please use a valid role: user, model.")
            builder.start("assistant" if role == "model" else "user")
            self._add_parts(builder, f"contents[{i}]", content.get("parts"), model)
        conv = builder.build()
        if conv.prompt_tokens > model.context_window:
            raise _invalid(
                f"The input token count ({conv.prompt_tokens}) exceeds the maximum number of tokens "
                f"allowed ({model.context_window})."
            )
        if context_overflow(conv, max_tokens, model):
            raise _invalid(
                f"The input token count ({conv.prompt_tokens}) plus maxOutputTokens ({max_tokens}) "
                f"exceeds the maximum number of tokens allowed ({model.context_window})."
            )
        schema = _get(config, "responseJsonSchema", "response_json_schema")
        if schema is None:
            schema = _get(config, "responseSchema", "response_schema")
        mime = _get(config, "responseMimeType", "response_mime_type")
        return Parsed(
            conv=conv,
            max_tokens=max_tokens,
            schema=schema if isinstance(schema, dict) else None,
            json_mode=mime == "application/json",
        )

    @staticmethod
    def _add_parts(builder: ConversationBuilder, where: str, parts: Any, model: SimModel) -> None:
        if not isinstance(parts, list) or not parts:
            raise _invalid(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
        for k, part in enumerate(parts):
            if not isinstance(part, dict):
                raise _invalid(f"* GenerateContentRequest.{where}.parts[{k}]: must be an object")
            if "text" in part:
                builder.text(str(part["text"]))
                continue
            blob = _get(part, "inlineData", "inline_data") or _get(part, "fileData", "file_data")
            if isinstance(blob, dict):
                mime = str(_get(blob, "mimeType", "mime_type") or "")
                if mime.startswith("image/") and not model.vision:
                    raise _invalid(f"Image input modality is not enabled for models/{model.id}")
                builder.image(str(blob.get("data") or _get(blob, "fileUri", "file_uri") or ""))
                continue
            raise _invalid(
                f"* GenerateContentRequest.{where}.parts[{k}].data: required oneof field 'data' must "
                f"have one initialized field"
            )

    # --- response -------------------------------------------------------------------------------
    def respond(self, parsed: Parsed, model: SimModel, state: SimState, request_id: str) -> Reply:
        text = answer_text(parsed, model, state)
        cap = parsed.max_tokens or model.max_output_tokens
        text, thoughts, cut = fit_to_cap(
            text, cap, hidden_reasoning_tokens(model, parsed.conv) if model.thinking else None
        )
        finish = "MAX_TOKENS" if cut else "STOP"
        visible = text_tokens(text)
        cached = 0
        if model.thinking:
            cached = implicit_cached_tokens(state.gemini_cache, parsed.conv, min_tokens=state.config.cache_min_tokens)
        prompt = parsed.conv.prompt_tokens
        usage: dict[str, Any] = {"promptTokenCount": prompt}
        if visible:
            usage["candidatesTokenCount"] = visible
        usage["totalTokenCount"] = prompt + visible + thoughts
        if cached:
            usage["cachedContentTokenCount"] = cached
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        content: dict[str, Any] = {"role": "model"}
        if text:
            content["parts"] = [{"text": text}]
        body = {
            "candidates": [{"content": content, "finishReason": finish, "index": 0}],
            "usageMetadata": usage,
            "modelVersion": model.id,
            "responseId": request_id,
        }
        return Reply(body, prompt, visible + thoughts, cached_tokens=cached)

    # --- errors ---------------------------------------------------------------------------------
    def missing_key(self) -> ApiError:
        return ApiError(
            401,
            AUTH,
            "Method doesn't allow unregistered callers (callers without established "
            "identity). Please use API Key or other form of API consumer identity to call "
            "this API.",
        )

    def bad_json(self) -> ApiError:
        return _invalid("Invalid JSON payload received. Unexpected token.")

    def model_not_found(self, name: str | None) -> ApiError:
        return ApiError(
            404,
            NOT_FOUND,
            f"models/{name} is not found for API version v1beta, or is not supported "
            f"for generateContent. Call ListModels to see the list of available models "
            f"and their supported methods.",
        )

    def rate_limited(self, model: SimModel, rpm: int | None, retry_after: float) -> ApiError:
        return ApiError(429, RATE_LIMIT, "Resource has been exhausted (e.g. check quota).", retry_after=retry_after)

    def server_error(self, rng: random.Random) -> ApiError:
        if rng.random() < 0.5:
            return ApiError(
                500,
                SERVER,
                "An internal error has occurred. Please retry or report in "
                "https://developers.generativeai.google/guide/troubleshooting",
            )
        return ApiError(503, OVERLOADED, "The model is overloaded. Please try again later.")

    def error_body(self, err: ApiError, request_id: str) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": err.status,
            "message": err.message,
            "status": _STATUS.get(err.kind, "INVALID_ARGUMENT"),
        }
        if err.retry_after is not None:
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": f"{max(1, math.ceil(err.retry_after))}s",
                }
            ]
        return {"error": error}
