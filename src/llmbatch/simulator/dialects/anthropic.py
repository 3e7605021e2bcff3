"""Anthropic Messages: POST /v1/messages.

`system` is a top-level parameter (a string or text blocks), max_tokens is required, a "system" role
inside messages is refused. usage.input_tokens excludes cache tokens; blocks marked with cache_control
write the cache on first sight of their prefix and read it afterwards. Overload is HTTP 529.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from ..apierror import AUTH, INVALID, NOT_FOUND, OVERLOADED, RATE_LIMIT, SERVER, ApiError
from ..conversation import ConversationBuilder
from ..modelinfo import SimModel
from ..prompt_cache import explicit_cache_tokens
from ..ratelimit import RateDecision
from ..state import SimState
from ..tokens import text_tokens
from .base import Dialect, Parsed, Reply, answer_text, fit_to_cap, is_number, positive_int

_ERROR_TYPES = {
    INVALID: "invalid_request_error",
    AUTH: "authentication_error",
    NOT_FOUND: "not_found_error",
    RATE_LIMIT: "rate_limit_error",
    SERVER: "api_error",
    OVERLOADED: "overloaded_error",
}


def _invalid(message: str) -> ApiError:
    return ApiError(400, INVALID, message)


class AnthropicDialect(Dialect):
    api = "anthropic"

    def api_key(self, request: web.Request) -> str | None:
        key = request.headers.get("x-api-key", "").strip()
        if key:
            return key
        auth = request.headers.get("Authorization", "")  # the official SDK (2.x) sends the key as a bearer token
        return (auth[7:].strip() or None) if auth[:7].lower() == "bearer " else None

    def check_headers(self, request: web.Request) -> None:
        if not request.headers.get("anthropic-version", "").strip():
            raise _invalid("anthropic-version: header is required")

    def model_name(self, request: web.Request, payload: dict) -> str | None:
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise _invalid("model: Field required")
        return model

    # --- request validation ---------------------------------------------------------------------
    def parse(self, payload: dict, model: SimModel) -> Parsed:
        if payload.get("stream"):
            raise _invalid("stream: the simulator does not implement streaming; send stream=false.")
        max_tokens = payload.get("max_tokens")
        if max_tokens is None:
            raise _invalid("max_tokens: Field required")
        if not positive_int(max_tokens):
            raise _invalid("max_tokens: Input should be a valid integer greater than or equal to 1")
        if max_tokens > model.max_output_tokens:
            raise _invalid(
                f"max_tokens: {max_tokens} > {model.max_output_tokens}, which is the maximum allowed "
                f"number of output tokens for {model.id}"
            )
        temp = payload.get("temperature")
        if temp is not None and (not is_number(temp) or not 0 <= temp <= 1):
            raise _invalid("temperature: range: 0..1")
        messages = payload.get("messages")
        if not isinstance(messages, list):
            raise _invalid("messages: Field required")
        if not messages:
            raise _invalid("messages: at least one message is required")
        builder = ConversationBuilder(model.id)
        self._add_system(builder, payload.get("system"))
        for i, msg in enumerate(messages):
            self._add_message(builder, i, msg, model)
        conv = builder.build()
        if conv.prompt_tokens > model.context_window:
            raise _invalid(f"prompt is too long: {conv.prompt_tokens} tokens > {model.context_window} maximum")
        if conv.prompt_tokens + max_tokens > model.context_window:
            raise _invalid(
                f"prompt is too long: input length and `max_tokens` exceed context limit: "
                f"{conv.prompt_tokens} + {max_tokens} > {model.context_window}, decrease input length "
                f"or `max_tokens` and try again"
            )
        return Parsed(conv=conv, max_tokens=max_tokens)

    @staticmethod
    def _add_system(builder: ConversationBuilder, system: Any) -> None:
        if system is None or system == "" or system == []:
            return
        builder.start("system")
        if isinstance(system, str):
            builder.text(system)
            return
        if not isinstance(system, list):
            raise _invalid("system: Input should be a valid string or a list of text blocks")
        for k, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise _invalid(f"system.{k}: Input should be a text block")
            builder.text(block["text"], cache_mark=bool(block.get("cache_control")))

    def _add_message(self, builder: ConversationBuilder, i: int, msg: Any, model: SimModel) -> None:
        if not isinstance(msg, dict):
            raise _invalid(f"messages.{i}: Input should be a valid dictionary")
        role = msg.get("role")
        if role == "system":
            raise _invalid(
                'messages: Unexpected role "system". The Messages API accepts a top-level `system` '
                'parameter, not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            raise _invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        builder.start(role)
        content = msg.get("content")
        if isinstance(content, str):
            builder.text(content)
            return
        if not isinstance(content, list):
            raise _invalid(f"messages.{i}.content: Input should be a valid string or list of content blocks")
        for j, block in enumerate(content):
            self._add_block(builder, f"messages.{i}.content.{j}", block, model)

    def _add_block(self, builder: ConversationBuilder, where: str, block: Any, model: SimModel) -> None:
        if not isinstance(block, dict):
            raise _invalid(f"{where}: Input should be a valid dictionary")
        kind = block.get("type")
        mark = bool(block.get("cache_control"))
        if kind == "text":
            builder.text(str(block.get("text", "")), cache_mark=mark)
        elif kind in ("image", "document"):
            if kind == "image" and not model.vision:
                raise _invalid(f"'{model.id}' does not support image input.")
            source = block.get("source")
            if not isinstance(source, dict):
                source = {}
            builder.image(str(source.get("data") or source.get("url") or ""), cache_mark=mark)
        elif kind == "tool_result":
            inner = block.get("content")
            if isinstance(inner, list):
                for k, sub in enumerate(inner):
                    self._add_block(builder, f"{where}.content.{k}", sub, model)
            else:
                builder.text(str(inner or ""))
            if mark:
                builder.mark()
        elif kind in ("tool_use", "thinking", "redacted_thinking"):
            builder.text(str(block.get("input") or block.get("thinking") or ""), cache_mark=mark)
        else:
            raise _invalid(
                f"{where}.type: Input tag '{kind}' found using 'type' does not match any of the "
                f"expected tags: 'text', 'image', 'document', 'tool_use', 'tool_result'"
            )

    # --- response -------------------------------------------------------------------------------
    def respond(self, parsed: Parsed, model: SimModel, state: SimState, request_id: str) -> Reply:
        text = answer_text(parsed, model, state)
        cap = parsed.max_tokens or model.max_output_tokens
        text, _, cut = fit_to_cap(text, cap, None)
        stop = "max_tokens" if cut else "end_turn"
        output = text_tokens(text)
        created, read = explicit_cache_tokens(
            state.anthropic_cache, parsed.conv, min_tokens=state.config.anthropic_cache_min_tokens
        )
        prompt = parsed.conv.prompt_tokens
        body = {
            "id": f"msg_{request_id}",
            "type": "message",
            "role": "assistant",
            "model": model.id,
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {
                "input_tokens": prompt - created - read,
                "cache_creation_input_tokens": created,
                "cache_read_input_tokens": read,
                "output_tokens": output,
                "service_tier": "standard",
            },
        }
        return Reply(body, prompt, output, cached_tokens=read, cache_write_tokens=created)

    # --- errors ---------------------------------------------------------------------------------
    def missing_key(self) -> ApiError:
        return ApiError(401, AUTH, "x-api-key header is required")

    def bad_json(self) -> ApiError:
        return _invalid("There was an issue with the format of your request: the body is not valid JSON")

    def model_not_found(self, name: str | None) -> ApiError:
        return ApiError(404, NOT_FOUND, f"model: {name}")

    def rate_limited(self, model: SimModel, rpm: int | None, retry_after: float) -> ApiError:
        limit = f"of {rpm} requests per minute " if rpm else ""
        return ApiError(
            429,
            RATE_LIMIT,
            f"This request would exceed the rate limit for your organization {limit}for {model.id}. "
            f"Please reduce the prompt length or the maximum tokens requested, or try again later.",
            retry_after=retry_after,
        )

    def server_error(self, rng: random.Random) -> ApiError:
        if rng.random() < 0.5:
            return ApiError(529, OVERLOADED, "Overloaded")
        return ApiError(500, SERVER, "Internal server error")

    def error_body(self, err: ApiError, request_id: str) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": _ERROR_TYPES.get(err.kind, "invalid_request_error"), "message": err.message},
            "request_id": f"req_{request_id}",
        }

    # --- headers --------------------------------------------------------------------------------
    def base_headers(self, request_id: str) -> dict[str, str]:
        return {"request-id": f"req_{request_id}", "x-request-id": f"req_{request_id}"}

    def rate_headers(self, decision: RateDecision) -> dict[str, str]:
        # Whole seconds, rounded up: an RFC 3339 time without fractions must not be early.
        reset = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=math.ceil(decision.reset_s) + 1)
        return {
            **decision.headers(),
            "anthropic-ratelimit-requests-limit": str(decision.limit),
            "anthropic-ratelimit-requests-remaining": str(decision.remaining),
            "anthropic-ratelimit-requests-reset": reset.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
