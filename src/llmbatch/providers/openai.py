"""OpenAI Chat Completions, and every server that speaks it (Mistral, Groq, Together, OpenRouter, vLLM,
Ollama, gateways): POST {base_url}/chat/completions with `Authorization: Bearer`.

Per-model differences come from the catalog's `quirks`, not from model-name checks:
- system_role "merge_into_user" (o1-preview, o1-mini reject the system role): the system text goes on top of
  the first user message, separated by a blank line.
- system_role "developer" (o3-mini): system messages are sent with role "developer".
- max_tokens_param "max_completion_tokens": the cap goes in that field (o-series and gpt-4.1 reject max_tokens).
- fixed_temperature: temperature is omitted (o-series accept only the default).
- no_response_format: response_format is never sent; the prompt already carries the schema.

Usage: prompt_tokens includes prompt_tokens_details.cached_tokens, completion_tokens includes
completion_tokens_details.reasoning_tokens; that is already our convention. Groq, Together and vLLM omit the
details objects, which then count as 0. A 200 without a usage object is treated as malformed: pricing must
never silently assume $0.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..catalog import ModelInfo
from ..models import ChatRequest, Completion, Usage
from .base import Adapter, completion_cap, request_id, str_or_none, tokens
from .classify import ErrorDetail
from .content import SYSTEM_ROLES, split_system


def _merge_into_first_user(messages: list[dict[str, Any]], system_text: str) -> list[dict[str, Any]]:
    for i, m in enumerate(messages):
        if m["role"] != "user":
            continue
        content = m["content"]
        if isinstance(content, str):
            merged: Any = f"{system_text}\n\n{content}"
        elif content and content[0].get("type") == "text":
            merged = [{"type": "text", "text": f"{system_text}\n\n{content[0]['text']}"}, *content[1:]]
        else:
            merged = [{"type": "text", "text": system_text}, *content]
        return [*messages[:i], {"role": "user", "content": merged}, *messages[i + 1 :]]
    # No user turn at all: the instructions become the user turn.
    return [{"role": "user", "content": system_text}, *messages]


def translate_messages(messages: list[dict[str, Any]], system_role: str | None) -> list[dict[str, Any]]:
    """Neutral messages -> this model's chat messages, honouring its system-role quirk."""
    if system_role == "merge_into_user":
        system_text, others = split_system(messages)
        rest = [{"role": m["role"], "content": m["content"]} for m in others]
        return _merge_into_first_user(rest, system_text) if system_text else rest
    # "developer" models take both roles as developer; everything else predates the developer role, which
    # many OpenAI-compatible servers reject, so it is sent as system.
    role_for_system = "developer" if system_role == "developer" else "system"
    return [
        {"role": role_for_system if m["role"] in SYSTEM_ROLES else m["role"], "content": m["content"]} for m in messages
    ]


def parse_usage(usage: Mapping[str, Any]) -> Usage:
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(
        # Required: a usage without them would be priced at $0 (KeyError -> malformed_response).
        input_tokens=tokens(usage["prompt_tokens"]),
        cached_tokens=tokens(prompt_details.get("cached_tokens")),
        cache_write_tokens=0,
        output_tokens=tokens(usage["completion_tokens"]),
        reasoning_tokens=tokens(completion_details.get("reasoning_tokens")),
    )


def _message_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some gateways return content parts
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise TypeError(f"message.content is {type(content).__name__}")


def answer_confidence(logprobs: Any) -> float | None:
    """exp(sum of the answer's token logprobs): the probability the model gave its whole answer. None when
    the provider sent none (not asked for, or not supported)."""
    import math

    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content:
        return None
    try:
        return math.exp(sum(float(t["logprob"]) for t in content))
    except (KeyError, TypeError, ValueError, OverflowError):
        return None


class OpenAIAdapter(Adapter):
    api = "openai"

    def endpoint(self, model: ModelInfo) -> str:
        return f"{self.provider.base_url.rstrip('/')}/chat/completions"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"}

    def build_body(self, model: ModelInfo, request: ChatRequest) -> dict:
        quirks = model.quirks
        body: dict[str, Any] = {
            "model": model.model,
            "messages": translate_messages(request.messages, quirks.get("system_role")),
            quirks.get("max_tokens_param", "max_tokens"): completion_cap(model, request),
        }
        if request.temperature is not None and not quirks.get("fixed_temperature"):
            body["temperature"] = request.temperature
        if request.json_schema is not None and model.has("json_schema") and not quirks.get("no_response_format"):
            # strict=False: strict mode rejects ordinary schemas (it needs additionalProperties=false and every
            # property required); the engine validates the output against the schema either way.
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": request.json_schema, "strict": False},
            }
        if request.logprobs:
            body["logprobs"] = True
        return body

    def parse_completion(self, model: ModelInfo, data: dict, headers: Mapping[str, str]) -> Completion:
        choice = data["choices"][0]
        message = choice["message"]
        text = _message_text(message.get("content"))
        usage = parse_usage(data["usage"])
        finish = str_or_none(choice.get("finish_reason"))
        if finish == "content_filter":
            raise self.filtered(model, "finish_reason content_filter", usage)
        refusal = str_or_none(message.get("refusal"))
        if refusal and not text:
            raise self.filtered(model, f"refusal: {refusal}", usage)
        return Completion(
            text=text,
            usage=usage,
            finish_reason=finish,
            provider_request_id=request_id(headers, data, "id"),
            served_model=str_or_none(data.get("model")),
            confidence=answer_confidence(choice.get("logprobs")),
        )

    def error_detail(self, body: Any) -> ErrorDetail | None:
        if isinstance(body, list) and body:
            body = body[0]
        if not isinstance(body, dict):
            return None
        err = body.get("error")
        if isinstance(err, dict):
            return ErrorDetail(
                message=str(err.get("message") or ""),
                code=str_or_none(err.get("code")),
                reason=str_or_none(err.get("type")),
            )
        if isinstance(err, str):
            return ErrorDetail(message=err, code=str_or_none(body.get("code")))
        # vLLM ({"object": "error", "message": ...}) and FastAPI-style servers ({"detail": ...}).
        message = body.get("message") or body.get("detail")
        if message:
            return ErrorDetail(
                message=str(message), code=str_or_none(body.get("code")), reason=str_or_none(body.get("type"))
            )
        return None
