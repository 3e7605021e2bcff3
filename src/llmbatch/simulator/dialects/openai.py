"""OpenAI Chat Completions: POST /v1/chat/completions.

Also what OpenAI-compatible providers (Groq, Together, Mistral, vLLM) look like. The o-series rules are
keyed on the model name, as on the real API: o1/o3 take max_completion_tokens only and temperature 1
only; o1-preview/o1-mini also refuse system/developer messages and response_format.
"""

from __future__ import annotations

import random
import time
from typing import Any

from aiohttp import web

from ..apierror import AUTH, INVALID, NOT_FOUND, OVERLOADED, RATE_LIMIT, SERVER, ApiError
from ..conversation import ConversationBuilder
from ..modelinfo import SimModel
from ..prompt_cache import OPENAI_CACHE_INCREMENT, implicit_cached_tokens
from ..ratelimit import format_duration
from ..state import SimState
from ..tokens import text_tokens
from ..quality import logprob
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
    scored_answer_text,
)

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_ERROR_TYPES = {
    INVALID: "invalid_request_error",
    AUTH: "invalid_request_error",
    NOT_FOUND: "invalid_request_error",
    RATE_LIMIT: "requests",
    SERVER: "server_error",
    OVERLOADED: "server_error",
}


def _invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, INVALID, message, param=param, code=code)


class OpenAIDialect(Dialect):
    api = "openai"

    def api_key(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() != "bearer ":
            return None
        return auth[7:].strip() or None

    def model_name(self, request: web.Request, payload: dict) -> str | None:
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise _invalid("you must provide a model parameter", "model", "missing_required_parameter")
        return model

    # --- request validation ---------------------------------------------------------------------
    def parse(self, payload: dict, model: SimModel) -> Parsed:
        messages = payload.get("messages")
        if messages is None:
            raise _invalid("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
        if not isinstance(messages, list) or not messages:
            raise _invalid("[] is too short - 'messages'", "messages", "invalid_value")
        if payload.get("stream"):
            raise _invalid(
                "The simulator does not implement streaming; send stream=false.", "stream", "unsupported_value"
            )
        self._check_o_series(payload, model)
        max_tokens = self._max_tokens(payload, model)
        builder = ConversationBuilder(model.id)
        for i, msg in enumerate(messages):
            self._add_message(builder, i, msg, model)
        conv = builder.build()
        if context_overflow(conv, max_tokens, model):
            asked = conv.prompt_tokens + (max_tokens or 0)
            raise _invalid(
                f"This model's maximum context length is {model.context_window} tokens. However, you requested "
                f"{asked} tokens ({conv.prompt_tokens} in the messages, {max_tokens or 0} in the completion). "
                f"Please reduce the length of the messages or completion.",
                "messages",
                "context_length_exceeded",
            )
        schema, json_mode = self._response_format(payload.get("response_format"))
        return Parsed(
            conv=conv,
            max_tokens=max_tokens,
            schema=schema,
            json_mode=json_mode,
            logprobs=payload.get("logprobs") is True,
        )

    def _check_o_series(self, payload: dict, model: SimModel) -> None:
        if model.reasoning:
            if "max_tokens" in payload:
                raise _invalid(
                    "Unsupported parameter: 'max_tokens' is not supported with this model. "
                    "Use 'max_completion_tokens' instead.",
                    "max_tokens",
                    "unsupported_parameter",
                )
            for name in ("temperature", "top_p"):
                value = payload.get(name)
                if value is not None and value != 1:
                    raise _invalid(
                        f"Unsupported value: '{name}' does not support {value} with this model. "
                        f"Only the default (1) value is supported.",
                        name,
                        "unsupported_value",
                    )
        else:
            temp = payload.get("temperature")
            if temp is not None and (not is_number(temp) or not 0 <= temp <= 2):
                raise _invalid(
                    f"Invalid 'temperature': expected a number between 0 and 2, but got {temp!r} instead.",
                    "temperature",
                    "invalid_value",
                )
        if model.legacy_o1 and payload.get("response_format") is not None:
            raise _invalid(
                "Unsupported parameter: 'response_format' is not supported with this model.",
                "response_format",
                "unsupported_parameter",
            )

    def _max_tokens(self, payload: dict, model: SimModel) -> int | None:
        name = "max_completion_tokens" if payload.get("max_completion_tokens") is not None else "max_tokens"
        value = payload.get(name)
        if value is None:
            return None
        if not positive_int(value):
            raise _invalid(
                f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {value!r} instead.",
                name,
                "integer_below_min_value",
            )
        if value > model.max_output_tokens:
            raise _invalid(
                f"{name} is too large: {value}. This model supports at most "
                f"{model.max_output_tokens} completion tokens, whereas you provided {value}.",
                name,
                "invalid_value",
            )
        return value

    def _add_message(self, builder: ConversationBuilder, i: int, msg: Any, model: SimModel) -> None:
        if not isinstance(msg, dict):
            raise _invalid(
                f"Invalid type for 'messages[{i}]': expected an object, but got {type(msg).__name__} instead.",
                f"messages[{i}]",
                "invalid_type",
            )
        role = msg.get("role")
        if role not in _ROLES:
            raise _invalid(
                f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', "
                f"'function', 'tool', and 'developer'.",
                f"messages[{i}].role",
                "invalid_value",
            )
        if model.legacy_o1 and role in ("system", "developer"):
            raise _invalid(
                f"Unsupported value: 'messages[{i}].role' does not support '{role}' with this model.",
                f"messages[{i}].role",
                "unsupported_value",
            )
        builder.start("system" if role == "developer" else role)
        content = msg.get("content")
        if content is None or isinstance(content, str):
            builder.text(content or "")
            return
        if not isinstance(content, list):
            raise _invalid(
                f"Invalid type for 'messages[{i}].content': expected one of a string or array of "
                f"objects, but got {type(content).__name__} instead.",
                f"messages[{i}].content",
                "invalid_type",
            )
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" or kind == "refusal":
                builder.text(str(part.get(kind if kind == "refusal" else "text") or ""))
            elif kind == "image_url":
                if not model.vision:
                    raise _invalid(
                        "Invalid content type. image_url is only supported by certain models.",
                        f"messages.[{i}].content.[{j}].type",
                        None,
                    )
                url = part.get("image_url")
                builder.image(str(url.get("url", "")) if isinstance(url, dict) else str(url))
            elif kind in ("input_audio", "file"):
                builder.image(kind)
            else:
                raise _invalid(
                    f"Invalid value: '{kind}'. Supported values are: 'text', 'image_url', "
                    f"'input_audio', 'refusal', and 'file'.",
                    f"messages[{i}].content[{j}].type",
                    "invalid_value",
                )

    @staticmethod
    def _response_format(fmt: Any) -> tuple[Any, bool]:
        if not isinstance(fmt, dict):
            return None, False
        if fmt.get("type") == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise _invalid(
                    "Missing required parameter: 'response_format.json_schema'.",
                    "response_format.json_schema",
                    "missing_required_parameter",
                )
            return spec.get("schema", {}), True
        return None, fmt.get("type") == "json_object"

    # --- response -------------------------------------------------------------------------------
    def respond(self, parsed: Parsed, model: SimModel, state: SimState, request_id: str) -> Reply:
        conf = None
        if parsed.logprobs:
            text, conf = scored_answer_text(parsed, model, state)
        else:
            text = answer_text(parsed, model, state)
        cap = parsed.max_tokens or model.max_output_tokens
        # o1 behaviour: a reasoning model that runs out spends the cap thinking and shows nothing.
        text, reasoning, cut = fit_to_cap(
            text, cap, hidden_reasoning_tokens(model, parsed.conv) if model.reasoning else None
        )
        finish = "length" if cut else "stop"
        completion = reasoning + text_tokens(text)
        cached = implicit_cached_tokens(
            state.openai_cache, parsed.conv, min_tokens=state.config.cache_min_tokens, increment=OPENAI_CACHE_INCREMENT
        )
        prompt = parsed.conv.prompt_tokens
        body = {
            "id": f"chatcmpl-{request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model.id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                    "logprobs": _logprobs(text, conf) if conf is not None else None,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": reasoning,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_simulator",
        }
        return Reply(body, prompt, completion, cached_tokens=cached)

    # --- errors ---------------------------------------------------------------------------------
    def missing_key(self) -> ApiError:
        return ApiError(
            401,
            AUTH,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )

    def bad_json(self) -> ApiError:
        return _invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
            "using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
        )

    def model_not_found(self, name: str | None) -> ApiError:
        return ApiError(
            404,
            NOT_FOUND,
            f"The model `{name}` does not exist or you do not have access to it.",
            code="model_not_found",
        )

    def rate_limited(self, model: SimModel, rpm: int | None, retry_after: float) -> ApiError:
        if rpm is None:
            msg = "Rate limit reached for requests. Please try again in " + format_duration(retry_after) + "."
        else:
            msg = (
                f"Rate limit reached for {model.id} in organization org-simulator on requests per min (RPM): "
                f"Limit {rpm}, Used {rpm}, Requested 1. Please try again in {format_duration(retry_after)}. "
                f"Visit https://platform.openai.com/account/rate-limits to learn more."
            )
        return ApiError(429, RATE_LIMIT, msg, code="rate_limit_exceeded", retry_after=retry_after)

    def server_error(self, rng: random.Random) -> ApiError:
        if rng.random() < 0.5:
            return ApiError(500, SERVER, "The server had an error while processing your request. Sorry about that!")
        return ApiError(503, OVERLOADED, "The engine is currently overloaded, please try again later.")

    def error_body(self, err: ApiError, request_id: str) -> dict[str, Any]:
        return {
            "error": {
                "message": err.message,
                "type": _ERROR_TYPES.get(err.kind, "invalid_request_error"),
                "param": err.param,
                "code": err.code,
            }
        }


def _logprobs(text: str, conf: float) -> dict[str, Any]:
    """OpenAI's `choices[].logprobs` shape: the answer's first token carries the model's uncertainty (for a
    label that is the decision), the rest are near-certain continuations."""
    words = text.split(" ")
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)] if text else []
    return {
        "content": [
            {"token": t, "logprob": logprob(conf) if i == 0 else 0.0, "bytes": list(t.encode()), "top_logprobs": []}
            for i, t in enumerate(pieces)
        ],
        "refusal": None,
    }
