"""OpenAI Batch input lines -> native line dicts, so one validator (TaskLine) judges both shapes.

A Batch line is `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`.
It becomes: id = custom_id, task = "chat" (or "extract" when the body asks for JSON output),
messages, max_output_tokens (max_completion_tokens, else max_tokens), temperature, model (pinned,
as in the user's batch: same model they chose) and metadata {"openai_batch": true}.

Body parameters that change what kind of answer comes back (tools, several choices, audio,
streaming) are rejected: we cannot honour them and a silently different answer is worse than a
clear error. Other sampling knobs (top_p, stop, seed, penalties, ...) are accepted and ignored:
routing may send the line to a model that lacks them anyway.
"""

from __future__ import annotations

from typing import Any

SUPPORTED_METHOD = "POST"
SUPPORTED_URL = "/v1/chat/completions"

# Body keys we cannot honour without changing the shape of the answer.
_REJECTED_BODY_KEYS = {
    "tools": "tool calling",
    "tool_choice": "tool calling",
    "functions": "function calling",
    "function_call": "function calling",
    "audio": "audio output",
    "modalities": "non-text output",
    "prediction": "predicted outputs",
}

# Values of those keys that ask for nothing extra (tool_choice "none", modalities ["text"]).
_NO_OP_VALUES: tuple[object, ...] = (None, [], False, "none", ["text"])

# Where each native field came from, so validation errors name the field the user actually wrote.
FIELD_ORIGIN = {
    "id": "custom_id",
    "messages": "body.messages",
    "temperature": "body.temperature",
    "model": "body.model",
    "schema": "body.response_format.json_schema.schema",
}


def field_origin(obj: dict[str, Any]) -> dict[str, str]:
    """FIELD_ORIGIN for this line, naming whichever output cap its body used."""
    body = obj.get("body")
    if not isinstance(body, dict):
        body = {}
    cap = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return {**FIELD_ORIGIN, "max_output_tokens": f"body.{cap}"}


class BatchLineError(ValueError):
    """The line is an OpenAI Batch line we cannot run; the message says why and what is supported."""


def is_batch_line(obj: dict[str, Any]) -> bool:
    # A native line with a stray "body" key should hear "unknown field 'body'", not about Batch urls.
    return "custom_id" in obj or ("body" in obj and "url" in obj)


def batch_line_to_native(obj: dict[str, Any]) -> dict[str, Any]:
    """The native line dict for one OpenAI Batch line. Raises BatchLineError for lines we cannot run."""
    method, url = obj.get("method"), obj.get("url")
    if url != SUPPORTED_URL:
        raise BatchLineError(
            f"OpenAI Batch url {url!r} is not supported; llmbatch runs only {SUPPORTED_METHOD} {SUPPORTED_URL} lines"
        )
    if method != SUPPORTED_METHOD:
        raise BatchLineError(
            f"OpenAI Batch method {method!r} is not supported; llmbatch runs only {SUPPORTED_METHOD} {SUPPORTED_URL} lines"
        )
    unknown = sorted(set(obj) - {"custom_id", "method", "url", "body"})
    if unknown:
        raise BatchLineError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in an OpenAI Batch line; "
            "expected custom_id, method, url and body"
        )
    if "custom_id" not in obj or obj["custom_id"] is None:
        raise BatchLineError("OpenAI Batch line has no 'custom_id' (a unique string per line)")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise BatchLineError(f"'body' must be a JSON object (a chat completion request), got {json_kind(body)}")
    for key, feature in _REJECTED_BODY_KEYS.items():
        if body.get(key) not in _NO_OP_VALUES:
            raise BatchLineError(f"body.{key} is not supported ({feature}); remove it to run this line")
    if body.get("n") not in (None, 1):
        raise BatchLineError(f"body.n = {body['n']!r} is not supported; llmbatch returns one answer per line")
    if body.get("stream"):
        raise BatchLineError("body.stream = true is not supported; remove it to run this line")

    native: dict[str, Any] = {"id": obj["custom_id"], "task": "chat", "metadata": {"openai_batch": True}}
    if "messages" in body:
        native["messages"] = body["messages"]
    else:
        raise BatchLineError("body.messages is missing: a chat completion request needs a list of messages")
    cap = body.get("max_completion_tokens")
    if cap is None:
        cap = body.get("max_tokens")
    if cap is not None:
        native["max_output_tokens"] = cap
    for key in ("temperature", "model"):
        if body.get(key) is not None:
            native[key] = body[key]
    schema = _schema_from_response_format(body.get("response_format"))
    if schema is not None:
        native["task"] = "extract"
        native["schema"] = schema
    return native


def _schema_from_response_format(fmt: Any) -> dict[str, Any] | None:
    """The JSON Schema the body asks its answer to match, or None for plain text."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise BatchLineError(f"body.response_format must be an object, got {json_kind(fmt)}")
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        # Any JSON object will do: extract with the most permissive object schema validates exactly that.
        return {"type": "object"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BatchLineError('body.response_format has type "json_schema" but no json_schema.schema object')
        return schema
    raise BatchLineError(
        f'body.response_format type {kind!r} is not supported; use "text", "json_object" or "json_schema"'
    )


def json_kind(value: Any) -> str:
    """How a JSON value reads in an error message: "an array", "a string", ..."""
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )
